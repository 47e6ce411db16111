"""Train a language model: python train.py [model=...] [data=...] [hardware=...] [-m sweeps]"""

import hydra
from omegaconf import DictConfig

from lrnn_lightning.run import train, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@user_errors
def main(cfg: DictConfig):
    metrics = train(cfg)
    # the value a sweeper (Optuna, ...) minimizes
    return metrics.get(cfg.get("optimized_metric") or "val/ppl")


if __name__ == "__main__":
    main()
