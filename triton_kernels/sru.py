"""Triton kernels of the SRU elementwise recurrence, forward and backward, and their autograd Function.

One program owns ``BLOCK`` independent lanes ``n = (b, dir, unit)`` and walks the whole sequence
(forward in time for direction 0, backward for direction 1), keeping ``c`` in fp32 registers
whatever the input dtype. Memory traffic per step and lane: read ``k`` values of U (and x when
k == 3), write ``h`` and (when a gradient is needed) ``c`` in fp32; that is all the forward saves.
The backward kernel walks back, recomputes the gates from U and the saved ``c``, and writes
dU (and dx), dc0 and per-lane partial sums of dv and db, reduced over the batch afterwards.

Maths and layouts: ``naive.sru_recurrence_naive``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs() -> list:
    # the interpreter (CPU) cannot benchmark several configs: it gets exactly one
    if _INTERPRET:
        return [triton.Config({"BLOCK": 32}, num_warps=1)]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((64, 2), (128, 4), (256, 4), (512, 8))]


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _lane_parameters(WC, BIAS, n, valid, DIRS: tl.constexpr, D: tl.constexpr):
    """Per lane ``n = (b, dir, unit)``: its direction and its v_f, v_r, b_f, b_r in fp32."""
    col = n % (DIRS * D)
    v_f = tl.load(WC + col, mask=valid, other=0.0).to(tl.float32)
    v_r = tl.load(WC + DIRS * D + col, mask=valid, other=0.0).to(tl.float32)
    b_f = tl.load(BIAS + col, mask=valid, other=0.0).to(tl.float32)
    b_r = tl.load(BIAS + DIRS * D + col, mask=valid, other=0.0).to(tl.float32)
    return (col // D) == 1, v_f, v_r, b_f, b_r


@triton.jit
def _load_step(U, X, off, valid, scale_x, K: tl.constexpr):
    """One step's candidate, forget and reset pre-activations and highway term, in fp32."""
    u0 = tl.load(U + off * K, mask=valid, other=0.0).to(tl.float32)
    u1 = tl.load(U + off * K + 1, mask=valid, other=0.0).to(tl.float32)
    u2 = tl.load(U + off * K + 2, mask=valid, other=0.0).to(tl.float32)
    if K == 4:
        xp = tl.load(U + off * K + 3, mask=valid, other=0.0).to(tl.float32)
    else:
        xp = tl.load(X + off, mask=valid, other=0.0).to(tl.float32) * scale_x
    return u0, u1, u2, xp


@triton.autotune(configs=_configs(), key=["N", "L", "K", "HAS_PAD", "SAVE_C"])
@triton.jit
def _sru_forward_kernel(U, X, WC, BIAS, C0, MASK_C, MASK_PAD, H, C_SEQ, C_LAST, scale_x, L, B, N,
                        DIRS: tl.constexpr, D: tl.constexpr, K: tl.constexpr, HAS_MASK_C: tl.constexpr,
                        HAS_PAD: tl.constexpr, USE_TANH: tl.constexpr, SAVE_C: tl.constexpr,
                        BLOCK: tl.constexpr):
    n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = n < N
    b = n // (DIRS * D)
    backward_dir, v_f, v_r, b_f, b_r = _lane_parameters(WC, BIAS, n, valid, DIRS, D)
    c = tl.load(C0 + n, mask=valid, other=0.0).to(tl.float32)
    keep = 1.0
    if HAS_MASK_C:
        keep = tl.load(MASK_C + n, mask=valid, other=0.0).to(tl.float32)
    for i in range(L):
        t = tl.where(backward_dir, L - 1 - i, i).to(tl.int64)
        off = t * N + n
        u0, u1, u2, xp = _load_step(U, X, off, valid, scale_x, K)
        f = _sigmoid(u1 + v_f * c + b_f)
        r = _sigmoid(u2 + v_r * c + b_r)
        c_new = f * c + (1.0 - f) * u0
        if USE_TANH:
            g = _tanh(c_new)
        else:
            g = c_new
        h = xp + (g - xp) * (r * keep)
        if HAS_PAD:
            is_pad = tl.load(MASK_PAD + t * B + b, mask=valid, other=0) != 0
            c_new = tl.where(is_pad, c, c_new)
            h = tl.where(is_pad, 0.0, h)
        tl.store(H + off, h.to(H.dtype.element_ty), mask=valid)
        if SAVE_C:
            tl.store(C_SEQ + off, c_new, mask=valid)
        c = c_new
    tl.store(C_LAST + n, c.to(C_LAST.dtype.element_ty), mask=valid)


@triton.autotune(configs=_configs(), key=["N", "L", "K", "HAS_PAD"])
@triton.jit
def _sru_backward_kernel(U, X, WC, BIAS, C0, MASK_C, MASK_PAD, C_SEQ, GRAD_H, GRAD_C_LAST,
                         GRAD_U, GRAD_X, GRAD_C0, GRAD_PARAMS, scale_x, L, B, N,
                         DIRS: tl.constexpr, D: tl.constexpr, K: tl.constexpr, HAS_MASK_C: tl.constexpr,
                         HAS_PAD: tl.constexpr, USE_TANH: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = n < N
    b = n // (DIRS * D)
    backward_dir, v_f, v_r, b_f, b_r = _lane_parameters(WC, BIAS, n, valid, DIRS, D)
    c0 = tl.load(C0 + n, mask=valid, other=0.0).to(tl.float32)
    keep = 1.0
    if HAS_MASK_C:
        keep = tl.load(MASK_C + n, mask=valid, other=0.0).to(tl.float32)
    carry = tl.load(GRAD_C_LAST + n, mask=valid, other=0.0).to(tl.float32)
    acc_vf = tl.zeros([BLOCK], dtype=tl.float32)
    acc_vr = tl.zeros([BLOCK], dtype=tl.float32)
    acc_bf = tl.zeros([BLOCK], dtype=tl.float32)
    acc_br = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(L):
        # the direction's own step L-1-i, walked backwards; its predecessor is one step earlier
        t = tl.where(backward_dir, i, L - 1 - i).to(tl.int64)
        t_prev = tl.where(backward_dir, t + 1, t - 1)
        off = t * N + n
        has_prev = valid & ((n * 0 + i) < L - 1)
        c_prev = tl.load(C_SEQ + t_prev * N + n, mask=has_prev, other=0.0)
        c_prev = tl.where(has_prev, c_prev, c0)
        c_t = tl.load(C_SEQ + off, mask=valid, other=0.0)
        u0, u1, u2, xp = _load_step(U, X, off, valid, scale_x, K)
        f = _sigmoid(u1 + v_f * c_prev + b_f)
        r = _sigmoid(u2 + v_r * c_prev + b_r)
        gh = tl.load(GRAD_H + off, mask=valid, other=0.0).to(tl.float32)
        if HAS_PAD:
            is_pad = tl.load(MASK_PAD + t * B + b, mask=valid, other=0) != 0
            gh = tl.where(is_pad, 0.0, gh)
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
        tl.store(GRAD_U + off * K, g_u0.to(out_ty), mask=valid)
        tl.store(GRAD_U + off * K + 1, g_f_pre.to(out_ty), mask=valid)
        tl.store(GRAD_U + off * K + 2, g_r_pre.to(out_ty), mask=valid)
        if K == 4:
            tl.store(GRAD_U + off * K + 3, g_highway.to(out_ty), mask=valid)
        else:
            tl.store(GRAD_X + off, (g_highway * scale_x).to(GRAD_X.dtype.element_ty), mask=valid)
        acc_vf += g_f_pre * c_prev
        acc_vr += g_r_pre * c_prev
        acc_bf += g_f_pre
        acc_br += g_r_pre
    tl.store(GRAD_C0 + n, carry, mask=valid)
    tl.store(GRAD_PARAMS + n, acc_vf, mask=valid)
    tl.store(GRAD_PARAMS + N + n, acc_vr, mask=valid)
    tl.store(GRAD_PARAMS + 2 * N + n, acc_bf, mask=valid)
    tl.store(GRAD_PARAMS + 3 * N + n, acc_br, mask=valid)


def _grid(meta, N):
    return (triton.cdiv(N, meta["BLOCK"]),)


class SRURecurrenceTriton(torch.autograd.Function):
    """Saves U, x (only when it is the highway term), c0, the masks and the fp32 states c."""

    @staticmethod
    def forward(ctx, U, x, weight_c, bias, c0, hidden_size, dirs, scale_x, mask_c, mask_pad, use_tanh):
        L, B = U.shape[0], U.shape[1]
        D, N = hidden_size, B * dirs * hidden_size
        K = U.shape[-1] // (dirs * D)
        U = U.contiguous()
        x = x.contiguous() if K == 3 else U
        mask_c = mask_c.to(U.dtype).contiguous() if mask_c is not None else None
        pad = mask_pad.to(torch.int8).contiguous() if mask_pad is not None else None
        c0 = c0.contiguous()
        weight_c, bias = weight_c.contiguous(), bias.contiguous()
        save_c = any(ctx.needs_input_grad)
        h = torch.empty(L, B, dirs * D, dtype=U.dtype, device=U.device)
        c_seq = torch.empty(L, B, dirs * D, dtype=torch.float32, device=U.device) if save_c else h
        c_last = torch.empty(B, dirs * D, dtype=U.dtype, device=U.device)
        _sru_forward_kernel[lambda meta: _grid(meta, N)](
            U, x, weight_c, bias, c0, mask_c if mask_c is not None else c0, pad if pad is not None else c0,
            h, c_seq, c_last, float(scale_x), L, B, N, DIRS=dirs, D=D, K=K, HAS_MASK_C=mask_c is not None,
            HAS_PAD=pad is not None, USE_TANH=use_tanh, SAVE_C=save_c)
        ctx.save_for_backward(U, x if K == 3 else None, weight_c, bias, c0, mask_c, pad, c_seq)
        ctx.meta = (L, B, N, dirs, D, K, float(scale_x), use_tanh)
        return h, c_last

    @staticmethod
    def backward(ctx, grad_h, grad_c_last):
        U, x, weight_c, bias, c0, mask_c, pad, c_seq = ctx.saved_tensors
        L, B, N, dirs, D, K, scale_x, use_tanh = ctx.meta
        grad_h = torch.zeros(L, B, dirs * D, dtype=U.dtype, device=U.device) if grad_h is None else grad_h.contiguous()
        grad_c_last = torch.zeros_like(c0) if grad_c_last is None else grad_c_last.contiguous()
        grad_U = torch.empty_like(U)
        grad_x = torch.empty_like(x) if K == 3 else None
        grad_c0 = torch.empty(B, dirs * D, dtype=torch.float32, device=U.device)
        grad_params = torch.empty(4, N, dtype=torch.float32, device=U.device)
        _sru_backward_kernel[lambda meta: _grid(meta, N)](
            U, x if K == 3 else U, weight_c, bias, c0, mask_c if mask_c is not None else c0,
            pad if pad is not None else c0, c_seq, grad_h, grad_c_last, grad_U,
            grad_x if grad_x is not None else grad_U, grad_c0, grad_params, scale_x, L, B, N,
            DIRS=dirs, D=D, K=K, HAS_MASK_C=mask_c is not None, HAS_PAD=pad is not None, USE_TANH=use_tanh)
        sums = grad_params.view(4, B, dirs * D).sum(1)
        grad_wc = sums[:2].reshape(-1).to(weight_c.dtype) if ctx.needs_input_grad[2] else None
        grad_bias = sums[2:].reshape(-1).to(bias.dtype) if ctx.needs_input_grad[3] else None
        return (grad_U, grad_x, grad_wc, grad_bias, grad_c0.to(c0.dtype), None, None, None, None, None, None)


def sru_recurrence_triton(U: torch.Tensor, x: torch.Tensor | None, weight_c: torch.Tensor, bias: torch.Tensor,
                          c0: torch.Tensor, hidden_size: int, bidirectional: bool = False, scale_x: float = 1.0,
                          mask_c: torch.Tensor | None = None, mask_pad: torch.Tensor | None = None,
                          use_tanh: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``naive.sru_recurrence_naive``; fp32/fp16/bf16, fp32 inside."""
    dirs = 2 if bidirectional else 1
    return SRURecurrenceTriton.apply(U, x, weight_c, bias, c0, hidden_size, dirs, float(scale_x), mask_c,
                                     mask_pad, use_tanh)
