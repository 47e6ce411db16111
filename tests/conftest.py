import os

# before any kernel module is imported: on a CUDA machine the Triton kernels run compiled (the cuda
# tests), elsewhere in Triton's interpreter on CPU tensors; TRITON_INTERPRET=0/1 forces either
if "TRITON_INTERPRET" not in os.environ:
    import torch

    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

import sys
from pathlib import Path

import pytest

INTERPRETED = os.environ["TRITON_INTERPRET"] == "1"
# tests that run the kernels on CPU tensors through Triton's interpreter
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs the Triton kernels interpreted on CPU; "
                                 "TRITON_INTERPRET=0 here (the cuda tests run them compiled)")
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import lrnn_lightning  # noqa: F401 - registers the config resolvers (${gpu_precision:})

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"


def compose_cfg(config_name: str, overrides: list[str], out_dir: Path, root: Path):
    """A composed config with Hydra's runtime set, as inside ``@hydra.main``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            config_name,
            overrides=[f"paths.root_dir={root}", f"hydra.run.dir={out_dir}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(overrides, config="train", run="run")``: config with outputs and caches under tmp_path."""

    def make(overrides=(), config="train", run="run"):
        return compose_cfg(config, list(overrides), tmp_path / run, tmp_path)

    yield make
    GlobalHydra.instance().clear()


def run_script(script: str, *args: str, cwd: Path, env_extra: dict | None = None, timeout: int = 300):
    """Run ``python <script> args`` as a user would; returns the CompletedProcess."""
    import subprocess

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


TINY = ["experiment=tiny", "logger=none"]
