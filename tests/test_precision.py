"""float32_matmul_precision: hardware=gpu|ddp|multinode use the tensor cores (high); it is applied
before the run, recorded with the config, and a bad value is one clear error."""

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY
from lrnn_lightning.errors import UserError
from lrnn_lightning.run import set_matmul_precision, train


@pytest.fixture
def restore_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("hardware,expected", [("gpu", "high"), ("ddp", "high"), ("multinode", "high"),
                                               ("cpu", None), ("ddp_cpu", None)])
def test_gpu_hardware_configs_choose_tf32(make_cfg, hardware, expected):
    cfg = make_cfg([f"hardware={hardware}"])
    assert OmegaConf.to_container(cfg)["float32_matmul_precision"] == expected


def test_the_run_applies_the_setting_and_records_it(make_cfg, tmp_path, restore_precision):
    torch.set_float32_matmul_precision("highest")
    cfg = make_cfg([*TINY, "trainer.max_epochs=1", "test=false", "logger=csv", "float32_matmul_precision=medium"])
    train(cfg)
    assert torch.get_float32_matmul_precision() == "medium"
    hparams = (tmp_path / "run" / "csv" / "hparams.yaml").read_text()
    assert "float32_matmul_precision: medium" in hparams


def test_null_leaves_torch_alone_and_a_bad_value_says_what_to_use(restore_precision):
    torch.set_float32_matmul_precision("high")
    assert set_matmul_precision(None) == "high"
    with pytest.raises(UserError, match="float32_matmul_precision='tf32': use one of highest, high, medium"):
        set_matmul_precision("tf32")
    assert torch.get_float32_matmul_precision() == "high"


def test_loaders_pin_their_batches_only_for_a_cuda_trainer_unless_told(make_cfg):
    """A pageable host-to-device copy waits for the GPU's queue: batches are page-locked when the
    trainer trains on CUDA (``pin_memory=None``), never on a CPU run, and as told otherwise."""
    import lightning as L
    from hydra.utils import instantiate

    cfg = make_cfg(TINY)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.pinned() is False  # no trainer yet
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    assert dm.pinned() is False and dm.train_dataloader().pin_memory is False
    assert dm.val_dataloader().pin_memory is False
    dm.pin_memory = True
    assert dm.train_dataloader().pin_memory is True and dm.val_dataloader().pin_memory is True


@pytest.mark.parametrize("cuda,bf16,expected", [(True, True, "bf16-mixed"), (True, False, "16-mixed"),
                                                (False, False, "16-mixed")])
def test_gpu_configs_resolve_the_precision_of_the_gpu_that_trains(make_cfg, monkeypatch, cuda, bf16, expected):
    """``${gpu_precision:}``: bf16 where the GPU computes in it (Ampere and newer), else fp16; resolved
    when the config is read on the training machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    for hardware in ("gpu", "ddp", "multinode"):
        cfg = make_cfg([f"hardware={hardware}"])
        assert cfg.trainer.precision == expected, hardware
    assert make_cfg(["hardware=cpu"]).trainer.precision == "32-true"
