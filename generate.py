"""Sample text: python generate.py ckpt_path=... prompt="..." num_words=50 temperature=1.0"""

import hydra
from omegaconf import DictConfig

from lrnn_lightning.run import generate, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
@user_errors
def main(cfg: DictConfig):
    generate(cfg)


if __name__ == "__main__":
    main()
