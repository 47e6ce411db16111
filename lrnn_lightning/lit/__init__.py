from lrnn_lightning.lit.lm import LanguageModel

__all__ = ["LanguageModel"]
