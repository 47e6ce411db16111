"""Corpora, vocabulary, cached token ids, BPTT streams and the LightningDataModule (no models here)."""

from lrnn_lightning.data.corpus import CorpusFiles, RegistryCorpus, TextDirCorpus
from lrnn_lightning.data.registry import CORPORA, CorpusSpec, corpus_spec
from lrnn_lightning.data.datamodule import LMDataModule
from lrnn_lightning.data.streams import IGNORE, BPTTWindows
from lrnn_lightning.data.synthetic import ClassMarkovLanguage, LanguageSpec, SyntheticCorpus
from lrnn_lightning.data.vocab import EOS, UNK, Vocabulary

__all__ = [
    "CORPORA", "EOS", "IGNORE", "UNK", "BPTTWindows", "ClassMarkovLanguage", "CorpusFiles", "CorpusSpec",
    "LMDataModule", "LanguageSpec", "RegistryCorpus", "SyntheticCorpus", "TextDirCorpus", "Vocabulary",
    "corpus_spec",
]
