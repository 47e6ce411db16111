from lrnn_lightning.callbacks.checkpoint import MidEpochCheckpoint, parse_interval
from lrnn_lightning.callbacks.dashboard import Dashboard
from lrnn_lightning.callbacks.metadata import RunMetadata
from lrnn_lightning.callbacks.optuna_pruning import OptunaPruning
from lrnn_lightning.callbacks.progress import PlainProgressBar, auto_progress_bar
from lrnn_lightning.callbacks.reallocation import Reallocation
from lrnn_lightning.callbacks.throughput import TokensPerSecond

__all__ = ["Dashboard", "MidEpochCheckpoint", "OptunaPruning", "PlainProgressBar", "Reallocation", "RunMetadata",
           "TokensPerSecond", "auto_progress_bar", "parse_interval"]
