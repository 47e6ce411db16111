"""Where a corpus's files are, and the one clear error when they are not there."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lrnn_lightning.errors import CorpusError

SPLITS = ("train", "valid", "test")


@dataclass
class CorpusFiles:
    """A corpus ready to be read: one text file per split, optionally a fixed vocabulary."""

    files: dict[str, Path]
    vocab_file: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class TextDirCorpus:
    """A folder with one text file per split (one sentence per line, space-separated tokens)."""

    def __init__(
        self,
        root: str,
        train: str = "train.txt",
        valid: str = "valid.txt",
        test: str = "test.txt",
        name: str = "text_dir",
        how_to_get: str = "put your own corpus there: one sentence per line, tokens separated by spaces",
    ):
        self.root = Path(root)
        self.names = {"train": train, "valid": valid, "test": test}
        self.name = name
        self.how_to_get = how_to_get

    def prepare(self, cache_dir: str | Path) -> CorpusFiles:
        expected = ", ".join(self.names.values())
        if not self.root.is_dir():
            raise CorpusError(
                f"corpus '{self.name}': folder {self.root} does not exist.\n"
                f"  expected files: {expected}\n"
                f"  to fix: {self.how_to_get}; or point data.root=<folder> at a folder that has them."
            )
        files = {split: self.root / fname for split, fname in self.names.items()}
        missing = [str(p.name) for p in files.values() if not p.is_file()]
        if missing:
            raise CorpusError(
                f"corpus '{self.name}': folder {self.root} lacks {', '.join(missing)}.\n"
                f"  expected files: {expected}\n"
                f"  to fix: {self.how_to_get}; or point data.root=<folder> at a folder that has them."
            )
        for split, path in files.items():
            if path.stat().st_size == 0 or not _has_token(path):
                raise CorpusError(
                    f"corpus '{self.name}': the {split} file {path} is empty (no tokens).\n"
                    f"  to fix: fill it with one sentence per line, or point data.root elsewhere."
                )
        return CorpusFiles(files=files)


def _has_token(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        return any(line.split() for line in f)
