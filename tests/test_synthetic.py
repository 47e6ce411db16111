import math
from collections import Counter

import numpy as np
import pytest

from lrnn_lightning.data import ClassMarkovLanguage, LanguageSpec, LMDataModule, SyntheticCorpus
from lrnn_lightning.data.synthetic import EOS_STATE, word_name


def test_default_language_is_large_sparse_and_a_proper_chain():
    lang = ClassMarkovLanguage(LanguageSpec())
    assert len(lang.words) >= 10_000 and len(set(lang.words)) == len(lang.words)
    P = lang.transition
    np.testing.assert_allclose(P.sum(1), 1.0)
    assert ((P > 0).sum(1) <= LanguageSpec().successors + 1).all()  # sparse rows
    np.testing.assert_allclose(lang.stationary @ P, lang.stationary, atol=1e-12)
    assert (lang.stationary > 0).all()
    assert 1 < lang.optimal_ppl < len(lang.words)


def test_same_seed_same_language_other_seed_other_language():
    a, b = ClassMarkovLanguage(LanguageSpec(seed=3)), ClassMarkovLanguage(LanguageSpec(seed=3))
    c = ClassMarkovLanguage(LanguageSpec(seed=4))
    assert a.entropy_rate == b.entropy_rate and (a.transition == b.transition).all()
    assert a.entropy_rate != c.entropy_rate
    sa, sb = a.sample(2000, seed=1), b.sample(2000, seed=1)
    assert all((x == y).all() for x, y in zip(sa, sb))


def test_word_names_are_unique_and_pronounceable():
    names = [word_name(i) for i in range(20_000)]
    assert len(set(names)) == len(names) and all(n.isalpha() for n in names)


def _conditional_entropy(pairs: Counter) -> float:
    """Plug-in H(Y | X) from joint counts of (x, y)."""
    n = sum(pairs.values())
    marg = Counter()
    for (x, _), c in pairs.items():
        marg[x] += c
    return -sum(c / n * math.log(c / marg[x]) for (x, _), c in pairs.items())


def _closed_form_entropy(lang: ClassMarkovLanguage) -> float:
    """``sum_i pi_i H(T_i) + sum_c pi_c H(E_c)`` from the chain's parameters, computed here: the
    stationary distribution by powers of the transition matrix, the emissions word by word."""
    T = lang.transition
    pi = np.full(len(T), 1.0 / len(T)) @ np.linalg.matrix_power(T, 4096)
    h_next = -sum(pi[i] * sum(p * math.log(p) for p in T[i] if p > 0) for i in range(len(T)))
    h_word = -sum(pi[lang.word_class[w]] * p * math.log(p) for w, p in enumerate(lang.word_prob_in_class))
    return h_next + h_word


def test_empirical_entropy_of_the_written_corpus_matches_the_closed_form(tmp_path):
    """The files, read back through the pipeline, have the entropy rate the formula predicts, to
    well under the 1.8% in perplexity that separates the README's default runs (1.033x, 1.051x)."""
    spec = dict(num_words=400, num_classes=20, successors=4, mean_sentence_length=12, seed=7)
    corpus = SyntheticCorpus(train_tokens=400_000, valid_tokens=1000, test_tokens=1000, **spec)
    dm = LMDataModule(corpus, cache_dir=str(tmp_path))
    dm.prepare_data()
    lang = ClassMarkovLanguage(LanguageSpec(**spec))
    ids = np.asarray(dm.ids["train"])
    words = dm.vocab.words
    index = {w: i for i, w in enumerate(lang.words)}
    # class of each token (<eos> is the sentence-end state), read from the text
    cls = np.array([EOS_STATE if words[t] == "<eos>" else lang.word_class[index[words[t]]] for t in ids])
    prev = np.concatenate([[EOS_STATE], cls[:-1]])
    # H(w_t | w_{t-1}) = H(c_t | c_{t-1}) + H(w_t | c_t), estimated from counts of the stream
    h = _conditional_entropy(Counter(zip(prev.tolist(), cls.tolist()))) + _conditional_entropy(
        Counter(zip(cls.tolist(), ids.tolist()))
    )
    optimal = dm.metrics["data/optimal_ppl"]
    # the plug-in estimate of 400 K tokens is within 0.11% of it; sampling noise over seeds, 0.2%
    assert math.exp(h) == pytest.approx(optimal, rel=0.005)
    assert optimal == pytest.approx(math.exp(_closed_form_entropy(lang)), rel=1e-9)
    # and the exact average log-loss of the true model on a fresh sample converges to it too
    sentences = lang.sample(1_000_000, seed=11)
    n = sum(len(s) + 1 for s in sentences)
    assert math.exp(-lang.log_prob(sentences) / n) == pytest.approx(optimal, rel=0.006)


def test_wrong_language_is_caught_by_the_entropy_check():
    """The check above has teeth: a sample from another language does not match."""
    lang = ClassMarkovLanguage(LanguageSpec(num_words=400, num_classes=20, successors=4, seed=7))
    other = ClassMarkovLanguage(LanguageSpec(num_words=400, num_classes=20, successors=4, seed=8))
    sentences = other.sample(50_000, seed=1)
    n = sum(len(s) + 1 for s in sentences)
    assert -lang.log_prob(sentences) / n > lang.entropy_rate * 1.1


def test_corpus_files_sizes_and_vocabulary(tmp_path):
    corpus = SyntheticCorpus(train_tokens=20_000, valid_tokens=3000, test_tokens=2000, num_words=300, num_classes=10, seed=1)
    files = corpus.prepare(tmp_path)
    assert set(files.files) == {"train", "valid", "test"}
    sizes = {s: sum(len(l.split()) + 1 for l in p[0].read_text().splitlines()) for s, p in files.files.items()}
    for split, target in (("train", 20_000), ("valid", 3000), ("test", 2000)):
        assert abs(sizes[split] - target) / target < 0.15
    vocab = files.vocab_file.read_text().split()
    assert len(vocab) == 300 + 2 and vocab[-1] == "<unk>"
    # same parameters: the cached files are reused, not rewritten
    mtime = files.files["train"][0].stat().st_mtime_ns
    assert corpus.prepare(tmp_path).files["train"][0].stat().st_mtime_ns == mtime
