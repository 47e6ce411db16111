"""Exact mid-epoch resume: where the epoch stands, and per-rank state carried through a checkpoint.

A checkpoint saved mid-epoch (``callbacks.model_checkpoint.every_n_train_steps`` or
``train_time_interval``) holds what the uninterrupted run would carry into its next step:

- the position in the epoch: the train loader's ``state_dict`` (``LMDataModule``), saved by
  Lightning with the fit loop; it is the number of windows already trained on, taken from the
  trainer's progress (``windows_done``), never from the loader (Lightning fetches ahead);
- per rank, the carried hidden state and the partial loss sums of the epoch, and the random
  streams (``LanguageModel.on_save_checkpoint``). Each DDP rank has its own; the checkpoint is
  written by rank 0 alone, so every rank's entry is gathered into a list first (``gather_ranks``).

Everything stored is a plain container of tensors and numbers: checkpoints load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

import torch


def windows_done(trainer) -> int:
    """Training windows of the current epoch already trained on; 0 when the epoch is complete
    (the next one starts from its first window) or when nothing is being fitted.

    Read where checkpoints are saved: in ``on_train_batch_end`` the batch that just ended counts
    (``processed`` is incremented before that hook, ``completed`` after it).
    """
    from lightning.pytorch.trainer.states import TrainerFn

    if trainer is None or trainer.state.fn != TrainerFn.FITTING:
        return 0
    done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
    total = trainer.num_training_batches
    return done if 0 < done < total else 0


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def gather_ranks(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (one entry without a process group).

    A collective: every rank must call it at the same point, as every rank does when Lightning
    saves a checkpoint (``Trainer.save_checkpoint`` runs on all ranks, rank 0 writes the file).
    Tensors travel on the CPU.
    """
    obj = to_device(obj, "cpu")
    if not distributed():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def to_device(obj: Any, device) -> Any:
    """``obj`` with every tensor in it moved to ``device`` (tensors, tuples, lists, dicts, None)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
