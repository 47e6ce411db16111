"""Word vocabulary: counted in one streaming pass, ordered by frequency, with <unk> and <eos>."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

UNK = "<unk>"
EOS = "<eos>"


class Vocabulary:
    """Maps words to ids. Ids are in order of decreasing training frequency (ties by word)."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocabulary has duplicate words")
        for special in (UNK, EOS):
            if special not in self.index:
                raise ValueError(f"vocabulary lacks {special}")
        self.unk_id = self.index[UNK]
        self.eos_id = self.index[EOS]

    @classmethod
    def from_counts(cls, counts: Counter, min_count: int = 1, max_size: int | None = None) -> "Vocabulary":
        counts = Counter(counts)
        for special in (UNK, EOS):
            counts.setdefault(special, 0)
        keep = [(w, c) for w, c in counts.items() if c >= min_count or w in (UNK, EOS)]
        keep.sort(key=lambda wc: (-wc[1], wc[0]))
        words = [w for w, _ in keep]
        if max_size is not None and len(words) > max_size:
            if max_size < 2:
                raise ValueError("max_size must leave room for <unk> and <eos>")
            head = [w for w in words[:max_size] if w not in (UNK, EOS)]
            words = head[: max_size - 2] + [UNK, EOS]
            words.sort(key=lambda w: (-counts[w], w))
        return cls(words)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """One word per line (a second whitespace-separated column, e.g. a count, is ignored)."""
        words = [line.split()[0] for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        for special in (UNK, EOS):
            if special not in words:
                words.append(special)
        return cls(words)

    def save(self, path: str | Path) -> None:
        from lrnn_lightning.atomic import write_text

        write_text(path, "\n".join(self.words) + "\n")

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.words).encode()).hexdigest()[:16]

    def encode(self, words: Iterable[str]) -> list[int]:
        get, unk = self.index.get, self.unk_id
        return [get(w, unk) for w in words]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.words[i] for i in ids]

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words
