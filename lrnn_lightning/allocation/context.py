"""A warm start for the word table: words that follow similar contexts share a row.

The row softmax is easiest to learn when a row is a class of words predicted in the same
contexts (a class-based softmax). Before any training we can estimate that from the corpus: each
word is described by the distribution of the word before it, embedded by a truncated SVD of the
(Hellinger-transformed) predecessor counts, and the words are clustered into R rows of at most C
words by a capacity-constrained k-means seeded with the R most frequent words (so frequent words
start in different rows). Within a row, the i-th most frequent word takes column i. On a
class-Markov language this recovers the classes; on real text it is a cheap Brown-like
clustering. The per-epoch reallocation then refines it from the model's own losses.

Word frequencies come from the whole training stream (a chunked count). The predecessor pairs
come from at most ``max_tokens`` tokens: the whole stream when it is no longer, otherwise many
evenly spaced contiguous blocks from its first token to its last (never a prefix: a corpus whose
files are ordered by topic or date is sampled throughout).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import LinearOperator, eigsh, svds


def word_counts(tokens: np.ndarray, vocab_size: int, chunk: int = 5_000_000) -> np.ndarray:
    """How often each id occurs in the whole stream, read ``chunk`` tokens at a time."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        counts += np.bincount(np.asarray(tokens[start:start + chunk], dtype=np.int64), minlength=vocab_size)
    return counts


def pair_blocks(num_tokens: int, max_tokens: int, blocks: int = 1000) -> tuple[np.ndarray, int]:
    """``(starts, length)`` of the contiguous blocks whose successive pairs are counted.

    The whole stream (one block at 0) when it has at most ``max_tokens`` tokens; otherwise
    ``blocks`` blocks of ``max_tokens // blocks`` tokens, evenly spaced so that the first starts
    at the first token and the last ends at the last one. A block of ``length`` tokens gives
    ``length - 1`` pairs.
    """
    if num_tokens <= max_tokens:
        return np.zeros(1, dtype=np.int64), int(num_tokens)
    k = max(1, min(blocks, max_tokens // 2))  # blocks of at least 2 tokens (one pair)
    length = max_tokens // k
    if k == 1:
        return np.array([(num_tokens - length) // 2], dtype=np.int64), length
    return np.arange(k, dtype=np.int64) * (num_tokens - length) // (k - 1), length


def _pair_matrix(tokens: np.ndarray, feature: np.ndarray, vocab_size: int, width: int,
                 starts: np.ndarray, length: int, chunk: int, fold: int = 1 << 24) -> sp.csr_matrix:
    """Counts ``M[next, feature[prev]]`` over the pairs inside the blocks, as a canonical CSR
    (sorted column indices, no duplicates: the same arrays as summing per-chunk matrices).

    Each pair is a code ``next * width + feature[prev]``; codes are sorted and counted (one
    ``np.unique``, not a sum of sparse matrices), folding the pending ones into the distinct
    cells counted so far every ``fold`` codes, so memory is bounded by the distinct pairs."""
    cells, n = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    pending, size = [], 0

    def folded():
        new, times = np.unique(np.concatenate(pending), return_counts=True)
        if not len(cells):
            return new, times.astype(np.float64)
        merged, weights = np.concatenate([cells, new]), np.concatenate([n, times])
        by_code = np.argsort(merged, kind="stable")
        merged, weights = merged[by_code], weights[by_code]
        first = np.flatnonzero(np.concatenate([[True], merged[1:] != merged[:-1]]))
        return merged[first], np.add.reduceat(weights, first)  # exact integer sums

    for s in starts.tolist():
        for a in range(s, s + length - 1, chunk):
            block = np.asarray(tokens[a:min(s + length, a + chunk + 1)], dtype=np.int64)
            pending.append(block[1:] * width + feature[block[:-1]])
            size += len(pending[-1])
            if size >= fold:
                (cells, n), pending, size = folded(), [], 0
    if pending:
        cells, n = folded()
    rows, cols = np.divmod(cells, width)
    indptr = np.zeros(vocab_size + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=vocab_size), out=indptr[1:])
    return sp.csr_matrix((n, cols, indptr), shape=(vocab_size, width))


def _svd_embedding(M: sp.csr_matrix, k: int, seed: int) -> np.ndarray:
    """``U * S`` of the rank-``k`` truncated SVD of M, float32.

    Up to ``SEQUENTIAL_MAX_WORDS`` rows (or a wide M) this is ``scipy.sparse.linalg.svds`` itself.
    Above, the same ARPACK run on ``M^T M`` but without svds's closing dense SVD of the tall
    ``M @ V`` (23 s at 793,471 words): that matrix is rotated onto its principal axes by the
    eigenvectors of its ``k x k`` Gram matrix instead. Same embedding up to the sign of each
    column and rounding, and distances do not see signs.
    """
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(min(M.shape))
    if M.shape[0] <= SEQUENTIAL_MAX_WORDS or M.shape[0] < M.shape[1]:
        u, s, _ = svds(M, k=k, v0=v0, random_state=seed)
        return (u * s).astype(np.float32)
    Mt = M.T.tocsr()
    gram = LinearOperator((M.shape[1], M.shape[1]), matvec=lambda x: Mt @ (M @ x), dtype=M.dtype)
    _, vecs = eigsh(gram, k=k, tol=0, which="LM", v0=v0)
    vecs, _ = np.linalg.qr(vecs)
    Av = torch.from_numpy(M @ vecs)  # [V, k] float64; the dense products in torch (multithreaded)
    _, rot = torch.linalg.eigh(Av.T @ Av)
    rot = rot.flip(1)  # columns by decreasing singular value
    E = torch.empty(Av.shape, dtype=torch.float32)
    for start in range(0, len(Av), 65536):  # no second V x k float64 matrix
        E[start:start + 65536] = Av[start:start + 65536] @ rot
    return E.numpy()


def context_embedding(tokens: np.ndarray, vocab_size: int, features: int = 2000, dims: int = 100,
                      max_tokens: int = 20_000_000, chunk: int = 5_000_000, seed: int = 0,
                      blocks: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """``(E[V, dims], counts[V])``: each word's left-context vector and its frequency.

    ``counts`` is over the whole stream. Predecessor features are the ``features`` most frequent
    words plus one bucket for the rest, counted over at most ``max_tokens`` tokens in ``blocks``
    evenly spaced blocks (:func:`pair_blocks`); ``chunk`` tokens are read at a time.
    """
    features = min(features, vocab_size)
    counts = word_counts(tokens, vocab_size, chunk)
    # a predecessor feature per frequent word (by count, whatever the id order), one bucket for the rest
    feature = np.full(vocab_size, features, dtype=np.int64)
    feature[np.argsort(-counts, kind="stable")[:features]] = np.arange(features)
    starts, length = pair_blocks(len(tokens), max_tokens, blocks)
    M = _pair_matrix(tokens, feature, vocab_size, features + 1, starts, length, chunk)
    rows = np.asarray(M.sum(1)).ravel()
    M = sp.diags(1.0 / np.maximum(rows, 1.0)) @ M
    M.data = np.sqrt(M.data)
    k = max(1, min(dims, min(M.shape) - 1))
    return _svd_embedding(M, k, seed), counts


def _nearest(E: np.ndarray, centroids: np.ndarray, m: int, exclude: np.ndarray | None = None,
             chunk: int = 65536) -> np.ndarray:
    """The ``m`` nearest centroids of every row of E, nearest first (``exclude``: rows to skip)."""
    allowed = np.arange(len(centroids)) if exclude is None else np.flatnonzero(~exclude)
    cents = centroids[allowed]
    m = min(m, len(cents))
    c2 = (cents * cents).sum(1)
    out = np.empty((len(E), m), dtype=np.int64)
    for start in range(0, len(E), chunk):
        d = c2[None, :] - 2.0 * (E[start:start + chunk] @ cents.T)
        part = np.argpartition(d, m - 1, axis=1)[:, :m] if m < d.shape[1] else np.tile(np.arange(m), (len(d), 1))
        order = np.take_along_axis(d, part, 1).argsort(1)
        out[start:start + chunk] = allowed[np.take_along_axis(part, order, 1)]
    return out


def _nearest_torch(E: np.ndarray, centroids: np.ndarray, m: int, exclude: np.ndarray | None = None,
                   chunk: int = 16384) -> np.ndarray:
    """:func:`_nearest` by a torch matmul and ``torch.topk`` (multithreaded; several times
    faster than ``argpartition``). Ties and float rounding may order candidates differently."""
    allowed = np.arange(len(centroids)) if exclude is None else np.flatnonzero(~exclude)
    cents = torch.from_numpy(np.ascontiguousarray(centroids[allowed], dtype=np.float32))
    m = min(m, len(cents))
    c2 = (cents * cents).sum(1)[None, :]
    Et = torch.from_numpy(np.ascontiguousarray(E, dtype=np.float32))
    out = torch.empty((len(E), m), dtype=torch.int64)
    with torch.inference_mode():
        for start in range(0, len(E), chunk):
            d = torch.addmm(c2, Et[start:start + chunk], cents.T, alpha=-2.0)
            out[start:start + chunk] = torch.topk(d, m, dim=1, largest=False, sorted=True).indices
    return allowed[out.numpy()]


def _balanced_assign_parallel(E: np.ndarray, centroids: np.ndarray, order: np.ndarray, capacity: int, m: int = 16,
                              groups: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Rows of at most ``capacity`` words: every unassigned word proposes to its next-nearest row
    and each row keeps its most frequent proposers while it has room (``order``: most frequent
    first); words left over propose again among the rows that still have room. Vectorized.

    Words that share an embedding share their candidate rows, found once (``groups``, the
    :func:`_distinct_rows` of E, computed here when not given): on the 793,681-word rehearsal
    corpus 375,741 distinct vectors, since words seen after a single sampled predecessor feature,
    or never, share theirs."""
    R, V = len(centroids), len(E)
    distinct, inverse = groups if groups is not None else _distinct_rows(E)
    key = np.int16 if R <= np.iinfo(np.int16).max else np.int64  # 16 bits: a radix sort
    left = np.full(R, capacity, dtype=np.int64)
    row = np.full(V, -1, dtype=np.int64)
    todo = order.copy()  # in order of priority, so a stable sort by row ranks each row's proposers
    while len(todo):
        uniq, back = np.unique(inverse[todo], return_inverse=True)
        full = left == 0
        width = min(m, int((~full).sum()))
        # most words settle within their first few candidates: find 4, the rest only when needed
        cand = _nearest_torch(distinct[uniq], centroids, min(width, FIRST_CANDIDATES), exclude=full).astype(key)
        pending = np.arange(len(todo))  # positions in todo of the words still unassigned, in order
        for j in range(width):
            if j == cand.shape[1]:
                need = np.unique(back[pending])
                more = np.empty((len(uniq), width), dtype=key)
                more[:, :j] = cand
                more[need] = _nearest_torch(distinct[uniq[need]], centroids, width, exclude=full)
                cand = more
            want = cand[back[pending], j]
            accepted = _accept_in_order(want, left)
            row[todo[pending[accepted]]] = want[accepted]
            pending = pending[~accepted]
            if not len(pending):
                break
        todo = todo[pending]
    return row


def _distinct_rows(E: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """``(D, inverse)`` with ``E == D[inverse]`` bitwise: the distinct rows of E.

    Rows are grouped by a 64-bit hash of their bits and the grouping is checked; on a collision
    (never seen) the exact, slower grouping of whole rows is used."""
    bits = np.ascontiguousarray(E).view(np.uint32).reshape(len(E), -1)
    mult = np.random.default_rng(0).integers(1, 2**63, size=bits.shape[1], dtype=np.uint64) | np.uint64(1)
    h = np.empty(len(E), dtype=np.uint64)
    for a in range(0, len(E), chunk):
        h[a:a + chunk] = (bits[a:a + chunk].astype(np.uint64) * mult).sum(1)  # wraps: a hash
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if all(np.array_equal(bits[a:a + chunk], bits[first[inverse[a:a + chunk]]]) for a in range(0, len(E), chunk)):
        return E[first], inverse
    keys = bits.view(np.dtype((np.void, bits.itemsize * bits.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return E[first], inverse.ravel()


def _balanced_assign_sequential(E: np.ndarray, centroids: np.ndarray, order: np.ndarray, capacity: int, m: int = 16) -> np.ndarray:
    """Words in ``order`` (most frequent first) take, one by one, their nearest row with room left."""
    R = len(centroids)
    cand = _nearest(E, centroids, m)
    left = np.full(R, capacity, dtype=np.int64)
    row = np.full(len(E), -1, dtype=np.int64)
    spill = []
    for w in order:
        for r in cand[w]:
            if left[r] > 0:
                row[w] = r
                left[r] -= 1
                break
        else:
            spill.append(w)
    if spill:  # rare: every candidate full; take the nearest row that still has room
        for w in spill:
            free = np.flatnonzero(left > 0)
            d = ((centroids[free] - E[w]) ** 2).sum(1)
            r = free[int(d.argmin())]
            row[w] = r
            left[r] -= 1
    return row


# candidate rows found first by the proposal rounds (torch.topk of 4 is 4x cheaper than of 16)
FIRST_CANDIDATES = 4

# past this many words the one-word-at-a-time assignment is slow in Python (37 s at V = 100,000
# against 12.5 s for the proposal rounds, 535 s against 222 s at V = 793,471); the SVD and the
# centroid sums switch to their faster forms at the same size (same results up to rounding)
SEQUENTIAL_MAX_WORDS = 50_000


def _balanced_assign(E: np.ndarray, centroids: np.ndarray, order: np.ndarray, capacity: int,
                     groups: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    if len(E) <= SEQUENTIAL_MAX_WORDS:
        return _balanced_assign_sequential(E, centroids, order, capacity)
    return _balanced_assign_parallel(E, centroids, order, capacity, groups=groups)


def _centroids(E: np.ndarray, row: np.ndarray, weight: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sums of each row's embeddings (float64) and each row's weight."""
    mass = np.bincount(row, weights=weight, minlength=rows)
    if len(E) <= SEQUENTIAL_MAX_WORDS:
        sums = np.zeros((rows, E.shape[1]), dtype=np.float64)
        np.add.at(sums, row, E * weight[:, None])
        return sums, mass
    # the same sums up to float32 rounding (~1e-6 relative; the centroids are float32 anyway) in
    # one sparse product: 0.14 s against 1.9 s for add.at at 793,471 words, no V x dims float64 copy
    S = torch.sparse_coo_tensor(torch.from_numpy(np.stack([row, np.arange(len(E))])),
                                torch.from_numpy(weight.astype(np.float32)), (rows, len(E)), check_invariants=False)
    with torch.inference_mode():
        sums = torch.sparse.mm(S, torch.from_numpy(np.ascontiguousarray(E, dtype=np.float32)))
    return sums.numpy().astype(np.float64), mass


def bigram_counts(tokens: np.ndarray, vocab_size: int, max_tokens: int = 20_000_000, chunk: int = 5_000_000,
                  blocks: int = 1000) -> sp.csr_matrix:
    """``B[prev, next]``: how often ``next`` follows ``prev`` inside the blocks of :func:`pair_blocks`."""
    starts, length = pair_blocks(len(tokens), max_tokens, blocks)
    ident = np.arange(vocab_size, dtype=np.int64)
    return _pair_matrix(tokens, ident, vocab_size, vocab_size, starts, length, chunk).T.tocsr()


def _one_hot(row: np.ndarray, rows: int) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(row)), (np.arange(len(row)), row)), shape=(len(row), rows))


def _accept_in_order(want: np.ndarray, left: np.ndarray) -> np.ndarray:
    """One proposal step: the i-th pending word (in priority order) asks for row ``want[i]``; every
    row accepts its earliest askers while it has room. Returns the accepted mask and takes the
    accepted words off ``left`` (each row's room, updated in place). ``want`` may be a narrow
    integer type: numpy sorts 16-bit keys by radix."""
    by_row = np.argsort(want, kind="stable")
    ranked = want[by_row].astype(np.int64)
    first = np.concatenate([[0], np.cumsum(np.bincount(ranked, minlength=len(left)))[:-1]])
    accepted = np.empty(len(want), dtype=bool)
    accepted[by_row] = (np.arange(len(ranked)) - first[ranked]) < left[ranked]
    left -= np.bincount(want[accepted].astype(np.int64), minlength=len(left))
    return accepted


def _assign_by_candidates(candidates, order: np.ndarray, capacity: int, rows: int, vocab_size: int) -> np.ndarray:
    """Rows of at most ``capacity`` words by proposal rounds: every unassigned word proposes to its
    next preferred row and each row keeps its earliest proposers in ``order`` while it has room;
    words rejected by all their candidates ask ``candidates(words, full)`` again among the rows
    with room (each such word was turned away by rows now full, so every pass fills a row)."""
    left = np.full(rows, capacity, dtype=np.int64)
    row = np.full(vocab_size, -1, dtype=np.int64)
    todo = order.copy()
    while len(todo):
        cand = candidates(todo, left == 0)
        pending = np.arange(len(todo))
        for j in range(cand.shape[1]):
            want = cand[pending, j]
            accepted = _accept_in_order(want, left)
            row[todo[pending[accepted]]] = want[accepted]
            pending = pending[~accepted]
            if not len(pending):
                break
        todo = todo[pending]
    return row


def refine_rows(bigrams: sp.csr_matrix, row: np.ndarray, counts: np.ndarray, rows: int, capacity: int,
                iterations: int = 10, smoothing: float = 0.5, candidates: int = 16,
                chunk: int = 16384) -> np.ndarray:
    """Improve a row assignment as a class-bigram model (the exchange algorithm's objective).

    Rows are word classes; word ``w`` placed in row ``k`` scores the log-likelihood of its
    neighbours' rows: ``sum_j n(j -> w) log P(prev row j | row k) + n(w -> j) log P(next row j | row k)``
    (with ``P(w | k)`` this is exactly the class-bigram model's log-likelihood, up to terms that do
    not depend on ``k``). Every iteration re-estimates the row-to-row transitions from the current
    rows and moves all words at once to their best row with room, the most frequent first; it
    stops at a fixed point. ``smoothing``: pseudo-counts spread by the rows' frequencies.
    """
    V = len(row)
    order = np.argsort(-counts, kind="stable")
    Bt = bigrams.T.tocsr()
    for _ in range(max(0, iterations)):
        S = _one_hot(row, rows)
        left = (Bt @ S).tocsr()  # left[w, j]: tokens of row j right before w
        right = (bigrams @ S).tocsr()  # right[w, j]: tokens of row j right after w
        N = np.asarray((S.T @ right).todense())  # N[k, j]: row k followed by row j
        prior = (N.sum(0) + N.sum(1)) / max(2.0 * N.sum(), 1.0)
        prev = N.T + smoothing * prior[None, :]
        nxt = N + smoothing * prior[None, :]
        log_prev = np.log(prev / prev.sum(1, keepdims=True)).T.copy()
        log_next = np.log(nxt / nxt.sum(1, keepdims=True)).T.copy()

        def ranked(words, full, left=left, right=right, log_prev=log_prev, log_next=log_next):
            m = min(candidates, int((~full).sum()))
            out = np.empty((len(words), m), dtype=np.int64)
            mask = torch.from_numpy(full)
            for a in range(0, len(words), chunk):
                w = words[a:a + chunk]
                # sparse x dense: a word has neighbours in few rows, so the cost is its nonzeros x R
                score = torch.from_numpy(np.asarray(left[w] @ log_prev + right[w] @ log_next, dtype=np.float32))
                score.masked_fill_(mask[None, :], float("-inf"))
                out[a:a + chunk] = torch.topk(score, m, dim=1).indices.numpy()
            return out

        new = _assign_by_candidates(ranked, order, capacity, rows, V)
        if np.array_equal(new, row):
            break
        row = new
    return row


def context_table(tokens: np.ndarray, vocab_size: int, rows: int, cols: int, iterations: int = 10,
                  seed: int = 0, refine: int = 10, **embedding_kwargs) -> np.ndarray:
    """Cells ``row * cols + col`` for every word (a permutation into the table): see the module doc."""
    if rows * cols < vocab_size:
        raise ValueError(f"a {rows}x{cols} table has fewer cells than {vocab_size} words")
    E, counts = context_embedding(tokens, vocab_size, seed=seed, **embedding_kwargs)
    order = np.argsort(-counts, kind="stable")
    centroids = E[order[:rows]].copy()
    weight = counts.astype(np.float64) + 1.0
    groups = _distinct_rows(E) if vocab_size > SEQUENTIAL_MAX_WORDS else None  # E is fixed: once
    row = None
    for _ in range(max(1, iterations)):
        previous, row = row, _balanced_assign(E, centroids, order, cols, groups)
        if previous is not None and np.array_equal(row, previous):
            break  # a fixed point: the same rows give the same centroids, hence the same rows
        sums, mass = _centroids(E, row, weight, rows)
        nonempty = mass > 0
        centroids[nonempty] = (sums[nonempty] / mass[nonempty, None]).astype(np.float32)
    if refine > 0:
        keys = {k: embedding_kwargs[k] for k in ("max_tokens", "chunk", "blocks") if k in embedding_kwargs}
        row = refine_rows(bigram_counts(tokens, vocab_size, **keys), row, counts, rows, cols, iterations=refine)
    return cells_from_rows(row, counts, rows, cols)


def cells_from_rows(row: np.ndarray, counts: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Within a row, the more frequent word takes the lower column."""
    vocab_size = len(row)
    cells = np.empty(vocab_size, dtype=np.int64)
    rank = np.empty(vocab_size, dtype=np.int64)
    by_row = np.lexsort((np.arange(vocab_size), -counts, row))  # by row, then frequency
    first = np.searchsorted(row[by_row], np.arange(rows))
    rank[by_row] = np.arange(vocab_size) - first[row[by_row]]
    cells[:] = row * cols + rank
    return cells
