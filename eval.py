"""Perplexity of a checkpoint: python eval.py ckpt_path=... [data=...]"""

import hydra
from omegaconf import DictConfig

from lrnn_lightning.run import evaluate, user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@user_errors
def main(cfg: DictConfig):
    evaluate(cfg)


if __name__ == "__main__":
    main()
