"""The context-clustered initial table reads the whole stream: counts from all of it, predecessor
pairs from blocks spread over all of it (never a prefix)."""

import numpy as np
import pytest

from lrnn_lightning.allocation import context
from lrnn_lightning.allocation.context import context_embedding, context_table, pair_blocks, word_counts
from lrnn_lightning.data.synthetic import ClassMarkovLanguage, LanguageSpec


def test_blocks_cover_the_whole_stream_evenly():
    starts, length = pair_blocks(1_000_003, 10_000, blocks=100)
    assert len(starts) == 100 and length == 100
    assert starts[0] == 0 and starts[-1] + length == 1_000_003  # from the first token to the last
    gaps = np.diff(starts)
    assert gaps.min() >= length and gaps.max() - gaps.min() <= 1  # disjoint, evenly spaced
    assert len(starts) * length <= 10_000
    # at or below max_tokens: everything, as one block
    for n in (10_000, 17):
        s, b = pair_blocks(n, 10_000)
        assert s.tolist() == [0] and b == n
    # more blocks asked than the budget allows: blocks of at least one pair
    s, b = pair_blocks(1000, 10, blocks=100)
    assert b >= 2 and len(s) * b <= 10 and s[-1] + b == 1000


def _two_halves(seed: int = 0) -> tuple[np.ndarray, ClassMarkovLanguage, int]:
    """A stream whose first half is one language over ids [0, n) and whose second half another
    over ids [n, 2n): a prefix of the first half never sees the second language's words."""
    lang = ClassMarkovLanguage(LanguageSpec(num_words=120, num_classes=8, successors=3, seed=seed))
    n = lang.spec.num_words + 1  # words and the sentence end
    a = np.concatenate([np.append(s, n - 1) for s in lang.sample(40_000, seed=1)])
    b = np.concatenate([np.append(s, n - 1) for s in lang.sample(40_000, seed=2)]) + n
    return np.concatenate([a, b]).astype(np.int32), lang, n


def test_counts_and_pairs_come_from_the_whole_stream(tmp_path):
    tokens, _, n = _two_halves()
    np.save(tmp_path / "train.npy", tokens)
    ids = np.load(tmp_path / "train.npy", mmap_mode="r")  # as the data module hands it over
    V = 2 * n
    E, counts = context_embedding(ids, V, max_tokens=len(ids) // 4, chunk=7_000)
    np.testing.assert_array_equal(counts, np.bincount(tokens, minlength=V))
    np.testing.assert_array_equal(word_counts(ids, V, chunk=1234), counts)
    # the second half's words have predecessors in the sampled blocks, so context vectors (a
    # prefix of the first half gives them none): all but the rarest
    has_context = np.abs(E).sum(1) > 0
    second = np.arange(n, V)
    assert counts[second[has_context[second]]].sum() / counts[second].sum() > 0.99


def test_pairs_are_counted_inside_the_blocks_only():
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 50, 10_007).astype(np.int32)
    feature = rng.integers(0, 6, 50)
    starts, length = pair_blocks(len(tokens), 1000, blocks=7)
    M = context._pair_matrix(tokens, feature, 50, 6, starts, length, chunk=33)
    expected = np.zeros((50, 6))
    for s in starts:
        block = tokens[s:s + length]
        np.add.at(expected, (block[1:], feature[block[:-1]]), 1.0)
    np.testing.assert_array_equal(M.toarray(), expected)
    assert M.has_canonical_format and expected.sum() == len(starts) * (length - 1)


def test_at_most_max_tokens_uses_everything_and_more_samples():
    lang = ClassMarkovLanguage(LanguageSpec(num_words=200, num_classes=10, successors=3, seed=4))
    tokens = np.concatenate([np.append(s, 200) for s in lang.sample(30_000, seed=1)]).astype(np.int32)
    whole, _ = context_embedding(tokens, 201, max_tokens=len(tokens))
    same, _ = context_embedding(tokens, 201, max_tokens=10 ** 9, chunk=999)
    np.testing.assert_array_equal(whole, same)
    fewer, counts = context_embedding(tokens, 201, max_tokens=len(tokens) - 1)
    assert not np.array_equal(whole, fewer)
    np.testing.assert_array_equal(counts, np.bincount(tokens, minlength=201))


def test_distinct_rows_regroups_shared_embeddings_exactly():
    rng = np.random.default_rng(0)
    E = rng.standard_normal((1000, 7)).astype(np.float32)
    E[rng.integers(0, 1000, 600)] = E[rng.integers(0, 20, 600)]
    E[:50] = 0.0
    D, inverse = context._distinct_rows(E)
    assert np.array_equal(D[inverse].view(np.uint32), E.view(np.uint32))
    assert len(D) == len(np.unique(E, axis=0))


@pytest.mark.parametrize("first", [1, 4, 16])
def test_proposal_rounds_do_not_depend_on_how_many_candidates_come_first(monkeypatch, first):
    """Candidates found 4 at a time (then the rest for the words still unassigned) give the
    rows that 16 at once give, whatever is shared."""
    rng = np.random.default_rng(1)
    E = rng.standard_normal((3000, 5)).astype(np.float32)
    E[rng.integers(0, 3000, 1500)] = E[rng.integers(0, 30, 1500)]
    order = np.argsort(-rng.zipf(1.3, 3000), kind="stable")
    centroids = E[order[:55]] + 0.01

    def nearest(X, cents, m, exclude=None):  # exact and independent of a row's position
        allowed = np.flatnonzero(~exclude) if exclude is not None else np.arange(len(cents))
        d = ((X[:, None, :].astype(np.float64) - cents[allowed][None].astype(np.float64)) ** 2).sum(-1)
        return allowed[np.argsort(d, axis=1, kind="stable")[:, :min(m, len(allowed))]]

    monkeypatch.setattr(context, "_nearest_torch", nearest)
    monkeypatch.setattr(context, "FIRST_CANDIDATES", 16)
    expected = context._balanced_assign_parallel(E, centroids, order, 55, groups=(E, np.arange(len(E))))
    monkeypatch.setattr(context, "FIRST_CANDIDATES", first)
    row = context._balanced_assign_parallel(E, centroids, order, 55)
    np.testing.assert_array_equal(row, expected)
    assert np.bincount(row).max() <= 55


def test_sampler_binary_search_matches_the_full_comparison():
    """The synthetic sampler counts the cdf entries below u by a binary search: as the full row."""
    lang = ClassMarkovLanguage(LanguageSpec(num_words=5000, num_classes=7, successors=3, zipf_exponent=1.1, seed=2))
    rng = np.random.default_rng(0)
    state = rng.integers(0, lang.member_cdf.shape[0], 5000)
    u = rng.random(5000)
    u[::2] = np.minimum(lang.member_cdf[state[::2], rng.integers(0, lang.member_cdf.shape[1], 2500)], np.nextafter(1.0, 0))
    np.testing.assert_array_equal(lang._count_below(state, u), (u[:, None] > lang.member_cdf[state]).sum(1))


def test_pair_counts_do_not_depend_on_how_often_they_are_folded():
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 300, 50_000).astype(np.int32)
    feature = rng.integers(0, 40, 300)
    starts, length = pair_blocks(len(tokens), 30_000, blocks=13)
    once = context._pair_matrix(tokens, feature, 300, 40, starts, length, chunk=1000)
    often = context._pair_matrix(tokens, feature, 300, 40, starts, length, chunk=1000, fold=2500)
    for a, b in ((once.data, often.data), (once.indices, often.indices), (once.indptr, often.indptr)):
        np.testing.assert_array_equal(a, b)


# ---- the class-bigram refinement and realloc/row_purity ----------------------------------------------
def _class_language_stream(num_words=600, num_classes=20, tokens=40_000, seed=5):
    lang = ClassMarkovLanguage(LanguageSpec(num_words=num_words, num_classes=num_classes, successors=4, seed=seed))
    stream = np.concatenate([np.append(s, num_words) for s in lang.sample(tokens, seed=1)]).astype(np.int32)
    classes = np.append(lang.word_class - 1, -1)  # the sentence end (id num_words) has no class
    return stream, classes, num_words + 1


def test_row_purity_is_one_for_the_true_classes_and_low_for_a_random_table():
    from lrnn_lightning.allocation import row_purity, table_shape

    tokens, classes, V = _class_language_stream()
    counts = np.bincount(tokens, minlength=V)
    assert row_purity(np.where(classes >= 0, classes, 0), classes, counts) == 1.0
    # a class split over two rows is still pure; two classes sharing a row are not
    split = np.where(classes >= 0, 2 * classes + (np.arange(V) % 2), 0)
    assert row_purity(split, classes, counts) == 1.0
    merged = np.where(classes >= 0, classes // 2, 0)
    assert 0.5 < row_purity(merged, classes, counts) < 0.9
    R, C = table_shape(V)
    rand = np.random.default_rng(0).permutation(R * C)[:V] // C
    assert row_purity(rand, classes, counts) < 0.3  # ~ the chance that two tokens share a class (20 classes)
    # by hand: row 0 holds two words of class 0 (3 and 1 tokens) and one of class 1 (2 tokens), row 1
    # a word of class 1 (5 tokens) and one without a class; row 2 a word of class 1 (7 tokens)
    # and one of class 2 (1 token)
    expected = (3 * 1 / 3 + 1 * 3 / 5 + 2 * 0 / 4 + 7 * 0 / 1 + 1 * 0 / 7) / (3 + 1 + 2 + 7 + 1)
    got = row_purity([0, 0, 0, 1, 1, 2, 2], [0, 0, 1, 1, -1, 1, 2], [3, 1, 2, 5, 100, 7, 1])
    assert got == pytest.approx(expected)


def test_refinement_finds_the_classes_that_left_contexts_alone_miss():
    tokens, classes, V = _class_language_stream(num_words=2000, num_classes=40, tokens=60_000)
    from lrnn_lightning.allocation import row_purity, table_shape

    R, C = table_shape(V)
    counts = np.bincount(tokens, minlength=V)
    purity = {n: row_purity(context_table(tokens, V, R, C, refine=n) // C, classes, counts) for n in (0, 10)}
    assert purity[10] > 0.95 and purity[10] > purity[0] + 0.04, purity  # measured 0.907 -> 0.970


def test_assignment_by_candidates_respects_capacity_and_preference():
    rng = np.random.default_rng(0)
    V, R, cap = 500, 12, 45
    score = rng.standard_normal((V, R))
    score[:, 3] += 5.0  # everyone's favourite row: only the first cap words in order get it
    order = rng.permutation(V)

    def ranked(words, full):
        s = np.where(full[None, :], -np.inf, score[words])
        return np.argsort(-s, axis=1, kind="stable")[:, :4]

    row = context._assign_by_candidates(ranked, order, cap, R, V)
    assert (row >= 0).all() and np.bincount(row, minlength=R).max() <= cap
    assert set(np.flatnonzero(row == 3).tolist()) == set(order[:cap].tolist())
