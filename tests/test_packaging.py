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
    # the installed copy, not the checkout, is imported
    env = _env(PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import lrnn_lightning.cli as c; print(c.__file__); print(c.config_dir())"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    module, conf = where.stdout.split()
    assert Path(module).is_relative_to(site) and Path(conf) == site / "lrnn_lightning" / "conf", where.stdout

    script = site / "bin" / "lrnn-train"
    proc = subprocess.run([sys.executable, str(script), *TINY_FDR], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (work / "logs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test/ppl" in metrics and "result: val/ppl" in proc.stdout
    assert (work / ".cache" / "synthetic").is_dir()  # data and caches under the current folder too
    assert not (site / "logs").exists() and not (site / "lrnn_lightning" / "logs").exists()


def _installed_script(name: str) -> Path:
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.fail(f"{name} is not installed next to {sys.executable}: run pip install -e . again "
                    f"(the console scripts came with this version)")
    return path


def test_editable_console_script_prints_the_config_from_another_folder(tmp_path):
    """After pip install -e . the scripts read the checkout's conf/ (the one users edit)."""
    script = _installed_script("lrnn-train")
    proc = subprocess.run([str(script), "--cfg", "job", "model=lstm", "trainer.max_steps=7"], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lrnn_lightning.modules.SoftmaxHead" in proc.stdout and "max_steps: 7" in proc.stdout
    proc = subprocess.run([str(script), "--info", "searchpath"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and f"file://{CONF}" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow
def test_console_scripts_train_evaluate_and_generate_from_another_folder(tmp_path):
    """The three scripts as a user runs them, in a folder that is not the checkout; every output
    (runs, caches) lands under that folder."""
    proc = subprocess.run([str(_installed_script("lrnn-train")), "experiment=tiny", "logger=none",
                           "trainer.max_epochs=1", "test=false"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    proc = subprocess.run([str(_installed_script("lrnn-eval")), f"ckpt_path={ckpt}"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(next((tmp_path / "logs" / "eval" / "runs").iterdir()).joinpath("metrics.json").read_text())["test/ppl"] > 1
    proc = subprocess.run([str(_installed_script("lrnn-generate")), f"ckpt_path={ckpt}", "num_words=5", "prompt=ba"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert next((tmp_path / "logs" / "generate" / "runs").iterdir()).joinpath("generated.txt").read_text().startswith("ba")
    assert not (ROOT / "logs").exists() or not any((ROOT / "logs").rglob(run.name))  # nothing in the checkout
