"""Where a corpus's files are, fetching them when asked, and one clear error when they are missing."""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path

from lrnn_lightning.data.cache import not_utf8
from lrnn_lightning.data.download import extract, fetch
from lrnn_lightning.data.registry import CorpusSpec, Layout, corpus_spec
from lrnn_lightning.errors import CorpusError

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


@dataclass
class CorpusFiles:
    """A corpus ready to be read: the files of each split, optionally a fixed vocabulary."""

    files: dict[str, list[Path]]
    vocab_file: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    min_count: int = 1  # the corpus's own <unk> threshold (One Billion Word: 3)


def _resolve(root: Path, layout: Layout) -> dict[str, list[Path]] | None:
    files = {}
    for split in SPLITS:
        found = sorted(Path(p) for p in glob.glob(str(root / layout[split])))
        found = [p for p in found if p.is_file()]
        if not found:
            return None
        files[split] = found
    return files


def _describe(layout: Layout) -> str:
    return ", ".join(layout[s] for s in SPLITS)


class RegistryCorpus:
    """A corpus of the registry (``ptb``, ``wikitext2``, ``aclw_french``, ``one_billion_word``, ...)
    in the folder ``root``, in any of the registry's layouts; downloaded first when ``download``."""

    def __init__(self, name: str, root: str, download: bool = False, downloads_dir: str | None = None,
                 sha256: str | None = None, spec: CorpusSpec | None = None):
        self.spec = spec or corpus_spec(name)
        self.root = Path(root)
        self.download = download
        self.downloads_dir = Path(downloads_dir) if downloads_dir else self.root / ".downloads"
        self.sha256 = sha256 or self.spec.sha256

    def prepare(self, cache_dir: str | Path) -> CorpusFiles:
        files = self._find()
        if files is None and self.download and self.spec.url:
            self._fetch()
            files = self._find()
            if files is None:
                raise CorpusError(
                    f"corpus '{self.spec.name}': the download from {self.spec.url} did not hold the expected files "
                    f"({_describe(self.spec.layouts[-1])}) under {self.root}."
                )
        if files is None:
            raise CorpusError(self._missing_message())
        for split, paths in files.items():
            if not any(_has_token(p) for p in paths):
                raise CorpusError(
                    f"corpus '{self.spec.name}': the {split} file {paths[0]} is empty (no tokens).\n"
                    f"  to fix: fill it with one sentence per line, or point data.root at another folder."
                )
        return CorpusFiles(files=files, min_count=self.spec.min_count)

    def _find(self) -> dict[str, list[Path]] | None:
        if not self.root.is_dir():
            return None
        for layout in self.spec.layouts:
            files = _resolve(self.root, layout)
            if files is not None:
                return files
        return None

    def _fetch(self) -> None:
        name = self.spec.url.rstrip("/").rsplit("/", 1)[-1]
        archive = fetch(self.spec.url, self.downloads_dir / name, self.sha256)
        if self.spec.archive:
            placed = extract(archive, self.root, self.spec.archive, self.spec.members)
            log.info("extracted %s into %s: %s", archive.name, self.root, ", ".join(placed))
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            archive.replace(self.root / name)

    def _missing_message(self) -> str:
        s = self.spec
        where = f"folder {self.root} does not exist" if not self.root.is_dir() else f"folder {self.root} lacks its files"
        partial = ""
        for layout in s.layouts if self.root.is_dir() else ():
            present = [layout[x] for x in SPLITS if glob.glob(str(self.root / layout[x]))]
            if 0 < len(present) < len(SPLITS):
                missing = [layout[x] for x in SPLITS if layout[x] not in present]
                partial = f"\n  found {', '.join(present)} but not {', '.join(missing)}"
                break
        layouts = "\n".join(f"    {_describe(layout)}" for layout in s.layouts)
        if s.url:
            how = (f"run with data.download=true to fetch {s.url}, or get the files yourself and put them "
                   f"there, or point data.root=<folder> at a folder that has them.")
        else:
            how = "put the files there, or point data.root=<folder> at a folder that has them."
        return (
            f"corpus '{s.name}' ({s.title}): {where}.{partial}\n"
            f"  expected files (any one of these layouts):\n{layouts}\n"
            f"  to fix: {how}"
        )


class TextDirCorpus(RegistryCorpus):
    """Any folder with one text file per split (one sentence per line, space-separated tokens)."""

    def __init__(self, root: str, train: str = "train.txt", valid: str = "valid.txt", test: str = "test.txt",
                 name: str = "text_dir", min_count: int = 1):
        base = corpus_spec("text_dir")
        spec = CorpusSpec(name=name, title=base.title, folder=base.folder, min_count=min_count,
                          layouts=({"train": train, "valid": valid, "test": test},))
        super().__init__(name, root, spec=spec)


def _has_token(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        try:
            return any(line.split() for line in f)
        except UnicodeDecodeError:
            raise not_utf8(path) from None
