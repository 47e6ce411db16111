"""OmegaConf resolvers used by the configs (registered when lrnn_lightning.run is imported)."""

from __future__ import annotations

from omegaconf import OmegaConf


def gpu_precision() -> str:
    """``bf16-mixed`` where the GPU computes in bf16 (Ampere and newer), else ``16-mixed``;
    resolved where the trainer is built, i.e. on the machine that trains."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "16-mixed"


def register() -> None:
    if not OmegaConf.has_resolver("gpu_precision"):
        OmegaConf.register_new_resolver("gpu_precision", gpu_precision)
