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

Host path (a layer call is otherwise bound by the CPU that issues it, not by the GPU): the parameters,
c0 and the dropout mask are read in their own dtype and converted in the kernels (no conversion op),
a zero initial state and a last state without gradient cost no buffer (``HAS_C0``, ``HAS_GRAD_C``),
and after the first call of a problem (autotuning, compilation) the compiled kernel is launched
directly (``_Launcher``). Under ``torch.compile`` the launches are custom ops (no graph break,
CUDA-graph capturable); ``retain_graph`` backwards repeat; a double backward takes the reference's
differentiable gradients (``_reference_gradients``).

Not done: a chunked parallel scan over time for the 2017 form (``v = 0``, where ``c_t`` is a linear
recurrence with input-only coefficients). The kernels already run ``B x dirs x D`` independent lanes;
a scan only pays when those are too few to cover the GPU's memory latency (small batch, long
sequences), and it costs an extra pass over the gates and carries. Whether it wins, and from which
shape, is a GPU measurement (``benchmarks/sru_speed.py``) not made yet: no unmeasured complexity.

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


# key: the lane geometry and the variant; not L (every sequence length would re-tune). The choice is
# also kept on disk (``cache_results``, Triton's cache folder): a new process does not re-benchmark
_KEY = ["B", "D", "DIRS", "K", "HAS_PAD", "USE_TANH"]

# after the first call of a problem, launch its compiled kernel directly (``_Launcher``);
# LRNN_SRU_DIRECT_LAUNCH=0 sends every call through the autotuner and the JIT instead (to compare)
DIRECT_LAUNCH = os.environ.get("LRNN_SRU_DIRECT_LAUNCH", "1") != "0"


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _lanes(WC, BIAS, C0, MASK_C, B, D, DIRS, HAS_MASK_C, HAS_C0: tl.constexpr, BLOCK: tl.constexpr):
    """This program's batch row, direction, lanes (columns of a [B, DIRS * D] state) and their
    v_f, v_r, b_f, b_r, dropout keep factor and initial state, in fp32 whatever their dtype."""
    b = tl.program_id(0)
    direction = tl.program_id(1)
    unit = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    valid = unit < D
    col = direction * D + unit
    DD = DIRS * D
    # the parameters, dropout mask and initial state in whatever dtype they come: converted here
    v_f = tl.load(WC + col, mask=valid, other=0.0).to(tl.float32)
    v_r = tl.load(WC + DD + col, mask=valid, other=0.0).to(tl.float32)
    b_f = tl.load(BIAS + col, mask=valid, other=0.0).to(tl.float32)
    b_r = tl.load(BIAS + DD + col, mask=valid, other=0.0).to(tl.float32)
    state = b.to(tl.int64) * DD + col
    keep = tl.full([BLOCK], 1.0, tl.float32)
    if HAS_MASK_C:
        keep = tl.load(MASK_C + state, mask=valid, other=0.0).to(tl.float32)
    c0 = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_C0:  # else a zero initial state, never allocated
        c0 = tl.load(C0 + state, mask=valid, other=0.0).to(tl.float32)
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


@triton.autotune(configs=_configs(), key=[*_KEY, "SAVE_C"], cache_results=True)
@triton.jit
def _sru_forward_kernel(U, X, WC, BIAS, C0, MASK_C, MASK_PAD, H, C_SEQ, C_LAST, scale_x, L, B, D, DIRS,
                        HAS_MASK_C, K: tl.constexpr, HAS_PAD: tl.constexpr, USE_TANH: tl.constexpr,
                        SAVE_C: tl.constexpr, HAS_C0: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    b, direction, col, valid, DD, v_f, v_r, b_f, b_r, keep, state, c = _lanes(
        WC, BIAS, C0, MASK_C, B, D, DIRS, HAS_MASK_C, HAS_C0, BLOCK)
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
    tl.store(C_LAST + state, c.to(C_LAST.dtype.element_ty), mask=valid)


@triton.autotune(configs=_configs(), key=_KEY, cache_results=True)
@triton.jit
def _sru_backward_kernel(U, X, WC, BIAS, C0, MASK_C, MASK_PAD, C_SEQ, GRAD_H, GRAD_C_LAST,
                         GRAD_U, GRAD_X, GRAD_C0, GRAD_PARAMS, scale_x, L, B, D, DIRS, HAS_MASK_C,
                         K: tl.constexpr, HAS_PAD: tl.constexpr, USE_TANH: tl.constexpr, HAS_C0: tl.constexpr,
                         HAS_GRAD_C: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    b, direction, col, valid, DD, v_f, v_r, b_f, b_r, keep, state, c0 = _lanes(
        WC, BIAS, C0, MASK_C, B, D, DIRS, HAS_MASK_C, HAS_C0, BLOCK)
    carry = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_GRAD_C:  # else no gradient reaches the last state (it was detached or unused)
        carry = tl.load(GRAD_C_LAST + state, mask=valid, other=0.0).to(tl.float32)
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
    if HAS_C0:
        tl.store(GRAD_C0 + state, carry.to(GRAD_C0.dtype.element_ty), mask=valid)
    n = B * DD
    tl.store(GRAD_PARAMS + state, acc_vf, mask=valid)
    tl.store(GRAD_PARAMS + n + state, acc_vr, mask=valid)
    tl.store(GRAD_PARAMS + 2 * n + state, acc_bf, mask=valid)
    tl.store(GRAD_PARAMS + 3 * n + state, acc_br, mask=valid)


def _grid(B: int, dirs: int, D: int):
    return lambda meta: (B, dirs, triton.cdiv(D, meta["BLOCK"]))


def launch_key(args) -> tuple:
    """What decides the compiled kernel of a launch besides the constexprs: every integer and flag by
    type and value (``True == 1``, yet Triton types them apart), each tensor's dtype and whether its
    address is 16-byte aligned (Triton specializes pointers on that), floats by type only (Triton
    never specializes them)."""
    return tuple((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else
                 (float if isinstance(a, float) else (a.__class__, a)) for a in args)


class _Launcher:
    """One autotuned kernel, launched with as little host work per call as the launch allows.

    The first call of a problem goes through ``triton.autotune`` (which benchmarks the configs once
    per tuning key) and Triton's JIT (which compiles once per specialization). The compiled kernel,
    its grid and its constexpr arguments are then kept under ``launch_key`` (which determines the
    JIT's choice), and later calls launch it directly: no autotuner dispatch, no argument binding,
    no cache-key hashing. Interpreted (TRITON_INTERPRET=1) every call takes the autotuner's path.
    """

    MAX_ENTRIES = 1024  # distinct (L, B, D, flags, dtypes): a bound, never reached in practice

    def __init__(self, kernel):
        self.kernel = kernel
        self.compiled: dict = {}

    def clear(self) -> None:
        """Forget the compiled kernels (after changing the autotuner's configs or its cache)."""
        self.compiled.clear()

    def __call__(self, B: int, dirs: int, D: int, args: tuple, constexprs: tuple) -> None:
        if _INTERPRET or not DIRECT_LAUNCH:
            self.kernel[_grid(B, dirs, D)](*args, **dict(constexprs))
            return
        device = _driver.active.get_current_device()
        key = (device, constexprs, launch_key(args))
        hit = self.compiled.get(key)
        if hit is None:
            compiled = self.kernel[_grid(B, dirs, D)](*args, **dict(constexprs))
            config = self.kernel.best_config.kwargs
            named = {**dict(constexprs), **config}
            # the JIT passes every parameter, constexprs included (the launcher drops them)
            tail = tuple(named[name] for name in self.kernel.arg_names[len(args):])
            if len(self.compiled) >= self.MAX_ENTRIES:
                self.compiled.clear()
            self.compiled[key] = (compiled, (B, dirs, triton.cdiv(D, config["BLOCK"])), tail)
            return
        compiled, grid, tail = hit
        stream = _driver.active.get_current_stream(device)
        full = (*args, *tail)
        enter = _knobs.runtime.launch_enter_hook
        # the launch's metadata is only read by launch hooks (a profiler): not built when none is set
        meta = compiled.launch_metadata(grid, stream, *full) if getattr(enter, "calls", True) else None
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, meta, enter,
                     _knobs.runtime.launch_exit_hook, *full)


_driver = triton.runtime.driver
_knobs = triton.knobs
_FORWARD = _Launcher(_sru_forward_kernel)
_BACKWARD = _Launcher(_sru_backward_kernel)


def clear_launch_cache() -> None:
    """Forget the kernels compiled for direct launch (the autotuner's own cache is ``kernel.cache``)."""
    _FORWARD.clear()
    _BACKWARD.clear()


def _forward(U, x, weight_c, bias, c0, mask_c, pad, D: int, dirs: int, scale_x: float, use_tanh: bool,
             save_c: bool):
    """h (U's dtype), the fp32 states (``None`` unless ``save_c``) and the last state (c0's dtype, or the
    parameters' when ``c0`` is None: a zero initial state). Inputs contiguous; ``pad`` int8; ``x`` None
    when U holds the highway plane (K = 4)."""
    L, B, K = U.shape[0], U.shape[1], U.shape[2]
    DD = dirs * D
    h = torch.empty((L, B, DD), dtype=U.dtype, device=U.device)
    c_seq = torch.empty((L, B, DD), dtype=torch.float32, device=U.device) if save_c else None
    c_last = torch.empty((B, DD), dtype=weight_c.dtype if c0 is None else c0.dtype, device=U.device)
    _FORWARD(B, dirs, D,
             (U, U if x is None else x, weight_c, bias, c_last if c0 is None else c0,
              c_last if mask_c is None else mask_c, c_last if pad is None else pad, h,
              h if c_seq is None else c_seq, c_last, scale_x, L, B, D, dirs, mask_c is not None),
             (("K", K), ("HAS_PAD", pad is not None), ("USE_TANH", use_tanh), ("SAVE_C", save_c),
              ("HAS_C0", c0 is not None)))
    return h, c_seq, c_last


def _backward(U, x, weight_c, bias, c0, mask_c, pad, c_seq, grad_h, grad_c_last, D: int, dirs: int,
              scale_x: float, use_tanh: bool):
    """dU, dx (None when K = 4), dc0 (c0's dtype; None without c0) and the fp32 sums [4, dirs * D]:
    dv_f, dv_r, db_f, db_r. ``grad_h`` contiguous, any float dtype; ``grad_c_last`` too, or None (zero)."""
    L, B, K = U.shape[0], U.shape[1], U.shape[2]
    DD = dirs * D
    grad_U = torch.empty_like(U)
    grad_x = None if x is None else torch.empty_like(x)
    grad_c0 = None if c0 is None else torch.empty_like(c0)
    partial = torch.empty((4, B, DD), dtype=torch.float32, device=U.device)  # per batch row
    _BACKWARD(B, dirs, D,
              (U, U if x is None else x, weight_c, bias, partial if c0 is None else c0,
               partial if mask_c is None else mask_c, partial if pad is None else pad, c_seq, grad_h,
               partial if grad_c_last is None else grad_c_last, grad_U, grad_U if grad_x is None else grad_x,
               partial if grad_c0 is None else grad_c0, partial, scale_x, L, B, D, dirs, mask_c is not None),
              (("K", K), ("HAS_PAD", pad is not None), ("USE_TANH", use_tanh), ("HAS_C0", c0 is not None),
               ("HAS_GRAD_C", grad_c_last is not None)))
    return grad_U, grad_x, grad_c0, partial.sum(1)


def _output_grads(U, grad_h, grad_c_last, dirs: int, D: int):
    """The output gradients as the backward kernel reads them: contiguous; zeros for a missing dh, and
    a missing dc stays None (the kernel starts from zero)."""
    if grad_h is None:
        grad_h = torch.zeros((U.shape[0], U.shape[1], dirs * D), dtype=U.dtype, device=U.device)
    elif not grad_h.is_contiguous():
        grad_h = grad_h.contiguous()
    if grad_c_last is not None and not grad_c_last.is_contiguous():
        grad_c_last = grad_c_last.contiguous()
    return grad_h, grad_c_last


def _reference_gradients(saved, meta, grad_h, grad_c_last, needs):
    """Double backward (``create_graph=True``): the backward kernel is not itself differentiable, so
    these gradients are those of the plain PyTorch reference (``naive``), recomputed with a graph.
    Slow (a Python loop over time), and only taken when a graph of the gradients is asked for."""
    from triton_kernels.naive import sru_recurrence_naive

    U, x, weight_c, bias, c0, mask_c, pad = saved
    D, dirs, scale_x, use_tanh = meta
    wrt = [t for t, need in zip((U, x, weight_c, bias, c0), needs) if need]
    if (grad_h is None and grad_c_last is None) or not wrt:
        return [None] * 5
    zero_c0 = U.new_zeros((U.shape[1], dirs * D), dtype=weight_c.dtype) if c0 is None else c0
    h, c = sru_recurrence_naive(from_planar(U), x, weight_c, bias, zero_c0, D, dirs == 2, scale_x, mask_c, pad,
                                use_tanh)
    outs, grads = zip(*[(o, g) for o, g in ((h, grad_h), (c, grad_c_last)) if g is not None])
    got = iter(torch.autograd.grad(outs, wrt, grads, create_graph=True, allow_unused=True))
    return [next(got) if need else None for need in needs[:5]]


class SRURecurrenceTriton(torch.autograd.Function):
    """Planar U in, planar dU out. Saves its inputs (U, x when it is the highway term, v, b, c0, masks)
    and the fp32 states c; a backward may run several times (``retain_graph=True``). Under
    ``create_graph=True`` the gradients come from the differentiable reference (``naive``)."""

    @staticmethod
    def forward(ctx, U, x, weight_c, bias, c0, mask_c, pad, hidden_size, dirs, scale_x, use_tanh):
        h, c_seq, c_last = _forward(U, x, weight_c, bias, c0, mask_c, pad, hidden_size, dirs, scale_x, use_tanh,
                                    save_c=True)
        ctx.save_for_backward(U, x, weight_c, bias, c0, mask_c, pad, c_seq)
        ctx.meta = (hidden_size, dirs, scale_x, use_tanh)
        ctx.set_materialize_grads(False)  # a missing dc stays None: no zeros written
        return h, c_last

    @staticmethod
    def backward(ctx, grad_h, grad_c_last):
        U, x, weight_c, bias, c0, mask_c, pad, c_seq = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():
            grads = _reference_gradients((U, x, weight_c, bias, c0, mask_c, pad), ctx.meta, grad_h, grad_c_last,
                                         need)
            return (*grads, None, None, None, None, None, None)
        D, dirs, scale_x, use_tanh = ctx.meta
        grad_h, grad_c_last = _output_grads(U, grad_h, grad_c_last, dirs, D)
        grad_U, grad_x, grad_c0, sums = _backward(U, x, weight_c, bias, c0, mask_c, pad, c_seq, grad_h, grad_c_last,
                                                  D, dirs, scale_x, use_tanh)
        grad_wc, grad_bias = sums.view(2, -1).unbind(0)  # (dv_f, dv_r), (db_f, db_r): one op, two views
        grad_wc = grad_wc.to(weight_c.dtype) if need[2] else None
        grad_bias = grad_bias.to(bias.dtype) if need[3] else None
        return (grad_U if need[0] else None, grad_x if need[1] else None, grad_wc, grad_bias,
                grad_c0 if need[4] else None, None, None, None, None, None, None)


# ---- torch.compile: the same launches as custom operators ----------------------------------------
# Under torch.compile the recurrence is two custom ops with fake (shape) implementations and an
# autograd formula, so the layer compiles without a graph break and its graph can be captured by
# CUDA graphs (no host sync, every allocation a plain empty). ``torch.library.triton_op`` would
# also show the kernels to Inductor, but its fake implementation is the function itself, which the
# Triton interpreter (the CPU tests) cannot run on fake tensors. Eager calls do not take this path:
# a custom op costs ~35 us more per call on the host than the autograd Function (measured on CPU).

@torch.library.custom_op("lrnn_sru::recurrence_forward", mutates_args=())
def _op_forward(U: torch.Tensor, x: torch.Tensor | None, weight_c: torch.Tensor, bias: torch.Tensor,
                c0: torch.Tensor | None, mask_c: torch.Tensor | None, pad: torch.Tensor | None, hidden_size: int,
                dirs: int, scale_x: float, use_tanh: bool,
                save_c: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, c_seq, c_last = _forward(U, x, weight_c, bias, c0, mask_c, pad, hidden_size, dirs, scale_x, use_tanh, save_c)
    return h, c_last, (c_seq if save_c else U.new_empty(0, dtype=torch.float32))


@_op_forward.register_fake
def _(U, x, weight_c, bias, c0, mask_c, pad, hidden_size, dirs, scale_x, use_tanh, save_c):
    L, B, DD = U.shape[0], U.shape[1], dirs * hidden_size
    return (U.new_empty((L, B, DD)), U.new_empty((B, DD), dtype=weight_c.dtype if c0 is None else c0.dtype),
            U.new_empty((L, B, DD) if save_c else (0,), dtype=torch.float32))


@torch.library.custom_op("lrnn_sru::recurrence_backward", mutates_args=())
def _op_backward(U: torch.Tensor, x: torch.Tensor | None, weight_c: torch.Tensor, bias: torch.Tensor,
                 c0: torch.Tensor | None, mask_c: torch.Tensor | None, pad: torch.Tensor | None, c_seq: torch.Tensor,
                 grad_h: torch.Tensor, grad_c_last: torch.Tensor | None, hidden_size: int, dirs: int, scale_x: float,
                 use_tanh: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_U, grad_x, grad_c0, sums = _backward(U, x, weight_c, bias, c0, mask_c, pad, c_seq, grad_h, grad_c_last,
                                              hidden_size, dirs, scale_x, use_tanh)
    return (grad_U, U.new_empty(0) if grad_x is None else grad_x, U.new_empty(0) if grad_c0 is None else grad_c0,
            sums)


@_op_backward.register_fake
def _(U, x, weight_c, bias, c0, mask_c, pad, c_seq, grad_h, grad_c_last, hidden_size, dirs, scale_x, use_tanh):
    return (torch.empty_like(U), U.new_empty(0) if x is None else torch.empty_like(x),
            U.new_empty(0) if c0 is None else torch.empty_like(c0),
            U.new_empty((4, dirs * hidden_size), dtype=torch.float32))


def _op_setup(ctx, inputs, output):
    U, x, weight_c, bias, c0, mask_c, pad, hidden_size, dirs, scale_x, use_tanh, save_c = inputs
    ctx.save_for_backward(U, x, weight_c, bias, c0, mask_c, pad, output[2])
    ctx.meta = (hidden_size, dirs, scale_x, use_tanh)


def _op_gradients(ctx, grad_h, grad_c_last, _grad_c_seq):
    U, x, weight_c, bias, c0, mask_c, pad, c_seq = ctx.saved_tensors
    D, dirs, scale_x, use_tanh = ctx.meta
    grad_h, grad_c_last = _output_grads(U, grad_h, grad_c_last, dirs, D)
    grad_U, grad_x, grad_c0, sums = _op_backward(U, x, weight_c, bias, c0, mask_c, pad, c_seq, grad_h, grad_c_last,
                                                 D, dirs, scale_x, use_tanh)
    need = ctx.needs_input_grad
    return (grad_U if need[0] else None, grad_x if x is not None and need[1] else None,
            sums[:2].reshape(-1).to(weight_c.dtype) if need[2] else None,
            sums[2:].reshape(-1).to(bias.dtype) if need[3] else None,
            grad_c0 if c0 is not None and need[4] else None, None, None, None, None, None, None, None)


_op_forward.register_autograd(_op_gradients, setup_context=_op_setup)


# ---- the public entry ------------------------------------------------------------------------------

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


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or t.is_contiguous() else t.contiguous()


def pad_bytes(mask_pad: torch.Tensor | None) -> torch.Tensor | None:
    """``mask_pad[L, B]`` as the kernels read it: int8, nonzero at padding (a bool mask is viewed, not copied)."""
    if mask_pad is None:
        return None
    pad = mask_pad if mask_pad.dtype == torch.bool else mask_pad != 0
    return _contiguous(pad).view(torch.int8)


def sru_recurrence_triton(U: torch.Tensor, x: torch.Tensor | None, weight_c: torch.Tensor, bias: torch.Tensor,
                          c0: torch.Tensor | None, hidden_size: int, bidirectional: bool = False,
                          scale_x: float = 1.0, mask_c: torch.Tensor | None = None,
                          mask_pad: torch.Tensor | None = None, use_tanh: bool = False,
                          planar: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``naive.sru_recurrence_naive``; fp32/fp16/bf16 (U, x, the
    parameters and c0 may differ, e.g. bf16 U from autocast with an fp32 input), fp32 inside; h comes
    in U's dtype, the last state in c0's. ``c0=None`` is a zero initial state (nothing allocated; the
    last state then comes in the parameters' dtype).

    ``planar=True``: U is ``[L, B, K, dirs * D]`` (``to_planar``; what ``SRULayer`` computes) and
    its gradient comes back in that layout; otherwise the interleaved ``[L, B, dirs * D * K]``.

    Eager, one autograd Function launches the kernels (compiled kernels launched directly after the
    first call, see ``_Launcher``); under ``torch.compile``, the custom ops ``lrnn_sru::*``.
    ``retain_graph=True`` backwards run as often as asked; double backward (``create_graph=True``)
    takes the differentiable reference's gradients (``_reference_gradients``).
    """
    dirs = 2 if bidirectional else 1
    D = hidden_size
    if not planar:
        U = to_planar(U, dirs, D)
    elif U.dim() != 4 or U.shape[3] != dirs * D:
        raise ValueError(f"planar U must be [L, B, K, {dirs * D}], got {tuple(U.shape)}")
    x = None if U.shape[2] == 4 else x
    if not (U.is_contiguous() and weight_c.is_contiguous() and bias.is_contiguous()
            and (x is None or x.is_contiguous()) and (c0 is None or c0.is_contiguous())
            and (mask_c is None or mask_c.is_contiguous())):  # one test for the common case
        U, x, weight_c, bias, c0, mask_c = (_contiguous(t) for t in (U, x, weight_c, bias, c0, mask_c))
    pad = pad_bytes(mask_pad)
    scale_x, use_tanh = float(scale_x), bool(use_tanh)
    grad = torch.is_grad_enabled() and (U.requires_grad or weight_c.requires_grad or bias.requires_grad
                                        or (c0 is not None and c0.requires_grad)
                                        or (x is not None and x.requires_grad))
    if torch.compiler.is_compiling():
        h, c, _ = _op_forward(U, x, weight_c, bias, c0, mask_c, pad, D, dirs, scale_x, use_tanh, grad)
        return h, c
    if grad:
        return SRURecurrenceTriton.apply(U, x, weight_c, bias, c0, mask_c, pad, D, dirs, scale_x, use_tanh)
    # no gradient will be taken: no autograd record, nothing saved, no c sequence written
    h, _, c = _forward(U, x, weight_c, bias, c0, mask_c, pad, D, dirs, scale_x, use_tanh, save_c=False)
    return h, c
