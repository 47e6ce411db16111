"""The three programs: ``train.py``/``eval.py``/``generate.py`` at the repository's top, and the
console scripts ``lrnn-train``/``lrnn-eval``/``lrnn-generate`` that ``pip install`` puts on the PATH.

The scripts read the configs shipped in the package (``lrnn_lightning/conf`` in a wheel: the build
copies the repository's ``conf/`` there), or the repository's ``conf/`` itself in a checkout or an
editable install. Like ``python train.py``, they write runs, caches and data under the current
folder (``paths.root_dir``, ``LRNN_ROOT``), never inside the installation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from lrnn_lightning.errors import user_errors

# torch and Lightning are imported when a task runs, so that --help and --cfg answer at once


def config_dir() -> Path:
    """The folder holding ``train.yaml``, ``eval.yaml``, ``generate.yaml`` and the config groups."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):  # installed wheel; checkout / editable
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"no configs in {package / 'conf'}: reinstall lrnn-lightning (pip install .)")


def train_task(cfg: DictConfig) -> Any:
    """Train; returns the value a sweeper (Optuna, ...) minimizes: ``optimized_metric`` (val/ppl)."""
    from lrnn_lightning.run import train

    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric") or "val/ppl")


def eval_task(cfg: DictConfig) -> None:
    from lrnn_lightning.run import evaluate

    evaluate(cfg)


def generate_task(cfg: DictConfig) -> None:
    from lrnn_lightning.run import generate

    generate(cfg)


def _console_script(task: Callable[[DictConfig], Any], config_name: str) -> Callable[[], None]:
    def main() -> None:
        # an absolute config_path: Hydra reads it as is, whatever the current folder
        hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(user_errors(task))()
        # nothing returned: the console script hands the return value to sys.exit

    main.__doc__ = f"lrnn-{config_name}: the {config_name} program with the package's configs."
    return main


train_main = _console_script(train_task, "train")
eval_main = _console_script(eval_task, "eval")
generate_main = _console_script(generate_task, "generate")
