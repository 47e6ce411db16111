"""lrnn-lightning: memory- and compute-efficient recurrent language models (LightRNN, SRU)."""

__version__ = "0.1.0"
