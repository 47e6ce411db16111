"""Logger factories. W&B goes online only when credentials exist, and never prompts. CSV and
TensorBoard loggers that continue a resumed run's logs in the same run directory."""

from __future__ import annotations

import csv
import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info

from lrnn_lightning.atomic import atomic_path


def _wandb_settings_files() -> list[Path]:
    """The settings files wandb reads, the one that wins last: the global one (``$WANDB_CONFIG_DIR/
    settings`` or ``~/.config/wandb/settings``, written by ``wandb login --host``/``wandb offline``),
    then the workspace one (``<WANDB_DIR or .>/wandb/settings``, ``.wandb/`` when that folder exists)."""
    config_dir = os.environ.get("WANDB_CONFIG_DIR")
    glob_file = Path(config_dir).expanduser() if config_dir else Path("~/.config/wandb").expanduser()
    root = Path(os.environ.get("WANDB_DIR") or ".").expanduser()
    local = root / (".wandb" if (root / ".wandb").exists() else "wandb")
    return [glob_file / "settings", local / "settings"]


def wandb_settings() -> dict[str, str]:
    """The ``[default]`` section of wandb's settings files (workspace over global); unreadable: empty."""
    import configparser

    found: dict[str, str] = {}
    for path in _wandb_settings_files():
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        if parser.has_section("default"):
            found.update(parser.items("default"))
    return found


def wandb_base_url(settings: dict[str, str] | None = None) -> str:
    """The W&B server: ``WANDB_BASE_URL``, else the settings files' ``base_url``, else api.wandb.ai."""
    settings = wandb_settings() if settings is None else settings
    return (os.environ.get("WANDB_BASE_URL") or settings.get("base_url") or "https://api.wandb.ai").rstrip("/")


def _netrc_path() -> Path:
    """The file wandb reads: ``$NETRC``, else ``~/.netrc``, else ``~/_netrc`` (Windows' name)."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    unix = Path("~/.netrc").expanduser()
    windows = Path("~/_netrc").expanduser()
    return windows if not unix.exists() and windows.exists() else unix


def wandb_credentials() -> str | None:
    """Where wandb would find credentials, or None: as ``wandb.init`` looks for them, the
    ``WANDB_API_KEY``/``WANDB_IDENTITY_TOKEN_FILE`` variables, then the netrc entry (with a
    password) for the server's host[:port], then an ``api_key`` in wandb's settings files."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(var):
            return var
    settings = wandb_settings()
    netloc = urlsplit(wandb_base_url(settings)).netloc
    path = _netrc_path()
    try:
        entry = netrc.netrc(path).authenticators(netloc) if netloc and path.is_file() else None
    except (netrc.NetrcParseError, OSError):
        entry = None
    if entry is not None and entry[2]:
        return str(path)
    if settings.get("api_key"):
        return "wandb settings file"
    return None


def wandb_credentials_present() -> bool:
    return wandb_credentials() is not None


def wandb_mode(offline: bool | None = None) -> str:
    """``online``, ``offline`` or ``disabled``: WANDB_MODE wins (else a ``wandb offline``/``wandb
    disabled`` recorded in wandb's settings files), then ``offline``, then credentials."""
    env = os.environ.get("WANDB_MODE", "").lower()
    if not env and wandb_settings().get("mode", "").lower() in ("disabled", "offline", "dryrun"):
        env = wandb_settings()["mode"].lower()
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
    ``log_model`` (``true``: the best and last checkpoints at the end; ``all``: every checkpoint when
    saved) logs checkpoints as ``model`` artifacts, offline too: ``wandb sync`` uploads them later.
    """
    from lightning.pytorch.loggers import WandbLogger

    for key, value in sweep_identity(kwargs.get("tags")).items():
        if key == "tags" or kwargs.get(key) is None:
            kwargs[key] = value
    mode = wandb_mode(offline)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if mode == "offline":
        why = "offline requested (WANDB_MODE, logger.wandb.offline or `wandb offline`)"
        if not wandb_credentials_present():
            why = (f"no credentials (looked for WANDB_API_KEY, a '{urlsplit(wandb_base_url()).netloc}' entry in "
                   f"{_netrc_path()}, an api_key in wandb's settings files)")
        rank_zero_info(f"W&B: {why}; logging offline under {save_dir}/wandb. "
                       f"Upload later with: wandb sync {save_dir}/wandb/offline-run-*")
    elif mode == "online":
        source = wandb_credentials() or "none (WANDB_MODE=online)"
        rank_zero_info(f"W&B: online ({wandb_base_url()}), credentials from {source}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    # the mode goes to wandb.init: Lightning's own offline=True refuses log_model (and sets WANDB_MODE
    # for the whole process), yet an offline run keeps its artifacts for `wandb sync`
    return WandbLogger(save_dir=save_dir, project=project, mode=mode, offline=False, **kwargs)


def finish_wandb() -> None:
    """Close the W&B run of this process if there is one, so multirun jobs never share a run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()




# ---- loggers that continue a resumed run's logs in the same run directory ----------------------------

def _logged_before_checkpoint(step: str | None, resume_step: int) -> bool:
    """Whether a row logged at ``step`` came from the run before its checkpoint at global step
    ``resume_step``. Lightning logs a batch's row at the number of optimizer steps taken before
    that batch, so the rows of the batches after the checkpoint have ``step >= resume_step``."""
    try:
        return step in (None, "") or int(float(step)) < resume_step
    except ValueError:
        return True


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, not deleted;
    with ``resume_step``, its rows logged after that checkpoint are dropped."""

    def __init__(self, log_dir: str, resume_step: int | None = None):
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), list(reader)
        kept = rows
        if self.resume_step is not None:
            kept = [r for r in rows if _logged_before_checkpoint(r.get("step"), self.resume_step)]
        self.metrics_keys = keys  # save() appends under this header (and rewrites it for new keys)
        if len(kept) != len(rows):
            with atomic_path(self.metrics_file_path) as tmp:
                with open(tmp, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=keys)
                    writer.writeheader()
                    writer.writerows(kept)
        rank_zero_info(f"CSV log: continuing {self.metrics_file_path} ({len(kept)} earlier rows kept, "
                       f"{len(rows) - len(kept)} logged after the checkpoint dropped)")


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger`` that keeps an earlier ``metrics.csv`` in its directory: a run
    resumed into the same run directory (``ckpt_path=last``, a SLURM requeue) continues the log
    instead of deleting it. ``resume_from_step(global_step)`` (``train`` calls it with the
    checkpoint's step) drops the earlier rows logged after that checkpoint: they are logged again."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resume_step: int | None = None

    def resume_from_step(self, step: int) -> None:
        self._resume_step = int(step)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        # rows logged before a checkpoint reach the file with it: a killed run loses only later ones
        self.save()

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self._resume_step)
        return self._experiment


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's ``TensorBoardLogger`` (it keeps the earlier event files of its directory; a
    resumed run adds a new one). ``resume_from_step(global_step)`` hides the earlier events logged
    after that checkpoint (SummaryWriter's ``purge_step``): they are logged again."""

    def resume_from_step(self, step: int) -> None:
        if self._experiment is None:
            self._kwargs["purge_step"] = int(step)
