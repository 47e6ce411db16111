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


# ---- stopping at a step boundary ---------------------------------------------------------------------
#
# Every way a run stops gracefully ends at the boundary between two optimizer steps, where a mid-epoch
# checkpoint is exact: ``trainer.max_steps``, ``trainer.max_time`` and any other ``trainer.should_stop``
# (Lightning stops after the batch that sets it), and the signals, which are noted wherever they land
# and acted on at the next boundary: SIGTERM, Ctrl-C (SIGINT; a second Ctrl-C interrupts at once) and
# SLURM's requeue signal (SIGUSR1). ``MidEpochCheckpoint`` writes the run's final checkpoint there, once.

_REQUESTS: set[str] = set()  # signals received by this process and deferred to the next step boundary
SIGNAL_REASONS = ("sigterm", "sigint", "requeue")  # agreed over ranks, in this order


def request_stop(reason: str) -> None:
    """Called from a signal handler: the run stops (``sigterm``, ``sigint``) or is requeued and stops
    (``requeue``) at the next step boundary."""
    _REQUESTS.add(reason)


def stop_requested(reason: str) -> bool:
    return reason in _REQUESTS


def clear_stop_requests() -> None:
    _REQUESTS.clear()


def _signals_received(trainer) -> set[str]:
    """The signals any rank has received (a collective under DDP: every rank calls it once per batch)."""
    local = set(_REQUESTS)
    if trainer.received_sigterm:
        local.add("sigterm")
    if not distributed():
        return local
    flags = torch.tensor([reason in local for reason in SIGNAL_REASONS], dtype=torch.int32,
                         device=trainer.strategy.root_device)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return {reason for reason, flag in zip(SIGNAL_REASONS, flags.tolist()) if flag}


def stop_after_batch(trainer) -> set[str]:
    """At the end of a training batch (``on_train_batch_end``): why the fit stops after it, the same
    on every rank; empty when it goes on. Reasons: ``max_steps``, ``should_stop`` (``max_time``,
    early stopping), ``sigterm``, ``sigint``, ``requeue``. Worked out once per batch (the signals are
    agreed over DDP ranks by a collective), whoever asks first."""
    key = (trainer.global_step, int(trainer.fit_loop.epoch_loop.batch_progress.total.processed))
    cached = getattr(trainer, "_lrnn_stop_after_batch", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    reasons = _signals_received(trainer)
    if "sigterm" in reasons and not trainer.received_sigterm:
        # Lightning's own flag, set here on every rank (whichever was signalled): it ends the fit once
        # this batch is done (in the middle of an epoch) or once the epoch has ended (on its last batch)
        trainer._signal_connector.received_sigterm = True
    if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        reasons.add("max_steps")
    if trainer.should_stop and trainer.fit_loop._can_stop_early:
        reasons.add("should_stop")
    trainer._lrnn_stop_after_batch = (key, reasons)
    return reasons


def stopped_by(trainer) -> set[str]:
    """Why the fit stopped at its last step boundary (``stop_after_batch``'s answer there), or empty."""
    cached = getattr(trainer, "_lrnn_stop_after_batch", None)
    return set(cached[1]) if cached is not None else set()


def epoch_cut_short(trainer) -> bool:
    """In the epoch-end hooks of an epoch that a stop ended before its last batch: nothing of an
    epoch's end happens then (no epoch-end checkpoint, no epoch metric); the resumed run finishes it."""
    return windows_done(trainer) > 0
