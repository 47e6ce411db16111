"""Token ids cached as int32 ``.npy`` arrays (memory-mapped), keyed by the corpus files' content.

A cache entry is a directory ``<cache_dir>/tokens/<key>/`` holding ``vocab.txt``,
``<split>.npy`` and ``meta.json``. It is built under a temporary name and renamed into place
when complete, so a crash never leaves an entry that later loads. Building streams the text in
blocks of whole lines: the vocabulary is counted in one pass, the ids are written in a second
pass appended to the ``.npy`` file, so memory stays bounded at any corpus size; readers map it.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from lrnn_lightning.atomic import atomic_dir, write_json
from lrnn_lightning.data.vocab import EOS, Vocabulary
from lrnn_lightning.errors import CorpusError

log = logging.getLogger(__name__)

CACHE_VERSION = 2
BLOCK_BYTES = 1 << 22  # text read per block: bounds memory (~15x this for the token list)

Paths = Sequence[Path]


def _as_paths(p) -> list[Path]:
    return [Path(x) for x in p] if isinstance(p, (list, tuple)) else [Path(p)]


def first_bad_utf8(path: Path, chunk_bytes: int = 1 << 20) -> tuple[int, int, int] | None:
    """(byte offset, line number, byte) of the first byte of ``path`` that is not valid UTF-8, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    pos, line = 0, 1
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            pending = len(decoder.getstate()[0])  # bytes of a character begun in the previous chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                offset = pos - pending + e.start
                return offset, line + chunk[: max(offset - pos, 0)].count(b"\n"), e.object[e.start]
            if not chunk:
                return None
            pos += len(chunk)
            line += chunk.count(b"\n")


def not_utf8(path: Path) -> CorpusError:
    """The error for a text file that does not decode as UTF-8, naming the first bad byte."""
    bad = first_bad_utf8(path)
    where = f" at byte offset {bad[0]} (line {bad[1]}: byte 0x{bad[2]:02x})" if bad else ""
    return CorpusError(
        f"{path} is not UTF-8 text{where}.\n"
        f"  to fix: re-encode it as UTF-8, e.g. iconv -f <its encoding> -t utf-8 {path} > {path}.utf8 "
        f"&& mv {path}.utf8 {path}"
    )


def iter_blocks(paths: Paths, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """Whole lines of the files, in blocks of about ``block_bytes``; every block ends with a newline."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            while True:
                try:
                    lines = f.readlines(block_bytes)
                except UnicodeDecodeError:
                    raise not_utf8(Path(path)) from None
                if not lines:
                    break
                if not lines[-1].endswith("\n"):
                    lines[-1] += "\n"
                yield "".join(lines)


def count_tokens(paths: Paths) -> tuple[Counter, int]:
    """Word counts (one ``<eos>`` per line, blank lines included) and the token total."""
    counts: Counter = Counter()
    for block in iter_blocks(paths):
        counts.update(block.split())
        counts[EOS] += block.count("\n")
    return counts, sum(counts.values())


class _Index(dict):
    def __init__(self, vocab: Vocabulary):
        super().__init__(vocab.index)
        self.unk = vocab.unk_id

    def __missing__(self, word):
        return self.unk


def encode(paths: Paths, vocab: Vocabulary, out: Path, num_tokens: int | None = None) -> int:
    """Write the token ids of the files to ``out`` (.npy, int32), block by block.

    Plain appends after the .npy header rather than a writable memmap, so resident memory stays
    at one block whatever the corpus size.
    """
    if num_tokens is None:
        num_tokens = sum(len(b.split()) + b.count("\n") for b in iter_blocks(paths))
    index, eos_marker, pos = _Index(vocab), f" {EOS} ", 0
    with open(out, "wb") as f:
        header = {"descr": np.dtype(np.int32).str, "fortran_order": False, "shape": (num_tokens,)}
        np.lib.format.write_array_header_1_0(f, header)
        for block in iter_blocks(paths):
            tokens = block.replace("\n", eos_marker).split()
            f.write(np.fromiter(map(index.__getitem__, tokens), dtype=np.int32, count=len(tokens)).tobytes())
            pos += len(tokens)
    if pos != num_tokens:
        raise RuntimeError(f"{paths} changed while being read ({pos} tokens, expected {num_tokens})")
    return pos


def file_digest(path: Path, memo: dict | None = None) -> str:
    """sha256 of a file's content; ``memo`` skips re-hashing a file whose size and mtime did not change."""
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    key = str(path.resolve())
    if memo is not None and memo.get(key, {}).get("stamp") == stamp:
        return memo[key]["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    if memo is not None:
        memo[key] = {"stamp": stamp, "sha256": h.hexdigest()}
    return h.hexdigest()


def cached_token_ids(
    files: Mapping[str, Path | Paths],
    cache_dir: str | Path,
    min_count: int = 1,
    max_size: int | None = None,
    vocab_file: str | Path | None = None,
) -> tuple[Vocabulary, dict[str, np.ndarray], dict]:
    """Vocabulary and memory-mapped token ids of each split; builds the cache entry if absent.

    A split is one file or a list of files read in order (One Billion Word's training shards).
    The vocabulary comes from ``vocab_file`` when given, otherwise from the training split's counts.
    """
    cache_dir = Path(cache_dir)
    memo_path = cache_dir / "digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    known = json.dumps(memo, sort_keys=True)
    splits = {split: _as_paths(p) for split, p in files.items()}
    key_src = {
        "version": CACHE_VERSION,
        "files": {s: [file_digest(p, memo) for p in ps] for s, ps in sorted(splits.items())},
        "min_count": min_count,
        "max_size": max_size,
        "vocab_file": file_digest(Path(vocab_file), memo) if vocab_file else None,
    }
    if json.dumps(memo, sort_keys=True) != known:  # only when a file was hashed
        write_json(memo_path, memo)
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:20]
    entry = cache_dir / "tokens" / key
    if not (entry / "meta.json").is_file():
        log.info("building token cache %s", entry)
        with atomic_dir(entry) as tmp:
            counts, train_tokens = count_tokens(splits["train"])
            if vocab_file:
                try:
                    vocab = Vocabulary.load(vocab_file)
                except UnicodeDecodeError:
                    raise not_utf8(Path(vocab_file)) from None
            else:
                vocab = Vocabulary.from_counts(counts, min_count, max_size)
            del counts
            vocab.save(tmp / "vocab.txt")
            sizes = {
                split: encode(ps, vocab, tmp / f"{split}.npy", train_tokens if split == "train" else None)
                for split, ps in splits.items()
            }
            meta = {**key_src, "sizes": sizes, "vocab_size": len(vocab), "pid": os.getpid()}
            # meta.json last: its presence marks a complete entry
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    meta = json.loads((entry / "meta.json").read_text())
    vocab = Vocabulary.load(entry / "vocab.txt")
    ids = {split: np.load(entry / f"{split}.npy", mmap_mode="r") for split in splits}
    return vocab, ids, meta
