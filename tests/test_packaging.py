"""pip install . : the wheel carries the configs and the console scripts lrnn-train, lrnn-eval and
lrnn-generate, which run from any folder and write under it (never into the installation)."""

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, ROOT

SCRIPTS = {"lrnn-train": "lrnn_lightning.cli:train_main", "lrnn-eval": "lrnn_lightning.cli:eval_main",
           "lrnn-generate": "lrnn_lightning.cli:generate_main"}
SOURCES = ["pyproject.toml", "setup.py", "README.md", "conf", "lrnn_lightning", "triton_kernels", "hydra_plugins"]
TINY_FDR = ["experiment=tiny", "logger=none", "trainer.fast_dev_run=true"]


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built offline from a copy of the project's files (the checkout stays clean)."""
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools installed")
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(
            ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (whl,) = out.glob("lrnn_lightning-*.whl")
    return whl


def test_wheel_holds_every_config_module_and_the_console_scripts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"lrnn_lightning/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}
    assert len(configs) > 40 and configs <= names, sorted(configs - names)
    modules = {p.relative_to(ROOT).as_posix() for d in ("lrnn_lightning", "triton_kernels", "hydra_plugins")
               for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)
    assert not any(n.startswith(("conf/", "tests/", "benchmarks/")) or "__pycache__" in n for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    assert dict(parser["console_scripts"]) == SCRIPTS


@pytest.mark.slow
def test_installed_wheel_trains_from_another_folder(wheel, tmp_path):
    """A non-editable install (the wheel's files alone, no checkout on the path): lrnn-train reads the
    packaged configs and writes its run under the folder it is started in."""
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    # PYTHONPATH: the installed copy is imported before the checkout's editable install
    proc = subprocess.run([sys.executable, str(site / "bin" / "lrnn-train"), *TINY_FDR], cwd=work,
                          env=_env(PYTHONPATH=str(site)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (work / "logs" / "train" / "runs").iterdir()
    assert "test/ppl" in json.loads((run / "metrics.json").read_text()) and "result: val/ppl" in proc.stdout
    sources = OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.runtime.config_sources
    assert any(s.provider == "main" and s.path == str(site / "lrnn_lightning" / "conf") for s in sources), sources
    assert (work / ".cache" / "synthetic").is_dir()  # data and caches under the current folder too
    assert not (site / "logs").exists() and not (site / "lrnn_lightning" / "logs").exists()


def _installed_script(name: str) -> Path:
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.fail(f"{name} is not installed next to {sys.executable}: run pip install -e . again "
                    f"(the console scripts came with this version)")
    return path


@pytest.mark.parametrize("name,args,expect", [
    ("lrnn-train", ["model=lstm", "trainer.max_steps=7"], ["lrnn_lightning.modules.SoftmaxHead", "max_steps: 7"]),
    ("lrnn-eval", ["ckpt_path=/some/last.ckpt"], ["ckpt_path: /some/last.ckpt", "task_name: eval"]),
    ("lrnn-generate", ["ckpt_path=/some/last.ckpt", "num_words=3"], ["num_words: 3", "task_name: generate"]),
])
def test_editable_console_scripts_compose_from_another_folder(tmp_path, name, args, expect):
    """After pip install -e . the scripts read the checkout's conf/ (the one users edit)."""
    proc = subprocess.run([str(_installed_script(name)), "--cfg", "job", *args], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in expect:
        assert text in proc.stdout, (text, proc.stdout[-3000:])
    if name == "lrnn-train":
        proc = subprocess.run([str(_installed_script(name)), "--info", "searchpath"], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and f"file://{CONF}" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow
def test_editable_lrnn_train_runs_from_another_folder(tmp_path):
    """trainer.fast_dev_run=true end to end through the console script; everything it writes (run
    dir, caches) lands under the folder it was started in, nothing in the checkout."""
    before = set((ROOT / "logs").rglob("*")) if (ROOT / "logs").exists() else set()
    proc = subprocess.run([str(_installed_script("lrnn-train")), *TINY_FDR], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainer/epochs"] == 1 and "test/ppl" in metrics
    assert not (run / "checkpoints").exists()  # fast_dev_run: no checkpoint
    assert (tmp_path / ".cache" / "synthetic").is_dir()
    assert (set((ROOT / "logs").rglob("*")) if (ROOT / "logs").exists() else set()) == before
