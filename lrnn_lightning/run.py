"""What the entry points do: train, evaluate and sample. Everything is built from the config."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lrnn_lightning.atomic import write_json, write_text
from lrnn_lightning.callbacks import RunMetadata, TokensPerSecond
from lrnn_lightning.checkpoint import (AtomicCheckpointIO, check_same_vocab, checkpoint_vocab, load_language_model,
                                       read_checkpoint, resolve_ckpt_path)
from lrnn_lightning.errors import UserError, user_errors  # noqa: F401 - user_errors: the entry points' wrapper
from lrnn_lightning.generation import generate_words
from lrnn_lightning.loggers import finish_wandb
from lrnn_lightning.resume import stopped_by

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


def _configs(group: DictConfig | None) -> list[DictConfig]:
    return [c for c in (group or {}).values() if c is not None and "_target_" in c]


def _instantiate_group(group: DictConfig | None) -> list:
    return [instantiate(c) for c in _configs(group)]


def _instantiate_loggers(group: DictConfig | None, wandb_id: str | None, resume_step: int | None = None) -> list:
    """Loggers; ``wandb_id`` (recorded in the checkpoint a run resumes from) continues that W&B run;
    loggers that continue their files in the run directory learn the checkpoint's global step."""
    loggers = [instantiate(c, id=wandb_id, resume="allow") if wandb_id and c._target_.endswith("wandb_logger")
               else instantiate(c) for c in _configs(group)]
    if resume_step is not None:
        for lg in loggers:
            if hasattr(lg, "resume_from_step"):
                lg.resume_from_step(resume_step)
    return loggers


def _checkpoint_dir(cfg: DictConfig, out: Path) -> Path:
    dirpath = ((cfg.get("callbacks") or {}).get("model_checkpoint") or {}).get("dirpath")
    return Path(dirpath) if dirpath else out / "checkpoints"


def _container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def _data_name(data_cfg: DictConfig) -> str:
    corpus = data_cfg.get("corpus") or {}
    return str(corpus.get("name") or corpus.get("_target_", "?").rsplit(".", 1)[-1])


def _ddp_children_run_this_job_only() -> None:
    """Multirun + DDP: Lightning starts ranks > 0 as ``python train.py <sys.argv[1:]>
    hydra.run.dir=<hydra.run.dir>``. Inside a sweep job those arguments are the whole sweep (``-m``,
    ``a=1,2``, ``hparams_search=...``), so every child would launch the sweep again. Point the
    children at this job instead: its own resolved overrides, single-run mode, its output dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    sys.argv = [sys.argv[0], *hc.overrides.task, "hydra.mode=RUN"]
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, write ``metrics.json``; returns the metrics."""
    environ = dict(os.environ)
    try:
        return _train(cfg)
    finally:
        finish_wandb()
        _leave_distributed(environ)


def _leave_distributed(environ: dict[str, str]) -> None:
    """The next job of a sweep runs in this same process: it must not find this job's process
    group, nor the rank/port variables Lightning's DDP launcher exported."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)


MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(value) -> str:
    """``torch.set_float32_matmul_precision(value)`` (None: leave it); returns the setting in force."""
    if value is not None:
        if value not in MATMUL_PRECISIONS:
            raise UserError(f"float32_matmul_precision={value!r}: use one of {', '.join(MATMUL_PRECISIONS)} "
                            "(or null to leave torch's setting)")
        torch.set_float32_matmul_precision(value)
    return torch.get_float32_matmul_precision()


def _train(cfg: DictConfig) -> dict[str, Any]:
    set_matmul_precision(cfg.get("float32_matmul_precision"))
    L.seed_everything(cfg.seed, workers=True)
    out = output_dir(cfg)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    vocab = datamodule.vocab
    wandb_id, resume_step = None, None
    # ckpt_path=last: the newest checkpoint of this run dir, if any. Every DDP rank resolves the
    # same file: nothing is written there before all ranks have started.
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), out, _checkpoint_dir(cfg, out))
    if ckpt_path:
        resumed = read_checkpoint(ckpt_path)
        check_same_vocab(checkpoint_vocab(resumed), vocab, ckpt_path, _data_name(cfg.data))
        wandb_id = resumed[RunMetadata.KEY].get("wandb_id")
        resume_step = int(resumed.get("global_step", 0))
        del resumed  # Lightning loads it again to restore the training state

    model = instantiate(cfg.model, vocab_size=len(vocab))
    callbacks = _instantiate_group(cfg.get("callbacks"))
    callbacks.append(RunMetadata(_container(cfg.model), _container(cfg.data), vocab.words))
    # fast_dev_run: Lightning logs nothing, and no logger is started either (no W&B run for a smoke test)
    loggers = [] if cfg.trainer.get("fast_dev_run") else _instantiate_loggers(cfg.get("logger"), wandb_id, resume_step)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])

    counts = model.parameter_counts()
    run_info = {**counts, **datamodule.metrics, "data/vocab_size": len(vocab)}
    for lg in loggers:
        lg.log_hyperparams({"config": _container(cfg), **run_info})
        if resume_step is None:  # a resumed run logged them at its start (W&B, CSV continue that log)
            lg.log_metrics(run_info, step=0)
    log.info("parameters: total %d, embedding %d", counts["params/total"], counts["params/embedding"])

    _ddp_children_run_this_job_only()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        # SIGTERM, Ctrl-C or SLURM's requeue signal: the fit ended at a step boundary with a checkpoint
        reasons = stopped_by(trainer)
        cause = "Ctrl-C" if "sigint" in reasons else "the SLURM requeue signal" if "requeue" in reasons else "SIGTERM"
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or _checkpoint_dir(cfg, out) / "last.ckpt"
        if trainer.is_global_zero:
            log.warning("stopped by %s after global step %d; checkpoint %s. To resume exactly: the same command "
                        "with ckpt_path=last in this run directory (hydra.run.dir=%s), or ckpt_path=%s",
                        cause, trainer.global_step, last, out, last)
        if "sigint" in reasons:
            raise SystemExit(1) from None  # as Lightning ends a run on Ctrl-C
        raise

    metrics: dict[str, Any] = {**run_info, **model.epoch_metrics}
    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
    if best and ckpt_cb.best_model_score is not None:
        # report the model we test: the best checkpoint's validation score
        metrics["val/ppl"] = float(ckpt_cb.best_model_score)
        metrics["val/loss"] = math.log(metrics["val/ppl"])
        metrics["ckpt/best"] = str(best)
    for c in callbacks:  # e.g. the last reallocation round's realloc/* metrics
        metrics.update(getattr(c, "metrics", None) or {})
    tps = next((c.epoch_tokens_per_sec for c in callbacks if isinstance(c, TokensPerSecond)), None)
    if tps:
        metrics["train/tokens_per_sec"] = tps
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: v for k, v in model.epoch_metrics.items() if k.startswith("test/")})
    metrics["trainer/epochs"] = trainer.current_epoch

    if trainer.is_global_zero:
        write_json(out / "metrics.json", metrics)
        print(summary(metrics), flush=True)
        for lg in loggers:
            if isinstance(lg, WandbLogger):
                lg.experiment.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return metrics


def summary(metrics: dict[str, Any]) -> str:
    parts = [f"{k} {metrics[k]:.2f}" for k in ("val/ppl", "test/ppl") if k in metrics]
    opt = metrics.get("data/optimal_ppl")
    if opt:
        parts.append(f"data/optimal_ppl {opt:.2f}")
        if "test/ppl" in metrics:
            parts.append(f"(test is {metrics['test/ppl'] / opt:.2f}x optimal)")
    return "result: " + "  ".join(parts)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Perplexity of a checkpoint on the valid and test splits of its data (or of ``data=...``)."""
    model, vocab, meta = load_language_model(cfg.ckpt_path)
    data_cfg = cfg.get("data") or OmegaConf.create(meta["data_config"])
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    check_same_vocab(vocab, datamodule.vocab, cfg.ckpt_path, _data_name(data_cfg))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=_instantiate_group(cfg.get("callbacks")), logger=False)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {**datamodule.metrics, **{k: v for k, v in model.epoch_metrics.items() if k.split("/")[0] in ("val", "test")}}
    metrics["ckpt/path"] = str(cfg.ckpt_path)
    if trainer.is_global_zero:
        write_json(output_dir(cfg) / "metrics.json", metrics)
        print(summary(metrics), flush=True)
    return metrics


def generate(cfg: DictConfig) -> str:
    """Sample ``num_words`` words after ``prompt``; ``<eos>`` becomes a line break."""
    if cfg.temperature <= 0:
        raise UserError(f"temperature must be positive (got {cfg.temperature}); use e.g. temperature=0.7")
    model, vocab, _ = load_language_model(cfg.ckpt_path)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.get("device", "auto") != "cpu" else "cpu")
    model.to(device)
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    prompt = str(cfg.prompt or "").split()
    unknown = [w for w in prompt if w not in vocab]
    if unknown:
        log.warning("prompt words not in the vocabulary, read as <unk>: %s", " ".join(unknown[:10]))
    words = generate_words(model, vocab, prompt, int(cfg.num_words), float(cfg.temperature), gen)
    text = " ".join(prompt + words).replace(" <eos> ", "\n").replace("<eos>", "\n").strip()
    write_text(output_dir(cfg) / "generated.txt", text + "\n")
    print(text, flush=True)
    return text
