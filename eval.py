"""Perplexity of a checkpoint: python eval.py ckpt_path=... [data=...]

(after pip install: lrnn-eval from any folder, with the configs installed in the package)"""

import hydra
from omegaconf import DictConfig

from lrnn_lightning.cli import eval_task
from lrnn_lightning.errors import user_errors


# conf/ next to this file: the configs you edit in the checkout
@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@user_errors
def main(cfg: DictConfig):
    return eval_task(cfg)


if __name__ == "__main__":
    main()
