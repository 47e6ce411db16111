"""The entry points as a user runs them: real subprocesses of train.py, eval.py and generate.py."""

import csv
import json
import os
import re
from pathlib import Path

import pytest

from conftest import run_script

pytestmark = pytest.mark.slow
TINY = ["experiment=tiny", "logger=csv"]


def only_run_dir(root: Path) -> Path:
    runs = sorted((root / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    proc = run_script("train.py", *TINY, f"paths.root_dir={root}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(root)
    return root, run, json.loads((run / "metrics.json").read_text()), proc.stdout


def test_train_writes_metrics_json_checkpoints_and_hydra_dir(trained):
    root, run, metrics, stdout = trained
    for key in ("train/loss", "val/loss", "val/ppl", "test/loss", "test/ppl", "train/tokens_per_sec",
                "params/total", "params/embedding", "data/optimal_ppl"):
        assert key in metrics, key
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert metrics["test/ppl"] < metrics["data/vocab_size"]  # it learned something
    assert metrics["test/ppl"] > metrics["data/optimal_ppl"] * 0.9
    assert "data/optimal_ppl" in stdout and "test/ppl" in stdout
    # plain progress lines in a pipe, not a redrawn bar
    assert "epoch 0 validation" in stdout and "\r" not in stdout
    assert (run / "csv" / "metrics.csv").is_file()
    # every validation line shows its own val/ppl over the optimum, as logged for that epoch
    shown = {int(m[1]): dict(kv.split("=") for kv in m[2].split())
             for m in re.finditer(r"^epoch (\d+) validation  (.*)$", stdout, re.M)}
    logged = {int(r["epoch"]): float(r["val/ppl_over_optimal"])
              for r in csv.DictReader(open(run / "csv" / "metrics.csv")) if r["val/ppl_over_optimal"]}
    assert len(shown) >= 2 and set(shown) == set(logged)
    for epoch, values in shown.items():
        assert float(values["val/ppl_over_optimal"]) == pytest.approx(logged[epoch], rel=1e-3)
        assert float(values["val/ppl_over_optimal"]) == pytest.approx(
            float(values["val/ppl"]) / metrics["data/optimal_ppl"], rel=1e-3)


def test_eval_reproduces_the_reported_test_perplexity(trained):
    root, run, metrics, _ = trained
    proc = run_script("eval.py", f"ckpt_path={metrics['ckpt/best']}", f"paths.root_dir={root}", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = sorted((root / "logs" / "eval" / "runs").iterdir())
    got = json.loads((evals[-1] / "metrics.json").read_text())
    assert got["test/ppl"] == pytest.approx(metrics["test/ppl"], rel=1e-6)
    assert got["val/ppl"] == pytest.approx(metrics["val/ppl"], rel=1e-6)


def test_generate_yields_words_of_the_vocabulary(trained):
    root, run, metrics, _ = trained
    proc = run_script("generate.py", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"paths.root_dir={root}",
                      "num_words=40", "temperature=0.8", "prompt='ba be'", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = sorted((root / "logs" / "generate" / "runs").iterdir())[-1].joinpath("generated.txt").read_text()
    words = text.split()
    vocab = set((root / ".cache").glob("tokens/*/vocab.txt").__next__().read_text().split())
    assert words[:2] == ["ba", "be"] and len(words) >= 30  # <eos> became line breaks
    assert set(words) <= vocab and "<eos>" not in words


def test_multirun_with_two_jobs(tmp_path):
    proc = run_script("train.py", "-m", *TINY, "logger=none", "trainer.max_epochs=1", "model.hidden_size=8,12",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = next((tmp_path / "logs" / "train" / "multiruns").iterdir())
    results = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in (0, 1)]
    assert results[0]["params/total"] < results[1]["params/total"]  # the two jobs ran their own config


# ---- bad input: one clear message, non-zero exit, no stack trace ---------------------------------
def assert_clean_failure(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr[-2000:])


def test_missing_corpus_folder(tmp_path):
    proc = run_script("train.py", "data=text_dir", f"data.root={tmp_path}/nowhere", "logger=none",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert_clean_failure(proc, f"{tmp_path}/nowhere", "train.txt, valid.txt, test.txt", "data.root=")


def test_empty_training_file(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("")
    (corpus / "valid.txt").write_text("a b\n")
    (corpus / "test.txt").write_text("a b\n")
    proc = run_script("train.py", "data=text_dir", f"data.root={corpus}", "logger=none",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert_clean_failure(proc, "train file", "is empty")


def test_corpus_file_that_is_not_utf8(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_bytes(b"a b\n" * 50 + b"un caf\xe9 noir\n")  # Latin-1
    (corpus / "valid.txt").write_text("a b\n")
    (corpus / "test.txt").write_text("a b\n")
    proc = run_script("train.py", "data=text_dir", f"data.root={corpus}", "logger=none",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert_clean_failure(proc, f"{corpus / 'train.txt'} is not UTF-8 text at byte offset 206 (line 51: byte 0xe9)",
                         "iconv")
    assert proc.stderr.count("error:") == 1


def test_checkpoint_from_another_vocabulary(trained, tmp_path):
    root, run, metrics, _ = trained
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (corpus / name).write_text("other words entirely\n" * 50)
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = run_script("eval.py", f"ckpt_path={ckpt}", "data=text_dir", f"data.root={corpus}",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert_clean_failure(proc, "another vocabulary", "data the model was trained on")
    proc = run_script("train.py", "data=text_dir", f"data.root={corpus}", f"ckpt_path={ckpt}", "logger=none",
                      f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert_clean_failure(proc, "another vocabulary")


def test_unknown_config_option(tmp_path):
    proc = run_script("train.py", "model=no_such_model", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0
    assert "no_such_model" in proc.stderr and "Traceback" not in proc.stderr


def test_wandb_without_credentials_goes_offline_and_never_prompts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_SILENT="true")
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "experiment=tiny", "logger=wandb", "trainer.max_epochs=1",
         f"paths.root_dir={tmp_path}"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "wandb sync" in out
    run = only_run_dir(tmp_path)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_ddp_on_two_cpu_processes_counts_every_token_once(tmp_path):
    """hardware=ddp_cpu: each rank trains on its half; valid/test perplexity equals one process's."""
    proc = run_script("train.py", *TINY, "hardware=ddp_cpu", "trainer.max_epochs=1", f"paths.root_dir={tmp_path}",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    ckpt = metrics["ckpt/best"]
    import torch

    saved = torch.load(ckpt, weights_only=True)
    data = saved["lrnn"]["data_config"]
    meta = json.loads(next((tmp_path / ".cache" / "tokens").glob("*/meta.json")).read_text())
    train_tokens = meta["sizes"]["train"]
    per_rank_rows = train_tokens // 2 // data["batch_size"]
    assert saved["global_step"] == -(-per_rank_rows // data["bptt"])  # each rank read half the data
    proc = run_script("eval.py", f"ckpt_path={ckpt}", f"paths.root_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((sorted((tmp_path / "logs" / "eval" / "runs").iterdir())[-1] / "metrics.json").read_text())
    assert got["val/ppl"] == pytest.approx(metrics["val/ppl"], rel=1e-6)
    assert got["test/ppl"] == pytest.approx(metrics["test/ppl"], rel=1e-6)  # float32 batch shapes differ
