"""Checkpoints: atomic writes, and loading a model with its vocabulary from one file."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.fabric.plugins import TorchCheckpointIO
from omegaconf import OmegaConf

from lrnn_lightning.atomic import atomic_path
from lrnn_lightning.callbacks.metadata import RunMetadata
from lrnn_lightning.data.vocab import Vocabulary
from lrnn_lightning.errors import CheckpointError

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and renames it: an interrupted save loses nothing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        """Memory-mapped: a mid-epoch checkpoint of a 793K-word LightRNN carries gigabytes of
        reallocation statistics, which every rank would otherwise read into memory at once."""
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location)
        ckpt = torch.load(path, map_location=map_location or "cpu", mmap=True,
                          weights_only=bool(weights_only) if weights_only is not None else False)
        # everything but the (transient) statistics is copied out of the mapping: tensors kept for the
        # run (optimizer state, RNG states) would otherwise keep the whole file mapped, and the pages
        # the statistics were read from resident, long after they were added to the accumulators
        return {k: v if k == _STATISTICS_KEY else _copy_tensors(v) for k, v in ckpt.items()}


_STATISTICS_KEY = "lrnn_realloc_statistics"  # the Reallocation callback's partial statistics


def _copy_tensors(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _copy_tensors(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_copy_tensors(v) for v in x)
    return x


def read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass ckpt_path=<run dir>/checkpoints/last.ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"checkpoint {path} could not be read ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or RunMetadata.KEY not in ckpt:
        raise CheckpointError(f"{path} is not an lrnn-lightning checkpoint (no '{RunMetadata.KEY}' metadata)")
    return ckpt


def checkpoint_vocab(ckpt: dict) -> Vocabulary:
    return Vocabulary(ckpt[RunMetadata.KEY]["vocab"])


def check_same_vocab(ckpt_vocab: Vocabulary, data_vocab: Vocabulary, path, data_name: str) -> None:
    if ckpt_vocab != data_vocab:
        raise CheckpointError(
            f"checkpoint {path} was trained on another vocabulary ({len(ckpt_vocab)} words, "
            f"fingerprint {ckpt_vocab.fingerprint()}) than data '{data_name}' has ({len(data_vocab)} words, "
            f"fingerprint {data_vocab.fingerprint()}).\n"
            "  to fix: use the data the model was trained on (omit data=... to take it from the checkpoint)."
        )


def load_language_model(path: str | os.PathLike):
    """``(model, vocab, metadata)`` from a checkpoint written by ``train.py``; model in eval mode on CPU."""
    ckpt = read_checkpoint(path)
    meta = ckpt[RunMetadata.KEY]
    vocab = checkpoint_vocab(ckpt)
    model = instantiate(OmegaConf.create(meta["model_config"]), vocab_size=len(vocab))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, vocab, meta


_LAST = re.compile(r"last(-v\d+)?\.ckpt")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | os.PathLike,
                      checkpoint_dir: str | os.PathLike | None = None) -> str | None:
    """``ckpt_path`` as given, except ``last``: the newest (by modification time) of this run
    directory's ``last.ckpt`` (in ``checkpoint_dir``, by default ``<output_dir>/checkpoints``) and
    Lightning's SLURM ``hpc_ckpt_*.ckpt`` in ``output_dir``; ``None`` (a fresh run) when there is none.
    That makes a job that is re-run in the same directory (a SLURM requeue) resume by itself."""
    if ckpt_path is None or str(ckpt_path) != "last":
        return ckpt_path
    out = Path(output_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else out / "checkpoints"
    found = [p for p in ckpt_dir.glob("last*.ckpt") if _LAST.fullmatch(p.name) and p.is_file()]
    found += [p for p in out.glob("hpc_ckpt_*.ckpt") if p.is_file()]
    if not found:
        log.info("ckpt_path=last: no checkpoint in %s yet: a fresh run", out)
        return None
    # newest first; on equal times the exact mid-epoch last.ckpt wins over a signal-time hpc checkpoint
    newest = max(found, key=lambda p: (p.stat().st_mtime_ns, p.name.startswith("last")))
    log.info("ckpt_path=last: resuming from %s (the newest of %d checkpoint(s) in the run directory)",
             newest, len(found))
    return str(newest)
