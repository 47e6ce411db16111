"""Train a language model: python train.py [model=...] [data=...] [hardware=...] [-m sweeps]

(after pip install: lrnn-train from any folder, with the configs installed in the package)"""

import hydra
from omegaconf import DictConfig

from lrnn_lightning.cli import train_task
from lrnn_lightning.errors import user_errors


# conf/ next to this file: the configs you edit in the checkout
@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@user_errors
def main(cfg: DictConfig):
    return train_task(cfg)


if __name__ == "__main__":
    main()
