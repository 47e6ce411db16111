"""The corpus registry: every corpus the LightRNN and SRU papers use, as data, in one place.

For each corpus: the file layouts accepted in its folder (official names first, then common
alternatives, then the paths inside its archive, so that extracting the archive into the folder
just works), where to download it, the archive format, its sha256 where one is published, and
the preprocessing the papers used. A split may be a glob (One Billion Word's training shards).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Layout = dict  # split -> file name (relative to data.root), or a glob of several files


def _flat(prefix: str = "", suffix: str = ".txt", names=("train", "valid", "test")) -> Layout:
    return {split: f"{prefix}{name}{suffix}" for split, name in zip(("train", "valid", "test"), names)}


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    title: str
    folder: str  # default folder name under paths.data_dir
    layouts: tuple[Layout, ...]
    url: str | None = None
    archive: str | None = None  # "tar.gz", "tar.bz2", "zip" or None (plain file)
    sha256: str | None = None  # of the download, where the publisher gives one
    members: str | None = None  # extract only archive members under this prefix
    min_count: int = 1  # words seen fewer times in training become <unk>
    preprocessing: str = ""
    published: dict = field(default_factory=dict)  # counts from the papers (tokens with <eos>, types)


def _aclw(lang: str, code: str, downloadable: bool = True) -> CorpusSpec:
    inner = f"en-{code}/1m-mono/"
    return CorpusSpec(
        name=f"aclw_{lang}",
        title=f"ACLW {lang.capitalize()} (Botha & Blunsom 2014)",
        folder=f"aclw-{code}",
        layouts=(
            _flat(),
            _flat(suffix=".in", names=("train", "test", "finaltest")),  # the release's own names
            _flat(prefix=inner, suffix=".in", names=("train", "test", "finaltest")),
        ),
        url="https://github.com/bothameister/bothameister.github.io/raw/master/icml14-data.tar.bz2" if downloadable else None,
        archive="tar.bz2" if downloadable else None,
        members=inner if downloadable else None,
        preprocessing=(
            "one sentence per line, lowercased, tokenized; <unk> already in the text (closed vocabulary); "
            "<eos> appended per line. The release names the validation file test.in and the test file "
            "finaltest.in. The archive holds the small (1m-mono, DATA-S) sets; the LightRNN paper's large "
            "sets (e.g. French: ~56M tokens, 136,912 words) use the same layout: put train.txt, valid.txt, "
            "test.txt in data.root."
        ),
    )


CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        CorpusSpec(
            name="ptb",
            title="Penn Treebank (Mikolov's language-modelling version)",
            folder="ptb",
            layouts=(
                _flat(prefix="ptb."),
                _flat(),
                _flat(prefix="simple-examples/data/ptb."),
            ),
            url="http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
            archive="tar.gz",
            members="simple-examples/data/ptb.",
            preprocessing="lowercased, no punctuation, numbers as N, 10k vocabulary with <unk> in the text; <eos> per line",
            published={"tokens": {"train": 929_589, "valid": 73_760, "test": 82_430}, "types": 10_000},
        ),
        CorpusSpec(
            name="wikitext2",
            title="WikiText-2 (Merity et al. 2016), word level",
            folder="wikitext-2",
            layouts=(
                _flat(prefix="wiki.", suffix=".tokens"),
                _flat(),
                _flat(prefix="wikitext-2/wiki.", suffix=".tokens"),
            ),
            url="https://wikitext.smerity.com/wikitext-2-v1.zip",
            archive="zip",
            preprocessing="case and punctuation kept, <unk> in the text; lines are paragraphs; <eos> per line, blank lines included",
            published={"tokens": {"train": 2_088_628, "valid": 217_646, "test": 245_569}, "types": 33_278},
        ),
        CorpusSpec(
            name="wikitext103",
            title="WikiText-103 (Merity et al. 2016), word level",
            folder="wikitext-103",
            layouts=(
                _flat(prefix="wiki.", suffix=".tokens"),
                _flat(),
                _flat(prefix="wikitext-103/wiki.", suffix=".tokens"),
            ),
            url="https://wikitext.smerity.com/wikitext-103-v1.zip",
            archive="zip",
            preprocessing="as WikiText-2; words seen fewer than 3 times are already <unk>; <eos> per line",
            published={"tokens": {"train": 103_227_021, "valid": 217_646, "test": 245_569}, "types": 267_735},
        ),
        _aclw("french", "fr"),
        _aclw("spanish", "es"),
        _aclw("german", "de"),
        _aclw("czech", "cs"),
        _aclw("russian", "ru"),
        _aclw("english", "en", downloadable=False),
        CorpusSpec(
            name="one_billion_word",
            title="One Billion Word benchmark (Chelba et al. 2013)",
            folder="one-billion-word",
            layouts=(
                _flat(),
                {
                    "train": "training-monolingual.tokenized.shuffled/news.en-*-of-00100",
                    "valid": "heldout-monolingual.tokenized.shuffled/news.en.heldout-00001-of-00050",
                    "test": "heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050",
                },
                {
                    "train": "1-billion-word-language-modeling-benchmark-r13output/training-monolingual.tokenized.shuffled/news.en-*-of-00100",
                    "valid": "1-billion-word-language-modeling-benchmark-r13output/heldout-monolingual.tokenized.shuffled/news.en.heldout-00001-of-00050",
                    "test": "1-billion-word-language-modeling-benchmark-r13output/heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050",
                },
            ),
            url="http://www.statmt.org/lm-benchmark/1-billion-word-language-modeling-benchmark-r13output.tar.gz",
            archive="tar.gz",
            min_count=3,
            preprocessing=(
                "the 99 standard training shards; heldout shard 0 is the test set (heldout shard 1 serves "
                "as validation); words seen fewer than 3 times in training become <unk>; <eos> per sentence "
                "(line). The official vocabulary has 793,471 entries counting <S>, </S> and <UNK>; ours has "
                "the same words plus <eos> and <unk>."
            ),
            published={"types": 793_471, "train_tokens_approx": 800_000_000},
        ),
        CorpusSpec(
            name="text_dir",
            title="a folder of your own",
            folder="text_dir",
            layouts=(_flat(),),
            preprocessing="one sentence per line, tokens separated by spaces; <eos> per line",
        ),
    )
}


def corpus_spec(name: str) -> CorpusSpec:
    if name not in CORPORA:
        raise KeyError(f"unknown corpus '{name}'; known: {', '.join(sorted(CORPORA))}")
    return CORPORA[name]
