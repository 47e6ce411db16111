"""Loss statistics for reallocation: ``row_loss[w, i] += -log P_row(i | context)`` for every training
target ``w`` (and likewise ``col_loss[w, j]``), summed over an epoch and over all DDP ranks.

At One Billion Word scale the most frequent words occur 3-4 x 10^7 times an epoch, and a V x R
matrix has 7 x 10^8 entries, so both precision and memory matter:

- **Fixed point, not floats.** Every per-occurrence loss (clamped to ``[0, MAX_NATS]``) is rounded
  to a multiple of ``2^-s`` nats and summed as an integer. Integer sums are exact and do not depend
  on the order of addition: the same on 1 or N ranks, bit-reproducible on GPUs (float atomics in
  ``index_add_`` are not), and a partial epoch can be saved as the sum over ranks and resumed
  without changing a single bit of the final total.
- **Two tiers by frequency.** Words that occur more than ``light_max_count`` times an epoch (over
  all ranks; counted once from the training ids) are summed in int64 at ``2^-heavy_shift`` nats
  (``heavy_shift`` as fine as the largest count allows, 2^-31 at 4 x 10^7 occurrences: the sum of
  a word with 4 x 10^7 occurrences is exact to 1e-9 relative); the others in int32 at 2^-14 nats
  (``light_max_count = 2047``: at most 2047 x 64 nats fit, the error is at most 2047 x 2^-15 nats
  = 0.06 nats a word). At V = 793,471 (891 x 891) with Zipf counts most words are light: about
  4 bytes per (word, row) instead of float64's 8.
- **Not buffers.** The tensors are plain attributes: DDP never broadcasts them (it broadcasts
  every module buffer from rank 0 before each forward, which overwrote the other ranks' sums and
  cost a 5.7 GB broadcast per step at V = 793,471), ``state_dict`` never holds them, and they live
  on the device of the model (allocated at ``start``, freed at ``release``).

``reduce_to_rank0`` sums them over ranks in place, a slice at a time (no second copy), leaving the
total on rank 0 and zeros elsewhere: the state a resumed run starts from, so the sum at the next
round is the same either way. ``chunk(a, b)`` returns words ``a..b`` in float64 nats on the
device, for the solver's candidate builder.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MAX_NATS = 64.0  # a per-occurrence loss above this (p < 1.6e-28) counts as this
LIGHT_SHIFT = 14
LIGHT_MAX_COUNT = 2047  # 2047 * 64 * 2^14 < 2^31: the int32 tier cannot overflow
DEFAULT_MAX_COUNT = 1 << 32  # without counts: every word heavy, sized for 4 x 10^9 occurrences
REDUCE_SLICE_BYTES = 64 << 20


def heavy_shift(max_count: int) -> int:
    """The finest ``s`` (at most 40) with ``max_count * MAX_NATS * 2^s < 2^63``."""
    bits = 63 - math.ceil(math.log2(max(int(max_count), 1) * MAX_NATS + 1))
    return int(max(8, min(40, bits)))


class LossStatistics:
    """Per-word row and column losses of an epoch (see the module doc)."""

    def __init__(self, vocab_size: int, rows: int, cols: int, light_max_count: int = LIGHT_MAX_COUNT):
        if light_max_count * MAX_NATS * 2 ** LIGHT_SHIFT >= 2 ** 31:
            raise ValueError(f"light_max_count {light_max_count} would overflow the int32 tier")
        self.vocab_size, self.rows, self.cols = vocab_size, rows, cols
        self.light_max_count = light_max_count
        self.enabled = False
        self.configure(None)
        self._release_tensors()

    # ---- layout ----------------------------------------------------------------------------------
    def configure(self, counts: np.ndarray | None) -> None:
        """Tiers from ``counts[V]``: each word's occurrences as a target in one epoch over all ranks
        (an upper bound is fine). ``None``: every word in the int64 tier."""
        V = self.vocab_size
        if counts is None:
            heavy = np.ones(V, bool)
            max_count = DEFAULT_MAX_COUNT
        else:
            counts = np.asarray(counts, dtype=np.int64)
            if counts.shape != (V,):
                raise ValueError(f"counts has shape {counts.shape}, expected ({V},)")
            heavy = counts > self.light_max_count
            max_count = int(counts.max(initial=0))
        self.heavy_shift = heavy_shift(max(max_count, self.light_max_count))
        slot = np.empty(V, np.int64)
        self.n_heavy = int(heavy.sum())
        slot[heavy] = np.arange(self.n_heavy)
        slot[~heavy] = np.arange(V - self.n_heavy)
        self._heavy_mask = heavy
        # where each word adds in each tier; the other tier's (and ignored targets') adds go to a sink row
        self._heavy_slot = torch.from_numpy(np.where(heavy, slot, self.n_heavy))
        self._light_slot = torch.from_numpy(np.where(heavy, V - self.n_heavy, slot))
        self.layout = {"vocab_size": V, "rows": self.rows, "cols": self.cols, "n_heavy": self.n_heavy,
                       "heavy_shift": self.heavy_shift, "light_shift": LIGHT_SHIFT,
                       "heavy_words_digest": _digest(np.flatnonzero(heavy))}

    def nbytes(self) -> int:
        """Bytes the statistics take while accumulating (both tiers, both matrices, the counts)."""
        V, width = self.vocab_size, self.rows + self.cols
        return (self.n_heavy + 1) * width * 8 + (V - self.n_heavy + 1) * width * 4 + V * 8

    # ---- lifecycle -------------------------------------------------------------------------------
    def _release_tensors(self) -> None:
        self.heavy_row = self.heavy_col = self.light_row = self.light_col = self.count = None

    @property
    def allocated(self) -> bool:
        return self.count is not None

    def start(self, device=None) -> None:
        """Zero the statistics (allocating them on ``device``) and begin accumulating."""
        device = torch.device(device or "cpu")
        V, R, C, H = self.vocab_size, self.rows, self.cols, self.n_heavy
        if not self.allocated or self.count.device != device:
            self.heavy_row = torch.zeros(H + 1, R, dtype=torch.int64, device=device)
            self.heavy_col = torch.zeros(H + 1, C, dtype=torch.int64, device=device)
            self.light_row = torch.zeros(V - H + 1, R, dtype=torch.int32, device=device)
            self.light_col = torch.zeros(V - H + 1, C, dtype=torch.int32, device=device)
            self.count = torch.zeros(V, dtype=torch.int64, device=device)
        else:
            for t in self.tensors():
                t.zero_()
        self._heavy_slot = self._heavy_slot.to(device)
        self._light_slot = self._light_slot.to(device)
        self.enabled = True

    def stop(self) -> None:
        self.enabled = False

    def release(self) -> None:
        """Free the tensors between rounds."""
        self.enabled = False
        self._release_tensors()

    def tensors(self) -> list[torch.Tensor]:
        return [self.heavy_row, self.heavy_col, self.light_row, self.light_col, self.count]

    # ---- accumulation ------------------------------------------------------------------------------
    @torch.no_grad()
    def add(self, targets: torch.Tensor, row_logp: torch.Tensor, col_logp: torch.Tensor) -> None:
        """``targets[N]`` (negative: ignored), ``row_logp[N, R]``, ``col_logp[N, C]`` (log-probabilities).

        No host synchronisation: ignored targets add to the sink rows instead of being masked out."""
        valid = targets >= 0
        t = targets.clamp_min(0)
        hs = torch.where(valid, self._heavy_slot[t], self.n_heavy)
        ls = torch.where(valid, self._light_slot[t], self.vocab_size - self.n_heavy)
        for logp, heavy, light in ((row_logp, self.heavy_row, self.light_row), (col_logp, self.heavy_col, self.light_col)):
            nats = (-logp.float()).clamp_(0.0, MAX_NATS)
            if self.n_heavy:
                heavy.index_add_(0, hs, (nats.double() * 2.0 ** self.heavy_shift).round_().long())
            if self.n_heavy < self.vocab_size:
                light.index_add_(0, ls, (nats * 2.0 ** LIGHT_SHIFT).round_().int())
        self.count.index_add_(0, t, valid.long())

    # ---- reading ---------------------------------------------------------------------------------------
    def chunk(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(row[n, R], col[n, C])`` float64 nats of words ``start..stop``, on the statistics' device."""
        mask = self._heavy_mask[start:stop]
        if not mask.any() or mask.all():
            # one tier only (word ids run from frequent to rare, so most chunks): its rows are a slice
            heavy_only = bool(mask.all()) and len(mask) > 0
            slots = self._heavy_slot if heavy_only else self._light_slot
            first = int(slots[start]) if stop > start else 0
            out = []
            for t in ((self.heavy_row, self.heavy_col) if heavy_only else (self.light_row, self.light_col)):
                shift = self.heavy_shift if heavy_only else LIGHT_SHIFT
                out.append(t[first:first + (stop - start)].double().mul_(2.0 ** -shift))
            return out[0], out[1]
        words = np.arange(start, stop)
        return self.gather(words, 0), self.gather(words, 1)

    def gather(self, words, side: int) -> torch.Tensor:
        """The ``[n, R]`` (``side`` 0: rows) or ``[n, C]`` (1: columns) float64 nats of ``words`` (any
        order), on the statistics' device: what the solver's polish re-solves a row or column with."""
        device = self.count.device
        words = np.asarray(words, dtype=np.int64)
        w = torch.as_tensor(words, device=device)
        heavy = torch.from_numpy(self._heavy_mask[words]).to(device)
        h, l = (self.heavy_row, self.light_row) if side == 0 else (self.heavy_col, self.light_col)
        hv = lv = None
        if self.n_heavy:
            hv = h[self._heavy_slot[w].clamp_max(self.n_heavy - 1)].double() * 2.0 ** -self.heavy_shift
        if self.n_heavy < self.vocab_size:
            lv = l[self._light_slot[w].clamp_max(self.vocab_size - self.n_heavy - 1)].double() * 2.0 ** -LIGHT_SHIFT
        if hv is None or lv is None:
            return lv if hv is None else hv
        return torch.where(heavy[:, None], hv, lv)

    def full(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole ``row[V, R]``, ``col[V, C]`` in float64 nats (small vocabularies, tests)."""
        return self.chunk(0, self.vocab_size)

    # ---- across ranks ----------------------------------------------------------------------------------
    def reduce_to_rank0(self) -> None:
        """Sum over the ranks in place: rank 0 ends with the total, the other ranks with zeros."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for t in self.tensors():
            flat = t.view(-1)
            step = max(1, REDUCE_SLICE_BYTES // t.element_size())
            for a in range(0, flat.numel(), step):
                dist.reduce(flat[a:a + step], dst=0, op=dist.ReduceOp.SUM)
            if dist.get_rank() != 0:
                t.zero_()

    # ---- checkpoints -------------------------------------------------------------------------------------
    def state(self) -> dict:
        """The tensors (on CPU) and their layout; call after ``reduce_to_rank0`` on rank 0."""
        names = ("heavy_row", "heavy_col", "light_row", "light_col", "count")
        return {"layout": dict(self.layout), **{n: getattr(self, n).cpu() for n in names}}

    def load(self, state: dict) -> None:
        """Add a saved total to the (started) statistics; the layout must be the same."""
        if state["layout"] != self.layout:
            raise ValueError(f"saved statistics have layout {state['layout']}, this run has {self.layout}: "
                             "resume with the same data and vocabulary")
        for name in ("heavy_row", "heavy_col", "light_row", "light_col", "count"):
            getattr(self, name).add_(state[name].to(getattr(self, name).device))


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()[:16]


def token_counts(ids, vocab_size: int, chunk: int = 10_000_000) -> np.ndarray:
    """Occurrences of every word in a (memory-mapped) token stream, ``chunk`` tokens at a time."""
    counts = np.zeros(vocab_size, np.int64)
    for a in range(0, len(ids), chunk):
        counts += np.bincount(np.asarray(ids[a:a + chunk], dtype=np.int64), minlength=vocab_size)[:vocab_size]
    return counts
