"""The SRU recurrence in PyTorch for CPUs (and any device without Triton): same maths as ``naive``.

Everything that does not depend on the previous state is computed for the whole sequence at once;
the time loop keeps only what must be sequential, one to three fused ops per step, and the
backward pass is written by hand so that autograd records no per-step graph:

* forward: ``f_t = sigmoid(u1_t + v_f c_{t-1})`` and ``c_t = lerp(u0_t, c_{t-1}, f_t)``. In the
  2017 form (``v_f = 0``) the gates are precomputed and the loop is a single ``lerp`` per step.
* ``r_t``, ``h_t`` and every gradient but ``dL/dc`` are then vectorized over time.
* backward: ``dL/dc_{t-1} = A_t dL/dc_t + R_t``, a linear recurrence (two ops per step) whatever
  the form, with ``A_t = f_t + (c_{t-1} - u0_t) f_t (1 - f_t) v_f`` and ``R_t = v_r dL/dr~_t``.

Padding sets the forget gate to exactly 1 (``u1 = +inf``): ``lerp`` then returns ``c_{t-1}``
bit for bit and every gradient through the step is zero, as the reference's ``where``.
The backward direction is the forward one run on the time-reversed sequence.

The hand-written backward is differentiable once: a double backward (``create_graph=True``) raises.
It would need U and x saved (40-60% more saved memory per layer for a rare use); the Triton path,
which saves them anyway, takes the reference's gradients there, and ``naive`` is differentiable twice.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def _flip_backward_direction(t: torch.Tensor) -> torch.Tensor:
    """t[L, B, 2, ...]: reverse time for direction 1 only (an involution)."""
    return torch.cat([t[:, :, :1], t[:, :, 1:].flip(0)], dim=2)


class _SRURecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, U, x, weight_c, bias, c0, hidden_size, dirs, scale_x, mask_c, mask_pad, use_tanh):
        L, B = U.shape[0], U.shape[1]
        d = hidden_size
        k = U.shape[-1] // (dirs * d)
        dtype = U.dtype
        compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        U5 = U.reshape(L, B, dirs, d, k).to(compute)
        v_f, v_r = weight_c.to(compute).view(2, dirs, d)
        b_f, b_r = bias.to(compute).view(2, dirs, d)
        u0 = U5[..., 0]
        u1 = U5[..., 1] + b_f
        u2 = U5[..., 2] + b_r
        xp = U5[..., 3] if k == 4 else x.reshape(L, B, dirs, d).to(compute) * scale_x
        pad = None
        if mask_pad is not None:
            pad = mask_pad.reshape(L, B, 1, 1).bool().expand(L, B, dirs, 1)
        if dirs == 2:
            u0, u1, u2, xp = (_flip_backward_direction(t) for t in (u0, u1, u2, xp))
            pad = None if pad is None else _flip_backward_direction(pad)
        u0 = u0.contiguous()
        if pad is not None:
            u1 = u1.masked_fill(pad, float("inf"))
        c_init = c0.reshape(B, dirs, d).to(compute)

        c = torch.empty(L, B, dirs, d, dtype=compute, device=U.device)
        # (the test reads v: not under torch.compile, where the general loop computes the same)
        linear = not weight_c.requires_grad and not torch.compiler.is_compiling() and not bool(v_f.any())
        if linear:  # the 2017 form: gates from the input only
            f = torch.sigmoid(u1)
            prev = c_init
            for t in range(L):
                torch.lerp(u0[t], prev, f[t], out=c[t])
                prev = c[t]
        else:
            f = torch.empty_like(c)
            prev = c_init
            for t in range(L):
                torch.sigmoid(torch.addcmul(u1[t], v_f, prev), out=f[t])
                torch.lerp(u0[t], prev, f[t], out=c[t])
                prev = c[t]
        c_prev = torch.cat([c_init[None], c[:-1]])
        r = torch.sigmoid(torch.addcmul(u2, v_r, c_prev))
        g = torch.tanh(c) if use_tanh else c
        keep = r if mask_c is None else r * mask_c.reshape(B, dirs, d).to(compute)
        h = torch.lerp(xp, g, keep)
        if pad is not None:
            h = h.masked_fill(pad, 0.0)
        c_last = c[-1].reshape(B, dirs * d)
        ctx.save_for_backward(u0, f, r, c, c_init, xp, v_f, v_r, mask_c, pad)
        ctx.meta = (L, B, dirs, d, k, scale_x, use_tanh, dtype, x is not None and k == 3)
        if dirs == 2:
            h = _flip_backward_direction(h)
        return h.reshape(L, B, dirs * d).to(dtype), c_last.to(dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_c_last):
        u0, f, r, c, c_init, xp, v_f, v_r, mask_c, pad = ctx.saved_tensors
        L, B, dirs, d, k, scale_x, use_tanh, dtype, has_x = ctx.meta
        compute = c.dtype
        gh = torch.zeros(L, B, dirs, d, dtype=compute, device=c.device) if grad_h is None \
            else grad_h.reshape(L, B, dirs, d).to(compute)
        if dirs == 2:
            gh = _flip_backward_direction(gh)
        if pad is not None:
            gh = gh.masked_fill(pad, 0.0)
        m = None if mask_c is None else mask_c.reshape(B, dirs, d).to(compute)
        g = torch.tanh(c) if use_tanh else c
        c_prev = torch.cat([c_init[None], c[:-1]])

        keep = r if m is None else r * m
        local = gh * keep
        if use_tanh:
            local = local * (1 - g * g)
        g_highway = gh * (1 - keep)
        g_r = gh * (g - xp)
        if m is not None:
            g_r = g_r * m
        g_r_pre = g_r * r * (1 - r)
        f_grad = f * (1 - f)
        diff = c_prev - u0
        A = torch.addcmul(f, diff * f_grad, v_f)
        R = g_r_pre * v_r

        g_c = torch.empty_like(c)
        carry = torch.zeros(B, dirs, d, dtype=compute, device=c.device) if grad_c_last is None \
            else grad_c_last.reshape(B, dirs, d).to(compute)
        for t in range(L - 1, -1, -1):
            torch.add(local[t], carry, out=g_c[t])
            carry = torch.addcmul(R[t], A[t], g_c[t])
        g_c0 = carry

        g_u0 = g_c * (1 - f)
        g_f_pre = g_c * diff * f_grad
        parts = [g_u0, g_f_pre, g_r_pre] + ([g_highway] if k == 4 else [])
        g_U = torch.stack(parts, dim=-1)
        if dirs == 2:
            g_U = _flip_backward_direction(g_U)
        g_U = g_U.reshape(L, B, dirs * d * k).to(dtype)
        g_x = None
        if has_x and ctx.needs_input_grad[1]:
            g_x = g_highway * scale_x
            if dirs == 2:
                g_x = _flip_backward_direction(g_x)
            g_x = g_x.reshape(L, B, dirs * d).to(dtype)
        g_wc = None
        if ctx.needs_input_grad[2]:
            g_wc = torch.stack([(g_f_pre * c_prev).sum((0, 1)), (g_r_pre * c_prev).sum((0, 1))]).reshape(-1).to(dtype)
        g_bias = None
        if ctx.needs_input_grad[3]:
            g_bias = torch.stack([g_f_pre.sum((0, 1)), g_r_pre.sum((0, 1))]).reshape(-1).to(dtype)
        g_c0 = g_c0.reshape(B, dirs * d).to(dtype) if ctx.needs_input_grad[4] else None
        return g_U, g_x, g_wc, g_bias, g_c0, None, None, None, None, None, None


def sru_recurrence_torch(U: torch.Tensor, x: torch.Tensor | None, weight_c: torch.Tensor, bias: torch.Tensor,
                         c0: torch.Tensor, hidden_size: int, bidirectional: bool = False, scale_x: float = 1.0,
                         mask_c: torch.Tensor | None = None, mask_pad: torch.Tensor | None = None,
                         use_tanh: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and results as ``naive.sru_recurrence_naive``."""
    dirs = 2 if bidirectional else 1
    return _SRURecurrence.apply(U, x, weight_c, bias, c0, hidden_size, dirs, float(scale_x), mask_c, mask_pad,
                                use_tanh)
