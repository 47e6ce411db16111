"""No host synchronisation in a training step on the GPU: the step, the data transfer and every
per-step hook (ours and Lightning's) run under ``torch.cuda.set_sync_debug_mode("error")``, so an
``.item()``, a ``float(tensor)``, a blocking copy, a ``nonzero`` or a boolean-mask index raises.
Logging steps (every ``log_every_n_steps``) and an epoch's last batch (the reallocation round) may
sync by design; the guarded batches are neither."""

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from conftest import TINY
from lrnn_lightning.run import train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


class SyncGuard(L.Callback):
    """Sync debug mode "error" from this hook in batch ``first - 1`` to this hook in batch ``last``:
    batches ``first .. last - 1`` entirely (fetch, host-to-device copy, step, every hook) and the
    training step of batch ``last``."""

    made: list["SyncGuard"] = []  # the instances train() built from the config

    def __init__(self, first: int, last: int):
        self.first, self.last, self.guarded = first, last, []
        SyncGuard.made.append(self)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if torch.cuda.get_sync_debug_mode() == 2:
            self.guarded.append((trainer.current_epoch, batch_idx))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch != 0:
            return
        if batch_idx == self.first - 1:
            torch.cuda.set_sync_debug_mode("error")
        elif batch_idx == self.last:
            torch.cuda.set_sync_debug_mode("default")

    def on_exception(self, trainer, pl_module, exception) -> None:
        torch.cuda.set_sync_debug_mode("default")


def test_sync_debug_mode_catches_a_sync():
    x = torch.ones(3, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            x.sum().item()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("model", ["lightrnn", "lightsru", "lstm"])
def test_training_steps_do_not_sync_with_the_host(make_cfg, model):
    """Real steps of the default callbacks on one GPU, bf16 where supported; lightrnn with the
    reallocation statistics accumulating in its first epoch."""
    cfg = make_cfg([*TINY, f"model={model}", "hardware=gpu", "trainer.max_epochs=2",
                    "trainer.limit_train_batches=10", "trainer.limit_val_batches=2",
                    "trainer.log_every_n_steps=1000", "test=false"])
    with open_dict(cfg):
        cfg.callbacks.sync_guard = {"_target_": f"{__name__}.SyncGuard", "first": 2, "last": 8}
    SyncGuard.made.clear()
    try:
        metrics = train(cfg)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert metrics["train/loss"] > 0
    (guard,) = SyncGuard.made
    assert guard.guarded == [(0, b) for b in range(2, 9)]  # the batches whose every hook ran guarded
