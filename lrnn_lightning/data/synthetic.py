"""A synthetic language of known entropy: a class-based Markov source.

Words belong to classes; a sparse Markov chain moves between classes, and each class emits its
words with Zipf-distributed probabilities. One extra state, the sentence end, emits ``<eos>``
(a line break in the files). Because a word determines its class, the word sequence is itself a
Markov chain, and its entropy rate has a closed form:

    H = sum_i pi_i H(T_i) + sum_j pi_j H(E_j)

with ``pi`` the stationary distribution of the class chain, ``T_i`` its transition rows and
``E_j`` the emission distribution of class ``j`` (zero for the sentence end). ``exp(H)`` is the
best perplexity any model can reach on this language (per token, ``<eos>`` included).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lrnn_lightning.atomic import atomic_dir
from lrnn_lightning.data.corpus import SPLITS, CorpusFiles
from lrnn_lightning.data.vocab import EOS, UNK

EOS_STATE = 0  # state 0 of the chain is the sentence end; classes are 1..K
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]


def word_name(i: int) -> str:
    """A pronounceable, unique pseudo-word for index ``i`` (bijective base-70 in syllables)."""
    n = len(_SYLLABLES)
    parts = []
    i += 1
    while i > 0:
        i, r = divmod(i - 1, n)
        parts.append(_SYLLABLES[r])
    return "".join(reversed(parts))


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@dataclass(frozen=True)
class LanguageSpec:
    num_words: int = 10_000
    num_classes: int = 100
    successors: int = 8
    zipf_exponent: float = 1.0
    concentration: float = 0.5
    mean_sentence_length: float = 20.0
    seed: int = 0


class ClassMarkovLanguage:
    """The language itself: transition matrix, emissions, closed-form entropy, and a sampler."""

    def __init__(self, spec: LanguageSpec):
        s = spec
        if s.num_classes < 2 or s.num_words < s.num_classes:
            raise ValueError("need at least 2 classes and at least one word per class")
        if not 1 <= s.successors <= s.num_classes:
            raise ValueError("successors must be between 1 and num_classes")
        if s.mean_sentence_length <= 1:
            raise ValueError("mean_sentence_length must exceed 1")
        self.spec = s
        rng = np.random.default_rng(s.seed)
        K = s.num_classes
        K_states = K + 1
        p_end = 1.0 / s.mean_sentence_length

        # sparse transitions: each class has `successors` next classes (one is its ring
        # neighbour, which keeps the chain irreducible) and ends the sentence with p_end
        succ = np.zeros((K_states, s.successors + 1), dtype=np.int64)
        prob = np.zeros((K_states, s.successors + 1))
        for c in range(1, K + 1):
            ring = c % K + 1
            others = rng.choice(np.setdiff1d(np.arange(1, K + 1), [ring]), s.successors - 1, replace=False)
            succ[c, :-1] = np.concatenate([[ring], others])
            prob[c, :-1] = (1 - p_end) * rng.dirichlet(np.full(s.successors, s.concentration))
            succ[c, -1] = EOS_STATE
            prob[c, -1] = p_end
        starts = rng.choice(np.arange(1, K + 1), s.successors + 1, replace=False)
        succ[EOS_STATE] = starts
        prob[EOS_STATE] = rng.dirichlet(np.full(s.successors + 1, s.concentration))
        self.succ, self.prob = succ, prob
        self.transition = np.zeros((K_states, K_states))
        np.add.at(self.transition, (np.arange(K_states)[:, None], succ), prob)

        # words: a random partition into classes, Zipf inside each class
        perm = rng.permutation(s.num_words)
        self.members = np.array_split(perm, K)  # a word's Zipf rank is its position here
        self.word_class = np.empty(s.num_words, dtype=np.int64)
        self.word_prob_in_class = np.empty(s.num_words)
        width = max(len(m) for m in self.members)
        self.member_table = np.zeros((K_states, width), dtype=np.int64)
        self.member_cdf = np.ones((K_states, width))
        for c, m in enumerate(self.members, start=1):
            z = 1.0 / np.arange(1, len(m) + 1) ** s.zipf_exponent
            z /= z.sum()
            self.word_class[m] = c
            self.word_prob_in_class[m] = z
            self.member_table[c, : len(m)] = m
            self.member_cdf[c, : len(m)] = np.cumsum(z)
            self.member_cdf[c, len(m) - 1 :] = 1.0
        self._search_cdf = np.minimum(self.member_cdf, 1.0)  # nondecreasing rows: see _count_below
        self.words = [word_name(i) for i in range(s.num_words)]

        self.stationary = self._stationary()
        emission_entropy = np.zeros(K_states)
        for c, m in enumerate(self.members, start=1):
            emission_entropy[c] = _entropy(self.word_prob_in_class[m])
        self.entropy_rate = float(
            sum(self.stationary[i] * _entropy(self.transition[i]) for i in range(K_states))
            + self.stationary @ emission_entropy
        )

    def _stationary(self) -> np.ndarray:
        n = self.transition.shape[0]
        a = self.transition.T - np.eye(n)
        a[-1] = 1.0  # replace one (redundant) balance equation by sum(pi) = 1
        b = np.zeros(n)
        b[-1] = 1.0
        return np.linalg.solve(a, b)

    @property
    def optimal_ppl(self) -> float:
        return math.exp(self.entropy_rate)

    def unigram(self) -> dict[str, float]:
        """Stationary probability of every token (words and <eos>)."""
        p = {w: float(self.stationary[self.word_class[i]] * self.word_prob_in_class[i]) for i, w in enumerate(self.words)}
        p[EOS] = float(self.stationary[EOS_STATE])
        return p

    def sample(self, num_tokens: int, seed: int, chains: int = 1024) -> list[np.ndarray]:
        """About ``num_tokens`` tokens as a list of sentences (word indices; <eos> not included).

        Sentences are independent (each starts from the sentence-end state); many are drawn in
        parallel, and each chain keeps its first ``n`` sentences so that no length bias creeps in.
        """
        rng = np.random.default_rng(seed)
        mean_len = self.mean_tokens_per_sentence()
        n_sent = max(1, math.ceil(num_tokens / mean_len))
        chains = max(1, min(chains, n_sent))
        per_chain = math.ceil(n_sent / chains)
        state = np.zeros(chains, dtype=np.int64)
        done = np.zeros(chains, dtype=np.int64)
        rows = []
        while done.min() < per_chain:
            u = rng.random(chains)
            j = (u[:, None] > np.cumsum(self.prob[state], axis=1)).sum(1)
            j = np.minimum(j, self.succ.shape[1] - 1)
            state = self.succ[state, j]
            u = rng.random(chains)
            rank = self._count_below(state, u)
            token = np.where(state == EOS_STATE, -1, self.member_table[state, np.minimum(rank, self.member_table.shape[1] - 1)])
            rows.append(token)
            done += state == EOS_STATE
        stream = np.stack(rows, axis=1)  # [chains, steps], -1 marks a sentence end
        sentences = []
        for c in range(chains):
            ends = np.flatnonzero(stream[c] == -1)[:per_chain]
            sentences.extend(np.split(stream[c, : ends[-1] + 1], ends + 1)[:-1])
        sentences = [s[:-1] for s in sentences[:n_sent]]
        return sentences

    def _count_below(self, state: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``(u[:, None] > self.member_cdf[state]).sum(1)`` by a vectorized binary search.

        The comparison over whole rows costs ``chains x width`` per token (a gather of 1 GB per
        step at 1.3 M words in 10 classes); a row is nondecreasing once clipped at 1 (``u < 1``
        never exceeds an entry >= 1), so counting its entries below ``u`` is a search of
        ``log2(width)`` steps with the same result.
        """
        cdf = self._search_cdf
        lo = np.zeros(len(u), dtype=np.int64)
        hi = np.full(len(u), cdf.shape[1], dtype=np.int64)
        for _ in range(int(cdf.shape[1]).bit_length()):
            mid = (lo + hi) >> 1
            below = cdf[state, np.minimum(mid, cdf.shape[1] - 1)] < u
            below &= mid < hi
            lo = np.where(below, mid + 1, lo)
            hi = np.where(below, hi, mid)
        return lo

    def mean_tokens_per_sentence(self) -> float:
        return 1.0 / self.stationary[EOS_STATE]

    def log_prob(self, sentences: list[np.ndarray]) -> float:
        """Exact log-probability (nats) of sentences, each followed by <eos>."""
        total = 0.0
        log_t = np.log(np.where(self.transition > 0, self.transition, 1.0))
        log_e = np.log(self.word_prob_in_class)
        for s in sentences:
            classes = np.concatenate([[EOS_STATE], self.word_class[s], [EOS_STATE]])
            total += log_t[classes[:-1], classes[1:]].sum() + log_e[s].sum()
        return float(total)


class SyntheticCorpus:
    """Writes the language's train/valid/test text files to the cache, then reads them like any corpus."""

    def __init__(
        self,
        train_tokens: int = 1_000_000,
        valid_tokens: int = 100_000,
        test_tokens: int = 100_000,
        **spec,
    ):
        self.spec = LanguageSpec(**spec)
        self.tokens = {"train": train_tokens, "valid": valid_tokens, "test": test_tokens}
        for split, n in self.tokens.items():
            if n < 1:
                raise ValueError(f"data.{split}_tokens must be positive")

    def word_classes(self, words: list[str]) -> np.ndarray:
        """The true class (``0 .. num_classes - 1``) of each of ``words`` (a vocabulary's words, in id
        order); -1 for ``<eos>``, ``<unk>`` and anything that is not a word of the language. For
        diagnostics (``realloc/row_purity``) only: no model sees it."""
        lang = ClassMarkovLanguage(self.spec)
        index = {w: i for i, w in enumerate(lang.words)}
        return np.array([lang.word_class[index[w]] - 1 if w in index else -1 for w in words], dtype=np.int64)

    def key(self) -> str:
        src = json.dumps({"spec": asdict(self.spec), "tokens": self.tokens, "version": 1}, sort_keys=True)
        return hashlib.sha256(src.encode()).hexdigest()[:16]

    def prepare(self, cache_dir: str | Path) -> CorpusFiles:
        folder = Path(cache_dir) / "synthetic" / self.key()
        if not (folder / "language.json").is_file():
            with atomic_dir(folder) as tmp:
                self._write(tmp)
        info = json.loads((folder / "language.json").read_text())
        return CorpusFiles(
            files={split: [folder / f"{split}.txt"] for split in SPLITS},
            vocab_file=folder / "vocab.txt",
            metrics={"data/optimal_ppl": info["optimal_ppl"]},
        )

    def _write(self, out: Path, chunk_tokens: int | None = None) -> None:
        """The split files, ``vocab.txt`` and ``language.json`` in ``out``.

        ``chunk_tokens`` bounds memory for large corpora: a split of more tokens is sampled and
        written in chunks of about that many, each from its own seed (another sample than the one
        piece; ``None``, or a split that fits in one chunk, draws exactly as before).
        """
        lang = ClassMarkovLanguage(self.spec)
        names = np.array(lang.words, dtype=object)
        info = {"spec": asdict(self.spec), "entropy_rate_nats": lang.entropy_rate, "optimal_ppl": lang.optimal_ppl}
        for i, split in enumerate(SPLITS):
            seed, total = self.spec.seed * 1000 + i + 1, self.tokens[split]
            if chunk_tokens is None or total <= chunk_tokens:
                pieces = [(total, seed)]
            else:
                starts = range(0, total, chunk_tokens)
                pieces = [(min(chunk_tokens, total - a), int(np.random.SeedSequence([seed, j]).generate_state(1)[0]))
                          for j, a in enumerate(starts)]
            n_tokens, log_prob = 0, 0.0
            with open(out / f"{split}.txt", "w", encoding="utf-8") as f:
                for n, piece_seed in pieces:
                    sentences = lang.sample(n, seed=piece_seed)
                    f.write("\n".join(" ".join(names[s]) for s in sentences) + "\n")
                    n_tokens += sum(len(s) + 1 for s in sentences)
                    log_prob += lang.log_prob(sentences)
                    del sentences
            info[f"{split}_tokens"] = n_tokens
            info[f"{split}_oracle_ppl"] = math.exp(-log_prob / n_tokens)
        unigram = lang.unigram()
        order = sorted(unigram, key=lambda w: (-unigram[w], w)) + [UNK]
        (out / "vocab.txt").write_text("\n".join(order) + "\n", encoding="utf-8")
        # written last: marks the folder complete
        (out / "language.json").write_text(json.dumps(info, indent=2))
