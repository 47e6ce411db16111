"""Sample text: python generate.py ckpt_path=... prompt="..." num_words=50 temperature=1.0

(after pip install: lrnn-generate from any folder, with the configs installed in the package)"""

import hydra
from omegaconf import DictConfig

from lrnn_lightning.cli import generate_task
from lrnn_lightning.errors import user_errors


# conf/ next to this file: the configs you edit in the checkout
@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
@user_errors
def main(cfg: DictConfig):
    return generate_task(cfg)


if __name__ == "__main__":
    main()
