"""A Hydra app without a model for the sweeper's tests: seconds per sweep, no torch.

Its value is (x - 0.3)^2 + k; ``fail_at_k`` makes the jobs with that k raise.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg: DictConfig) -> float:
    if cfg.fail_at_k is not None and cfg.k == cfg.fail_at_k:
        raise RuntimeError(f"job asked to fail at k={cfg.k}")
    return (cfg.x - 0.3) ** 2 + cfg.k


if __name__ == "__main__":
    main()
