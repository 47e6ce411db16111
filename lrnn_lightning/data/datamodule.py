"""The LightningDataModule of every corpus: files -> cached token ids -> BPTT windows."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from lrnn_lightning.data.cache import cached_token_ids
from lrnn_lightning.data.corpus import SPLITS, CorpusFiles
from lrnn_lightning.data.streams import BPTTWindows
from lrnn_lightning.data.vocab import Vocabulary

log = logging.getLogger(__name__)


class LMDataModule(L.LightningDataModule):
    """Language-model data: contiguous streams cut into BPTT windows.

    ``corpus`` is any object with ``prepare(cache_dir) -> CorpusFiles`` (a registry corpus, a folder
    of text files, the synthetic language, ...). ``min_count=None`` takes the corpus's own threshold.
    ``batch_size`` is per process: under DDP each rank reads its own contiguous part of the training
    split, so the global batch is ``batch_size * world_size``.
    """

    def __init__(
        self,
        corpus: Any,
        cache_dir: str,
        root: str | None = None,
        download: bool = False,
        batch_size: int = 32,
        eval_batch_size: int = 10,
        bptt: int = 35,
        min_count: int | None = None,
        max_vocab_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        self.corpus = corpus
        # data.root and data.download are the user's keys; the config hands them to the corpus
        self.root, self.download = root, download
        self.cache_dir = Path(cache_dir)
        self.batch_size, self.eval_batch_size, self.bptt = batch_size, eval_batch_size, bptt
        self.min_count, self.max_vocab_size = min_count, max_vocab_size
        self.num_workers = num_workers
        self.vocab: Vocabulary | None = None
        self.ids: dict = {}
        self.sizes: dict[str, int] = {}
        self.metrics: dict[str, float] = {}
        self.windows: dict[str, BPTTWindows] = {}

    def prepare_data(self) -> None:
        """Write the corpus files and the token cache (concurrency-safe; idempotent)."""
        if self.vocab is not None:
            return
        files: CorpusFiles = self.corpus.prepare(self.cache_dir)
        min_count = files.min_count if self.min_count is None else self.min_count
        self.vocab, self.ids, meta = cached_token_ids(
            files.files, self.cache_dir, min_count, self.max_vocab_size, files.vocab_file
        )
        self.sizes = meta["sizes"]
        self.metrics = dict(files.metrics)
        log.info("vocabulary %d words; tokens %s", len(self.vocab), meta["sizes"])

    @property
    def vocab_size(self) -> int:
        self.prepare_data()
        return len(self.vocab)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        for split in SPLITS:
            train = split == "train"
            self.windows[split] = BPTTWindows(
                self.ids[split],
                self.batch_size if train else self.eval_batch_size,
                self.bptt,
                self.vocab.eos_id,
                rank=rank,
                world=world,
                pad=not train,
            )

    def _loader(self, split: str) -> DataLoader:
        # batch_size=None: a window already is a batch; order matters (the hidden state is carried)
        return DataLoader(self.windows[split], batch_size=None, shuffle=False, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
