"""Checkpoints: atomic writes, and loading a model with its vocabulary from one file."""

from __future__ import annotations

import os
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and renames it: an interrupted save loses nothing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass ckpt_path=<run dir>/checkpoints/last.ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
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
