"""Token ids cached as int32 numpy arrays, keyed by the corpus files' content.

A cache entry is a directory ``<cache_dir>/tokens/<key>/`` holding ``vocab.txt``,
``<split>.npy`` and ``meta.json``. It is built under a temporary name and renamed into place
when complete, so a crash never leaves an entry that later loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
from array import array
from pathlib import Path
from typing import Mapping

import numpy as np

from lrnn_lightning.atomic import atomic_dir
from lrnn_lightning.data.vocab import Vocabulary, count_words

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_CHUNK = 1 << 20


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def encode_file(path: str | Path, vocab: Vocabulary, out: Path) -> int:
    """Stream a text file into an int32 .npy of token ids (``<eos>`` after each line)."""
    get, unk, eos = vocab.index.get, vocab.unk_id, vocab.eos_id
    chunks: list[np.ndarray] = []
    buf = array("i")
    with open(path, encoding="utf-8") as f:
        for line in f:
            buf.extend([get(w, unk) for w in line.split()])
            buf.append(eos)
            if len(buf) >= _CHUNK:
                chunks.append(np.frombuffer(buf, dtype=np.int32).copy())
                buf = array("i")
    chunks.append(np.frombuffer(buf, dtype=np.int32).copy())
    ids = np.concatenate(chunks)
    np.save(out, ids)
    return int(ids.size)


def cached_token_ids(
    files: Mapping[str, str | Path],
    cache_dir: str | Path,
    min_count: int = 1,
    max_size: int | None = None,
    vocab_file: str | Path | None = None,
) -> tuple[Vocabulary, dict[str, np.ndarray], dict]:
    """Vocabulary and memory-mapped token ids of each split; builds the cache entry if absent.

    The vocabulary comes from ``vocab_file`` when given, otherwise from the training file's counts.
    """
    digests = {split: file_digest(p) for split, p in sorted(files.items())}
    key_src = {
        "version": CACHE_VERSION,
        "files": digests,
        "min_count": min_count,
        "max_size": max_size,
        "vocab_file": file_digest(vocab_file) if vocab_file else None,
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:20]
    entry = Path(cache_dir) / "tokens" / key
    if not (entry / "meta.json").is_file():
        log.info("building token cache %s", entry)
        with atomic_dir(entry) as tmp:
            if vocab_file:
                vocab = Vocabulary.load(vocab_file)
            else:
                vocab = Vocabulary.from_counts(count_words(files["train"]), min_count, max_size)
            vocab.save(tmp / "vocab.txt")
            sizes = {split: encode_file(p, vocab, tmp / f"{split}.npy") for split, p in files.items()}
            meta = {**key_src, "sizes": sizes, "vocab_size": len(vocab)}
            # meta.json last: its presence marks a complete entry
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    meta = json.loads((entry / "meta.json").read_text())
    vocab = Vocabulary.load(entry / "vocab.txt")
    ids = {split: np.load(entry / f"{split}.npy", mmap_mode="r") for split in files}
    return vocab, ids, meta
