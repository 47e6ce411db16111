"""Logger factories. W&B goes online only when credentials exist, and never prompts."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.utilities import rank_zero_info


def wandb_credentials_present() -> bool:
    """An API key in the environment, an identity-token file, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_mode(offline: bool | None = None) -> str:
    """``online``, ``offline`` or ``disabled``: WANDB_MODE wins, then ``offline``, then credentials."""
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("disabled", "offline", "dryrun"):
        return "disabled" if env == "disabled" else "offline"
    if offline:
        return "offline"
    if offline is None and env != "online" and not wandb_credentials_present():
        return "offline"
    return "online"


def sweep_identity(tags: list[str] | None = None) -> dict:
    """Inside a Hydra multirun job: ``group`` = the sweep (its directory's name), ``name`` =
    ``<sweep>/<job number>``, ``tags`` += the job's overrides (W&B caps a tag at 64 characters).
    Outside a sweep: nothing."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return {}
    hc = HydraConfig.get()
    sweep = Path(hc.sweep.dir).name
    overrides = [o for o in hc.overrides.task if not o.startswith(("hydra.", "paths."))]
    return {"group": sweep, "name": f"{sweep}/{hc.job.num}",
            "tags": list(dict.fromkeys([*(tags or []), *(o[:64] for o in overrides)]))}


def wandb_logger(save_dir: str, project: str = "lrnn-lightning", offline: bool | None = None, **kwargs):
    """A Lightning ``WandbLogger`` in the right mode; offline runs say how to upload them later.

    In a sweep, runs are grouped by sweep and named and tagged by job (``sweep_identity``) unless
    ``group``/``name`` are given. ``id`` (with ``resume="allow"``) continues an earlier run.
    """
    from lightning.pytorch.loggers import WandbLogger

    for key, value in sweep_identity(kwargs.get("tags")).items():
        if key == "tags" or kwargs.get(key) is None:
            kwargs[key] = value
    mode = wandb_mode(offline)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline":
        rank_zero_info(
            f"W&B: no credentials (or offline requested); logging offline under {save_dir}/wandb. "
            f"Upload later with: wandb sync {save_dir}/wandb/offline-run-*"
        )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return WandbLogger(save_dir=save_dir, project=project, mode=mode, offline=mode == "offline", **kwargs)


def finish_wandb() -> None:
    """Close the W&B run of this process if there is one, so multirun jobs never share a run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
