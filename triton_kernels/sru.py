"""Triton kernels of the SRU elementwise recurrence, forward and backward, and their autograd Function.

Work split: one program owns ``BLOCK`` consecutive units of one direction of one batch row (grid
``(B, dirs, cdiv(D, BLOCK))``) and walks the whole sequence, forward in time for direction 0 and
backward for direction 1, keeping ``c`` in fp32 registers whatever the input dtype. Because the
direction and the time step are the same for the whole program, every load and store of a step is
one contiguous run of ``BLOCK`` values: vector loads, whole cache lines.

Memory layout (the kernels' own, "planar"): ``U[L, B, K, dirs * D]``, one plane per projection
(candidate, forget, reset[, highway]), so that each plane is read with unit stride. ``SRULayer``
produces it directly by multiplying with a column-permuted weight; the interleaved layout of the
``sru`` package and of ``naive`` (``U[L, B, dirs * D * K]``) is also accepted and permuted here.

The time loop is software pipelined (``tl.range(..., num_stages=STAGES)``): the loads of the next
``STAGES - 1`` steps are in flight (asynchronous copies into shared memory on sm_80+) while a step
computes, since no address depends on the carried state. The backward walks back, recomputes the
gates from U and the saved fp32 states (each state is read once: the predecessor of step t is carried
to step t - 1), and writes dU (and dx), dc0 and per-lane partial sums of dv and db.

Nothing is saved and no ``c`` sequence is written when no gradient will be taken (``torch.no_grad``,
inference, generation). Autotuning is keyed on the problem's width, not on its length ``L``, so the
short last BPTT window or evaluation does not re-benchmark every config.

Maths: ``naive.sru_recurrence_naive``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# (BLOCK, num_warps, STAGES); the kernels are memory-latency bound: small blocks give more programs
# (the grid is only B x dirs x D / BLOCK), more stages give more bytes in flight per program
CONFIGS = ((64, 1, 4), (128, 1, 4), (128, 2, 3), (256, 2, 4), (256, 4, 3), (512, 4, 3))


def _configs() -> list:
    # the interpreter (CPU) cannot benchmark several configs: it gets exactly one
    if _INTERPRET:
        return [triton.Config({"BLOCK": 32, "STAGES": 2}, num_warps=1)]
    return [triton.Config({"BLOCK": b, "STAGES": s}, num_warps=w) for b, w, s in CONFIGS]


# key: the lane geometry and the variant; not L (every sequence length would re-tune)
_KEY = ["B", "D", "DIRS", "K", "HAS_PAD", "USE_TANH"]


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _lanes(WC, BIAS, C0, MASK_C, B, D, DIRS, HAS_MASK_C, BLOCK: tl.constexpr):
    """This program's batch row, direction, lanes (columns of a [B, DIRS * D] state) and their
    fp32 v_f, v_r, b_f, b_r, dropout keep factor and initial state."""
    b = tl.program_id(0)
    direction = tl.program_id(1)
    unit = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    valid = unit < D
    col = direction * D + unit
    DD = DIRS * D
    v_f = tl.load(WC + col, mask=valid, other=0.0)
    v_r = tl.load(WC + DD + col, mask=valid, other=0.0)
    b_f = tl.load(BIAS + col, mask=valid, other=0.0)
    b_r = tl.load(BIAS + DD + col, mask=valid, other=0.0)
    state = b.to(tl.int64) * DD + col
    keep = tl.full([BLOCK], 1.0, tl.float32)
    if HAS_MASK_C:
        keep = tl.load(MASK_C + state, mask=valid, other=0.0)
    c0 = tl.load(C0 + state, mask=valid, other=0.0)
    return b, direction, col, valid, DD, v_f, v_r, b_f, b_r, keep, state, c0


@triton.jit
def _load_step(U, X, row, col, DD, valid, scale_x, K: tl.constexpr):
    """One step's candidate, forget and reset pre-activations and highway term, in fp32."""
    u = U + row * (K * DD) + col
    u0 = tl.load(u, mask=valid, other=0.0).to(tl.float32)
    u1 = tl.load(u + DD, mask=valid, other=0.0).to(tl.float32)
    u2 = tl.load(u + 2 * DD, mask=valid, other=0.0).to(tl.float32)
    if K == 4:
        xp = tl.load(u + 3 * DD, mask=valid, other=0.0).to(tl.float32)
    else:
        xp = tl.load(X + row * DD + col, mask=valid, other=0.0).to(tl.float32) * scale_x
    return u0, u1, u2, xp


@triton.autotune(configs=_configs(), key=[*_KEY, "SAVE_C"])
@triton.jit
def _sru_forward_kernel(U, X, WC, BIAS, C0, MASK_C, MASK_PAD, H, C_SEQ, C_LAST, scale_x, L, B, D, DIRS,
                        HAS_MASK_C, K: tl.constexpr, HAS_PAD: tl.constexpr, USE_TANH: tl.constexpr,
                        SAVE_C: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    b, direction, col, valid, DD, v_f, v_r, b_f, b_r, keep, state, c = _lanes(
        WC, BIAS, C0, MASK_C, B, D, DIRS, HAS_MASK_C, BLOCK)
    for i in tl.range(0, L, num_stages=STAGES):
        t = i + direction * (L - 1 - 2 * i)  # i forwards, L - 1 - i backwards
        row = t.to(tl.int64) * B + b
        u0, u1, u2, xp = _load_step(U, X, row, col, DD, valid, scale_x, K)
        if HAS_PAD:
            is_pad = tl.load(MASK_PAD + row) != 0
        f = _sigmoid(u1 + v_f * c + b_f)
        r = _sigmoid(u2 + v_r * c + b_r)
        c_new = f * c + (1.0 - f) * u0
        if USE_TANH:
            g = _tanh(c_new)
        else:
            g = c_new
        h = xp + (g - xp) * (r * keep)
        if HAS_PAD:
            c_new = tl.where(is_pad, c, c_new)
            h = tl.where(is_pad, 0.0, h)
        tl.store(H + row * DD + col, h.to(H.dtype.element_ty), mask=valid)
        if SAVE_C:
            tl.store(C_SEQ + row * DD + col, c_new, mask=valid)
        c = c_new
    tl.store(C_LAST + state, c, mask=valid)


@triton.autotune(configs=_configs(), key=_KEY)
@triton.jit
def _sru_backward_kernel(U, X, WC, BIAS, C0, MASK_C, MASK_PAD, C_SEQ, GRAD_H, GRAD_C_LAST,
                         GRAD_U, GRAD_X, GRAD_C0, GRAD_PARAMS, scale_x, L, B, D, DIRS, HAS_MASK_C,
                         K: tl.constexpr, HAS_PAD: tl.constexpr, USE_TANH: tl.constexpr,
                         BLOCK: tl.constexpr, STAGES: tl.constexpr):
    b, direction, col, valid, DD, v_f, v_r, b_f, b_r, keep, state, c0 = _lanes(
        WC, BIAS, C0, MASK_C, B, D, DIRS, HAS_MASK_C, BLOCK)
    carry = tl.load(GRAD_C_LAST + state, mask=valid, other=0.0)
    # the state after the direction's last step; each later iteration gets it from the one before
    last = (L - 1) * (1 - direction)
    c_t = tl.load(C_SEQ + (last.to(tl.int64) * B + b) * DD + col, mask=valid, other=0.0)
    acc_vf = tl.zeros([BLOCK], dtype=tl.float32)
    acc_vr = tl.zeros([BLOCK], dtype=tl.float32)
    acc_bf = tl.zeros([BLOCK], dtype=tl.float32)
    acc_br = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.range(0, L, num_stages=STAGES):
        # the direction's own step L-1-i, walked backwards; its predecessor is one step earlier
        j = L - 1 - i
        t = j + direction * (L - 1 - 2 * j)
        t_prev = t - 1 + 2 * direction
        row = t.to(tl.int64) * B + b
        # every load of the step is issued here, none depends on the carried gradient
        has_prev = valid & ((tl.zeros([BLOCK], dtype=tl.int32) + j) > 0)
        c_prev = tl.load(C_SEQ + (t_prev.to(tl.int64) * B + b) * DD + col, mask=has_prev, other=0.0)
        u0, u1, u2, xp = _load_step(U, X, row, col, DD, valid, scale_x, K)
        gh = tl.load(GRAD_H + row * DD + col, mask=valid, other=0.0).to(tl.float32)
        if HAS_PAD:
            is_pad = tl.load(MASK_PAD + row) != 0
            gh = tl.where(is_pad, 0.0, gh)
        c_prev = tl.where(has_prev, c_prev, c0)
        f = _sigmoid(u1 + v_f * c_prev + b_f)
        r = _sigmoid(u2 + v_r * c_prev + b_r)
        if USE_TANH:
            g = _tanh(c_t)
            g_c = carry + gh * r * keep * (1.0 - g * g)
        else:
            g = c_t
            g_c = carry + gh * r * keep
        g_r_pre = gh * (g - xp) * keep * r * (1.0 - r)
        g_highway = gh * (1.0 - r * keep)
        g_u0 = g_c * (1.0 - f)
        g_f_pre = g_c * (c_prev - u0) * f * (1.0 - f)
        new_carry = g_c * f + g_f_pre * v_f + g_r_pre * v_r
        if HAS_PAD:
            g_u0 = tl.where(is_pad, 0.0, g_u0)
            g_f_pre = tl.where(is_pad, 0.0, g_f_pre)
            new_carry = tl.where(is_pad, g_c, new_carry)
        carry = new_carry
        out_ty = GRAD_U.dtype.element_ty
        gu = GRAD_U + row * (K * DD) + col
        tl.store(gu, g_u0.to(out_ty), mask=valid)
        tl.store(gu + DD, g_f_pre.to(out_ty), mask=valid)
        tl.store(gu + 2 * DD, g_r_pre.to(out_ty), mask=valid)
        if K == 4:
            tl.store(gu + 3 * DD, g_highway.to(out_ty), mask=valid)
        else:
            tl.store(GRAD_X + row * DD + col, (g_highway * scale_x).to(GRAD_X.dtype.element_ty), mask=valid)
        acc_vf += g_f_pre * c_prev
        acc_vr += g_r_pre * c_prev
        acc_bf += g_f_pre
        acc_br += g_r_pre
        c_t = c_prev
    tl.store(GRAD_C0 + state, carry, mask=valid)
    n = B * DD
    tl.store(GRAD_PARAMS + state, acc_vf, mask=valid)
    tl.store(GRAD_PARAMS + n + state, acc_vr, mask=valid)
    tl.store(GRAD_PARAMS + 2 * n + state, acc_bf, mask=valid)
    tl.store(GRAD_PARAMS + 3 * n + state, acc_br, mask=valid)


def _grid(B: int, dirs: int, D: int):
    return lambda meta: (B, dirs, triton.cdiv(D, meta["BLOCK"]))


def to_planar(U: torch.Tensor, dirs: int, D: int) -> torch.Tensor:
    """``U[L, B, dirs * D * K]`` (interleaved, the ``sru`` package's layout) -> ``[L, B, K, dirs * D]``."""
    L, B = U.shape[:2]
    return U.reshape(L, B, dirs * D, -1).transpose(2, 3).contiguous()


def from_planar(U: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_planar``."""
    L, B = U.shape[:2]
    return U.transpose(2, 3).reshape(L, B, -1)


def planar_weight(weight: torch.Tensor, dirs: int, D: int) -> torch.Tensor:
    """The weight ``[d_in, dirs * D * K]`` with its columns permuted so that ``x @ w`` is planar."""
    d_in = weight.shape[0]
    return weight.view(d_in, dirs * D, -1).transpose(1, 2).reshape(d_in, -1)


class _Launch:
    """The tensors of one call, converted once: planar U, fp32 parameters and states."""

    def __init__(self, U, x, weight_c, bias, c0, D, dirs, scale_x, mask_c, mask_pad, use_tanh):
        self.L, self.B = U.shape[0], U.shape[1]
        self.D, self.dirs = D, dirs
        self.K = U.shape[2]
        self.U = U.contiguous()
        self.x = x.contiguous() if self.K == 3 else None
        self.weight_c = weight_c.detach().float().contiguous()
        self.bias = bias.detach().float().contiguous()
        self.c0 = c0.detach().float().contiguous()
        self.mask_c = mask_c.detach().float().contiguous() if mask_c is not None else None
        self.pad = mask_pad.to(torch.int8).contiguous() if mask_pad is not None else None
        self.scale_x = float(scale_x)
        self.use_tanh = bool(use_tanh)

    def common(self):
        dummy = self.c0
        return (self.U, self.x if self.x is not None else self.U, self.weight_c, self.bias, self.c0,
                self.mask_c if self.mask_c is not None else dummy, self.pad if self.pad is not None else dummy)

    def forward(self, save_c: bool):
        L, B, dirs, D = self.L, self.B, self.dirs, self.D
        h = torch.empty(L, B, dirs * D, dtype=self.U.dtype, device=self.U.device)
        c_seq = torch.empty(L, B, dirs * D, dtype=torch.float32, device=self.U.device) if save_c else h
        c_last = torch.empty(B, dirs * D, dtype=torch.float32, device=self.U.device)
        _sru_forward_kernel[_grid(B, dirs, D)](
            *self.common(), h, c_seq, c_last, self.scale_x, L, B, D, dirs, self.mask_c is not None,
            K=self.K, HAS_PAD=self.pad is not None, USE_TANH=self.use_tanh, SAVE_C=save_c)
        return h, (c_seq if save_c else None), c_last

    def backward(self, c_seq, grad_h, grad_c_last):
        L, B, dirs, D = self.L, self.B, self.dirs, self.D
        grad_U = torch.empty_like(self.U)
        grad_x = torch.empty_like(self.x) if self.K == 3 else None
        grad_c0 = torch.empty(B, dirs * D, dtype=torch.float32, device=self.U.device)
        grad_params = torch.empty(4, B, dirs * D, dtype=torch.float32, device=self.U.device)
        _sru_backward_kernel[_grid(B, dirs, D)](
            *self.common(), c_seq, grad_h, grad_c_last, grad_U, grad_x if grad_x is not None else grad_U,
            grad_c0, grad_params, self.scale_x, L, B, D, dirs, self.mask_c is not None,
            K=self.K, HAS_PAD=self.pad is not None, USE_TANH=self.use_tanh)
        return grad_U, grad_x, grad_c0, grad_params.sum(1)


class SRURecurrenceTriton(torch.autograd.Function):
    """Planar U in, planar dU out. Saves the launch (U, x when it is the highway term, fp32
    parameters, c0 and masks) and the fp32 states c."""

    @staticmethod
    def forward(ctx, U, x, weight_c, bias, c0, hidden_size, dirs, scale_x, mask_c, mask_pad, use_tanh):
        launch = _Launch(U, x, weight_c, bias, c0, hidden_size, dirs, scale_x, mask_c, mask_pad, use_tanh)
        h, c_seq, c_last = launch.forward(save_c=True)
        # U and x through save_for_backward (version-checked); the converted small tensors on ctx
        ctx.save_for_backward(launch.U, launch.x, c_seq)
        launch.U = launch.x = None
        ctx.launch = launch
        ctx.dtypes = (weight_c.dtype, bias.dtype, c0.dtype)
        return h, c_last.to(c0.dtype)

    @staticmethod
    def backward(ctx, grad_h, grad_c_last):
        launch = ctx.launch
        launch.U, launch.x, c_seq = ctx.saved_tensors
        L, B, dirs, D = launch.L, launch.B, launch.dirs, launch.D
        if grad_h is None:
            grad_h = torch.zeros(L, B, dirs * D, dtype=launch.U.dtype, device=launch.U.device)
        grad_c_last = (torch.zeros_like(launch.c0) if grad_c_last is None
                       else grad_c_last.float().contiguous())
        grad_U, grad_x, grad_c0, sums = launch.backward(c_seq, grad_h.contiguous(), grad_c_last)
        wc_dtype, bias_dtype, c0_dtype = ctx.dtypes
        grad_wc = sums[:2].reshape(-1).to(wc_dtype) if ctx.needs_input_grad[2] else None
        grad_bias = sums[2:].reshape(-1).to(bias_dtype) if ctx.needs_input_grad[3] else None
        ctx.launch = None
        return (grad_U, grad_x, grad_wc, grad_bias, grad_c0.to(c0_dtype), None, None, None, None, None, None)


def sru_recurrence_triton(U: torch.Tensor, x: torch.Tensor | None, weight_c: torch.Tensor, bias: torch.Tensor,
                          c0: torch.Tensor, hidden_size: int, bidirectional: bool = False, scale_x: float = 1.0,
                          mask_c: torch.Tensor | None = None, mask_pad: torch.Tensor | None = None,
                          use_tanh: bool = False, planar: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``naive.sru_recurrence_naive``; fp32/fp16/bf16 (U and x may
    differ, e.g. bf16 U from autocast with an fp32 input), fp32 inside.

    ``planar=True``: U is ``[L, B, K, dirs * D]`` (``to_planar``; what ``SRULayer`` computes) and
    its gradient comes back in that layout; otherwise the interleaved ``[L, B, dirs * D * K]``.
    """
    dirs = 2 if bidirectional else 1
    D = hidden_size
    if not planar:
        U = to_planar(U, dirs, D)
    elif U.dim() != 4 or U.shape[3] != dirs * D:
        raise ValueError(f"planar U must be [L, B, K, {dirs * D}], got {tuple(U.shape)}")
    tensors = (U, x, weight_c, bias, c0)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        h, c = SRURecurrenceTriton.apply(U, x, weight_c, bias, c0, D, dirs, float(scale_x), mask_c,
                                         mask_pad, use_tanh)
    else:
        # no gradient will be taken: no autograd record, nothing saved, no c sequence written
        launch = _Launch(U, x, weight_c, bias, c0, D, dirs, scale_x, mask_c, mask_pad, use_tanh)
        h, _, c = launch.forward(save_c=False)
        c = c.to(c0.dtype)
    return h, c
