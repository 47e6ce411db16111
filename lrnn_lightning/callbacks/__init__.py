from lrnn_lightning.callbacks.metadata import RunMetadata
from lrnn_lightning.callbacks.progress import PlainProgressBar, auto_progress_bar
from lrnn_lightning.callbacks.throughput import TokensPerSecond

__all__ = ["PlainProgressBar", "RunMetadata", "TokensPerSecond", "auto_progress_bar"]
