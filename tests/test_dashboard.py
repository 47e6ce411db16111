"""W&B and run-directory dashboards: credentials, checkpoint artifacts offline, pictures, samples."""

import csv
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lrnn_lightning.loggers import wandb_credentials, wandb_mode

WANDB_VARS = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "WANDB_DIR",
              "WANDB_MODE", "NETRC")
KEY = "x" * 40  # a fake API key: nothing here logs in


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh HOME and working directory without any W&B variable."""
    for var in WANDB_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def netrc_file(path: Path, host: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"machine {host}\n  login user\n  password {KEY}\n")
    path.chmod(0o600)
    return path


def settings_file(path: Path, **values: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[default]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))


def test_no_credentials_means_offline(home):
    netrc_file(home / ".netrc", "github.com")  # another host's entry is no W&B login
    assert wandb_credentials() is None and wandb_mode() == "offline"


def test_netrc_entry_in_home_is_found(home):
    netrc_file(home / ".netrc", "api.wandb.ai")
    assert wandb_credentials() == str(home / ".netrc")
    assert wandb_mode() == "online"
    assert wandb_mode(offline=True) == "offline"


def test_netrc_variable_with_a_tilde_and_windows_name(home, monkeypatch):
    netrc_file(home / "_netrc", "api.wandb.ai")  # the name wandb also reads
    assert wandb_credentials() == str(home / "_netrc")
    netrc_file(home / "secrets" / "wandb.netrc", "api.wandb.ai")
    (home / "_netrc").unlink()
    monkeypatch.setenv("NETRC", "~/secrets/wandb.netrc")
    assert wandb_credentials() == str(home / "secrets" / "wandb.netrc")


def test_self_hosted_server_from_the_settings_file(home, monkeypatch):
    """``wandb login --host`` records base_url in wandb's settings: the netrc entry is for that host:port."""
    settings_file(home / ".config" / "wandb" / "settings", base_url="https://wandb.example.com:8443")
    netrc_file(home / ".netrc", "api.wandb.ai")
    assert wandb_credentials() is None  # an api.wandb.ai key does not log in to another server
    netrc_file(home / ".netrc", "wandb.example.com:8443")
    assert wandb_credentials() == str(home / ".netrc")
    # a workspace settings file (./wandb/settings) wins over the global one; WANDB_BASE_URL over both
    settings_file(home / "wandb" / "settings", base_url="https://other.example.com")
    assert wandb_credentials() is None
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com:8443")
    assert wandb_credentials() == str(home / ".netrc")


def test_api_key_in_settings_or_environment_and_wandb_offline_in_settings(home, monkeypatch):
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "cfg"))
    settings_file(home / "cfg" / "settings", api_key=KEY)
    assert wandb_credentials() == "wandb settings file" and wandb_mode() == "online"
    settings_file(home / "cfg" / "settings", api_key=KEY, mode="offline")  # `wandb offline`
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode() == "online"
    (home / "cfg" / "settings").unlink()
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert wandb_credentials() == "WANDB_API_KEY" and wandb_mode() == "online"


# ---- pictures ------------------------------------------------------------------------------------
def test_word_classes_and_table_picture():
    from lrnn_lightning.callbacks.dashboard import synthetic_word_classes, table_picture
    from lrnn_lightning.data.synthetic import ClassMarkovLanguage, SyntheticCorpus

    corpus = SyntheticCorpus(num_words=30, num_classes=3, successors=2)
    lang = ClassMarkovLanguage(corpus.spec)
    words = ["<eos>", lang.words[5], lang.words[7], "<unk>"]
    classes = synthetic_word_classes(corpus, words)
    assert classes.tolist() == [0, lang.word_class[5], lang.word_class[7], -1]
    assert synthetic_word_classes(object(), words) is None
    # a 2 x 3 table: words 0..3 in cells 0, 2, 3, 4; cells 1 and 5 empty
    word_at = np.array([0, -1, 1, 2, 3, -1])
    rgb, meaning = table_picture(word_at, 2, 3, np.array([0, 2, 2, -1]))
    assert rgb.shape == (2, 3, 3) and "true class" in meaning
    assert (rgb[0, 1] == 1).all() and (rgb[1, 2] == 1).all()  # empty: white
    assert (rgb[0, 0] == 0).all()  # <eos>: black
    assert (rgb[0, 2] == rgb[1, 0]).all() and not (rgb[0, 2] == 1).all()  # same class, same colour
    rgb, meaning = table_picture(word_at, 2, 3, None)  # real text: frequency bands
    assert "frequency" in meaning and (rgb[0, 1] == 1).all() and not (rgb[0, 0] == rgb[1, 1]).all()


def test_sru_layers_record_the_backend_that_ran():
    from lrnn_lightning.modules.sru import SRU

    sru = SRU(8, 8, num_layers=2)
    assert [layer.last_backend for layer in sru.layers] == [None, None]
    sru(torch.randn(3, 2, 8))
    assert [layer.last_backend for layer in sru.layers] == ["torch", "torch"]  # auto on CPU


# ---- one offline run with every logger -----------------------------------------------------------
def wandb_run_dir(run: Path) -> Path:
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def wandb_records(path: Path) -> list:
    """The records of a run's ``.wandb`` transaction log: a 7-byte header, then 32 KiB blocks of chunks
    (crc32 u32, length u16, type u8: 1 whole, 2 first, 3 middle, 4 last piece of a record), each
    record a protobuf ``Record``. A record may straddle two blocks, so raw bytes are no place to search."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, piece, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        piece = chunk if kind in (1, 2) else piece + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            records.append(record)
    return records


def logged_tables(wb: Path, group: str, name: str) -> list[Path]:
    """The files of the W&B table ``<group>/<name>``, in the order logged (``<name>_<seq>_<hash>``)."""
    found = (wb / "files" / "media" / "table" / group).glob(f"{name}_*.table.json")
    return sorted(found, key=lambda p: int(p.name.removeprefix(name + "_").split("_")[0]))


def test_offline_wandb_run_logs_checkpoints_pictures_samples_and_ratio(make_cfg, tmp_path, monkeypatch):
    """LightSRU on the tiny language, CSV + TensorBoard + W&B offline with log_model=true."""
    from lrnn_lightning.run import train

    monkeypatch.setenv("HOME", str(tmp_path))  # wandb stages artifact files under ~/.local/share/wandb
    cfg = make_cfg(["experiment=tiny", "model=lightsru", "logger=many", "logger.wandb.log_model=true",
                    "trainer.limit_train_batches=12", "trainer.limit_val_batches=4", "test=false",
                    "callbacks.reallocation.skip_last_epoch=false", "callbacks.dashboard.sample_words=30",
                    "callbacks.dashboard.pictures=true"])
    metrics = train(cfg)
    import wandb

    # train() finished the run; the W&B service may still hold the end of its transaction log in a
    # buffer (seen on a loaded 2-core CI machine). Shutting the service down closes the file.
    wandb.teardown()
    run = tmp_path / "run"
    wb = wandb_run_dir(run)
    records = wandb_records(next(wb.glob("run-*.wandb")))
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds[-1] == "exit", f"the transaction log is incomplete: {len(kinds)} records, last {kinds[-5:]}"

    # checkpoints: model artifacts of this run (best and last), their files staged for `wandb sync`
    run_id = wb.name.rsplit("-", 1)[1]
    models = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
    assert {a.name for a in models} == {f"model-{run_id}"} and len(models) == 2, kinds
    best = next(a for a in models if "best" in a.aliases)
    assert [e.path for e in best.manifest.contents] == ["model.ckpt"]
    assert Path(best.manifest.contents[0].local_path).read_bytes() == Path(metrics["ckpt/best"]).read_bytes()

    # the backend that ran, in metrics.json, the CSV hyperparameters and the W&B record
    assert metrics["model/sru_backend"] == "torch"
    assert json.loads((run / "metrics.json").read_text())["model/sru_backend"] == "torch"
    assert "model/sru_backend: torch" in (run / "csv" / "hparams.yaml").read_text()
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["model/sru_backend"] == "torch" and config["model/sru_backend_per_layer"] == ["torch"]

    # pictures in the run dir, and the table's picture logged to W&B
    from lrnn_lightning.callbacks.dashboard import class_colours

    for name in ("table_epoch_000.png", "table_epoch_001.png"):
        # a 6.4 x (6.4 + 0.6) inch figure at 100 dpi, showing the colour of every class of the language
        pixels = png_pixels(run / "plots" / name)
        assert pixels.shape == (700, 640, 3), name
        for colour in class_colours(10)[1:11]:
            assert has_colour(pixels, colour), (name, colour)
    history_png = png_pixels(run / "plots" / "realloc_history.png")
    assert history_png.shape == (400, 1000, 3)
    # cost before and after each round (drawn over it when nothing moved) and the lower bound: lines
    # across the axes, not only the legend's samples (about 100 pixels each)
    assert has_colour(history_png, matplotlib_colour("C0"))
    assert colour_pixels(history_png, matplotlib_colour("C1")) > 250
    assert colour_pixels(history_png, matplotlib_colour("C2")) > 250
    assert len(list((wb / "files" / "media" / "images" / "table").glob("image_*.png"))) == 2
    history = logged_tables(wb, "realloc", "history")
    assert len(json.loads(history[-1].read_text())["data"]) == 2  # both rounds, accumulated

    # val/ppl over the optimum, and the optimum itself, every epoch
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    val_ppl = {r["epoch"]: float(r["val/ppl"]) for r in rows if r["val/ppl"]}
    ratio = {r["epoch"]: float(r["val/ppl_over_optimal"]) for r in rows if r["val/ppl_over_optimal"]}
    optimal = metrics["data/optimal_ppl"]
    assert set(ratio) == {"0", "1"}
    for epoch, value in ratio.items():
        assert value == pytest.approx(val_ppl[epoch] / optimal, rel=1e-5)
    assert sum(1 for r in rows if r["data/optimal_ppl"] and r["epoch"]) == 2

    # a generated sample per epoch: text files, and the W&B table of all epochs so far
    vocab = set(metrics_vocab(tmp_path))
    for epoch in (0, 1):
        words = (run / "samples" / f"epoch_{epoch:03d}.txt").read_text().split()
        assert words and set(words) <= vocab
    samples = logged_tables(wb, "samples", "text")
    assert [row[0] for row in json.loads(samples[-1].read_text())["data"]] == [0, 1]


def png_pixels(path: Path) -> np.ndarray:
    """The decoded RGB pixels ``[H, W, 3]`` (0..1) of a PNG file."""
    import matplotlib.image

    return matplotlib.image.imread(path)[..., :3]


def colour_pixels(pixels: np.ndarray, rgb, tol: float = 1.5 / 255) -> int:
    """How many pixels have the colour ``rgb`` (to 8-bit rounding)."""
    return int((np.abs(pixels - np.asarray(rgb, dtype=pixels.dtype)).max(-1) <= tol).sum())


def has_colour(pixels: np.ndarray, rgb) -> bool:
    return colour_pixels(pixels, rgb) > 0


def matplotlib_colour(name: str):
    from matplotlib.colors import to_rgb

    return to_rgb(name)


def metrics_vocab(root: Path) -> list[str]:
    return next((root / ".cache").glob("tokens/*/vocab.txt")).read_text().split()


def test_without_matplotlib_the_run_goes_on_without_pictures(make_cfg, tmp_path, monkeypatch, caplog):
    from lrnn_lightning.run import train

    for name in ("matplotlib", "matplotlib.figure", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    cfg = make_cfg(["experiment=tiny", "logger=csv", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
                    "trainer.limit_val_batches=1", "test=false", "callbacks.reallocation.skip_last_epoch=false",
                    "callbacks.dashboard.pictures=true", "callbacks.dashboard.sample_words=10"])
    with caplog.at_level(logging.INFO, logger="lrnn_lightning.callbacks.dashboard"):
        train(cfg)
    run = tmp_path / "run"
    assert not list(run.glob("plots/*.png"))
    said = [r for r in caplog.records if "matplotlib is not installed" in r.getMessage()]
    assert len(said) == 1
    assert (run / "samples" / "epoch_000.txt").is_file()
    assert not math.isnan(float(next(r for r in csv.DictReader(open(run / "csv" / "metrics.csv"))
                                     if r.get("val/ppl_over_optimal"))["val/ppl_over_optimal"]))


@pytest.mark.parametrize("script,names", [
    ("default_run", ["default_run"]),
    ("lightsru_speed", ["lightsru_speed"]),
    ("lightrnn_quality", [f"lightrnn_quality_{w}" for w in ("synthetic", "ptb", "lightsru_synthetic", "lightsru_ptb")]),
])
def test_benchmark_plots_draw_from_their_committed_json(script, names, tmp_path, monkeypatch):
    import importlib

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module(script)
    for name in names:
        fig = module.plot(plt, json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text()))
        width, height = fig.get_size_inches() * fig.dpi
        fig.savefig(tmp_path / f"{name}.png")
        plt.close(fig)
        pixels = png_pixels(tmp_path / f"{name}.png")
        assert pixels.shape == (round(height), round(width), 3), name
        # something was drawn in the data colours (bars, lines), not only axes and text
        # the data were drawn in matplotlib's colour cycle (bars, lines): more of it than legend
        # samples alone (0.15% of the pixels in the quality plots when their bars are empty)
        data = sum(colour_pixels(pixels, matplotlib_colour(f"C{i}")) for i in range(10))
        assert data > 0.003 * pixels[..., 0].size, name
