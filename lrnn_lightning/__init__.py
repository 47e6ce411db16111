"""lrnn-lightning: memory- and compute-efficient recurrent language models (LightRNN, SRU)."""

__version__ = "0.1.0"

from lrnn_lightning import resolvers as _resolvers

_resolvers.register()  # ${gpu_precision:} in the hardware configs
