from lrnn_lightning.callbacks.metadata import RunMetadata
from lrnn_lightning.callbacks.progress import PlainProgressBar, auto_progress_bar
from lrnn_lightning.callbacks.reallocation import Reallocation
from lrnn_lightning.callbacks.throughput import TokensPerSecond

__all__ = ["PlainProgressBar", "Reallocation", "RunMetadata", "TokensPerSecond", "auto_progress_bar"]
