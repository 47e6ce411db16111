"""A One-Billion-Word-shaped corpus from the synthetic class-Markov language, for rehearsals.

    python benchmarks/onebillion_corpus.py [--tokens 50_000_000] [--root .cache/onebillion_rehearsal/corpus]

Writes ``train.txt valid.txt test.txt`` (one sentence per line, space-separated words) shaped like
One Billion Word: about 793,000 word types seen at least 3 times in training (the vocabulary the
pipeline keeps with ``min_count=3``), Zipf-distributed counts whose most frequent word is a few %
of all tokens, sentences of ~25 words, valid and test of ~200 K tokens each. Unlike the real
corpus the language is known: every word's class and the best reachable perplexity
(``language.json``, beside the language's own lexicon ``vocab.txt``, which the pipeline ignores).

The shape at 50 M training tokens: 10 classes of 132,000 words, Zipf exponent 1.1 inside a class
(the expected number of words seen >= 3 times, a sum of Poisson tails over the words, is 793 K;
seed 0 realises 793,681 with <eos> and <unk>, against 793,471 for One Billion Word; the top word
is 2.6 % of the tokens, <eos> 3.8 %). Splits are sampled and written in chunks, so memory stays
at about 1 GB whatever ``--tokens`` (0.94 GB peak, ~400 K tokens/s on 2 cores). Build the token
cache and train on it with

    python train.py data=text_dir data.root=<root> data.min_count=3 ...
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from lrnn_lightning.atomic import atomic_dir
from lrnn_lightning.data.cache import count_tokens
from lrnn_lightning.data.synthetic import LanguageSpec, SyntheticCorpus
from lrnn_lightning.data.vocab import EOS, Vocabulary

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = ROOT / ".cache" / "onebillion_rehearsal" / "corpus"
MIN_COUNT = 3  # One Billion Word's <unk> threshold
HELDOUT_TOKENS = 200_000
CHUNK_TOKENS = 2_000_000  # tokens sampled and written at a time: bounds memory


def onebillion_spec(seed: int = 0) -> LanguageSpec:
    """The language behind the rehearsal corpus (tuned for ~793 K types at min_count 3 in 50 M tokens)."""
    return LanguageSpec(num_words=1_320_000, num_classes=10, successors=8, zipf_exponent=1.1,
                        concentration=0.5, mean_sentence_length=25.0, seed=seed)


def write_corpus(root: Path, tokens: int = 50_000_000, seed: int = 0) -> dict:
    """Write the corpus into ``root`` (which must not exist yet, or be empty) and describe it.

    Returns the spec, the token count of each split (``<eos>`` included), the vocabulary the
    pipeline builds at ``min_count=3`` (words + ``<eos>`` + ``<unk>``), the top word's share of the
    training tokens, the generation speed and the written paths.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty: remove it or choose another --root")
    if root.exists():
        root.rmdir()
    spec = onebillion_spec(seed)
    corpus = SyntheticCorpus(train_tokens=tokens, valid_tokens=HELDOUT_TOKENS, test_tokens=HELDOUT_TOKENS, **asdict(spec))
    t0 = time.perf_counter()
    with atomic_dir(root) as tmp:
        corpus._write(tmp, chunk_tokens=CHUNK_TOKENS)
    seconds = time.perf_counter() - t0
    info = json.loads((root / "language.json").read_text())
    sizes = {split: info[f"{split}_tokens"] for split in ("train", "valid", "test")}

    counts, total = count_tokens([root / "train.txt"])
    vocab = Vocabulary.from_counts(counts, MIN_COUNT)
    top_word, top_count = max(((w, c) for w, c in counts.items() if w != EOS), key=lambda wc: wc[1])
    return {
        "spec": asdict(spec),
        "sizes": sizes,
        "train_types": len(counts) - 1,  # words seen at least once (without <eos>)
        "vocab_size_min_count_3": len(vocab),  # words seen >= 3 times + <eos> + <unk>
        "top_word": top_word,
        "top_word_share": top_count / total,
        "eos_share": counts[EOS] / total,
        "optimal_ppl": info["optimal_ppl"],
        "train_oracle_ppl": info["train_oracle_ppl"],
        "generate_seconds": round(seconds, 1),
        "generate_tokens_per_sec": round(sum(sizes.values()) / seconds),
        "paths": {name: str(root / name) for name in ("train.txt", "valid.txt", "test.txt", "language.json", "vocab.txt")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=50_000_000, help="training tokens (valid and test: 200 K each)")
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder to write (must not exist or be empty)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(json.dumps(write_corpus(args.root, args.tokens, args.seed), indent=2))


if __name__ == "__main__":
    main()
