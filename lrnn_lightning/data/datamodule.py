"""The LightningDataModule of every corpus: files -> cached token ids -> BPTT windows."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Sampler

from lrnn_lightning.data.cache import cached_token_ids
from lrnn_lightning.data.corpus import SPLITS, CorpusFiles
from lrnn_lightning.data.streams import BPTTWindows
from lrnn_lightning.data.vocab import Vocabulary
from lrnn_lightning.resume import windows_done

log = logging.getLogger(__name__)


class ResumableSampler(Sampler[int]):
    """Window indices ``start .. n-1`` in order (``start`` is 0 but while a resumed loader makes
    its first iterator). ``len()`` is always the whole epoch."""

    def __init__(self, n: int):
        self.n, self.start = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(range(min(self.start, self.n), self.n))


class ResumableLoader(DataLoader):
    """The training loader: Lightning saves its ``state_dict`` in every checkpoint and, when it
    resumes, calls ``load_state_dict`` before its first ``iter()``; that iteration (only) skips
    the windows the interrupted epoch already trained on, without reading them.

    ``position()`` says how many windows of the current epoch are done: the trainer's progress
    (``lrnn_lightning.resume.windows_done``), 0 at an epoch's end. Counting the windows this
    loader yielded would be wrong by the batch Lightning fetches ahead.
    """

    def __init__(self, dataset, position: Callable[[], int] | None = None, sampler=None, **kwargs: Any):
        # **kwargs: Lightning rebuilds a loader with another sampler (overfit_batches) from its attributes
        kwargs.setdefault("batch_size", None)  # a window already is a batch
        kwargs.setdefault("generator", _private_generator())
        super().__init__(dataset, sampler=ResumableSampler(len(dataset)) if sampler is None else sampler, **kwargs)
        self.position = position
        self._skip = 0

    def __iter__(self):
        skip, self._skip = self._skip, 0
        if not skip:
            return super().__iter__()
        # the sampler is iterated while the iterator is made (twice with worker processes)
        self.sampler.start = skip
        try:
            return super().__iter__()
        finally:
            self.sampler.start = 0

    def state_dict(self) -> dict[str, int]:
        return {"windows_done": int(self.position()) if self.position is not None else 0, "windows": len(self.sampler)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        done, windows = int(state.get("windows_done", 0)), state.get("windows")
        if not isinstance(self.sampler, ResumableSampler):
            if done:
                rank_zero_warn(f"the training loader's sampler was replaced ({type(self.sampler).__name__}): "
                               f"the resumed epoch starts from its first window, not after window {done}")
            return
        if windows is not None and int(windows) != len(self.sampler):
            rank_zero_warn(f"the checkpoint's epoch had {windows} training windows per process, this one has "
                           f"{len(self.sampler)} (other data, batch size, bptt or number of processes): "
                           f"resuming after window {done} is not exact")
        self._skip = max(0, min(done, len(self.sampler)))


def _private_generator() -> torch.Generator:
    """Making a DataLoader iterator draws its base seed from the loader's generator, by default
    from the global torch stream. A private generator keeps the global stream (dropout) free of
    loader iterations, whose number differs between an uninterrupted and a resumed run."""
    return torch.Generator()


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
        pin_memory: bool | None = None,
    ):
        super().__init__()
        self.corpus = corpus
        # data.root and data.download are the user's keys; the config hands them to the corpus
        self.root, self.download = root, download
        self.cache_dir = Path(cache_dir)
        self.batch_size, self.eval_batch_size, self.bptt = batch_size, eval_batch_size, bptt
        self.min_count, self.max_vocab_size = min_count, max_vocab_size
        self.num_workers = num_workers
        # page-locked batches: a pageable host-to-device copy waits for the GPU's queue; None: pin when
        # the trainer trains on a CUDA device
        self.pin_memory = pin_memory
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
        return DataLoader(self.windows[split], batch_size=None, shuffle=False, num_workers=self.num_workers,
                          generator=_private_generator(), pin_memory=self.pinned())

    def train_dataloader(self) -> DataLoader:
        """Resumable mid-epoch: see ``ResumableLoader``."""
        return ResumableLoader(self.windows["train"], position=self._windows_done, num_workers=self.num_workers,
                               pin_memory=self.pinned())

    def pinned(self) -> bool:
        """Whether the loaders pin their batches: ``pin_memory`` when given, else whether the trainer
        this data module belongs to trains on a CUDA device (Lightning then copies them non-blocking)."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _windows_done(self) -> int:
        return windows_done(self.trainer)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
