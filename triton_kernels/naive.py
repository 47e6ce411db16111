"""The SRU elementwise recurrence in plain PyTorch, one time step at a time: the reference.

Every other implementation (``torch_fast``, the Triton kernels) is tested against this one; it is
written to be read next to the papers, not to be fast. Autograd differentiates it.

Shapes (``k`` = 3, or 4 when the highway term is a projection):
    U        [L, B, dirs * d * k]   x W, laid out (dir, unit, k): candidate, forget, reset[, highway]
    x        [L, B, dirs * d]       the layer input (the highway term when k == 3)
    weight_c [2 * dirs * d]         (forget, reset) x (dir, unit): the vector recurrence weights v
    bias     [2 * dirs * d]         (forget, reset) x (dir, unit)
    c0       [B, dirs * d]
    mask_c   [B, dirs * d]          dropout on the recurrent output, shared over time (or None)
    mask_pad [L, B]                 True/nonzero at padding: the state carries over, the output is 0
Returns h [L, B, dirs * d] and the last state c [B, dirs * d] (the state after the last step of
each direction, i.e. after t = 0 for the backward direction).
"""

from __future__ import annotations

import torch


def sru_recurrence_naive(U: torch.Tensor, x: torch.Tensor | None, weight_c: torch.Tensor, bias: torch.Tensor,
                         c0: torch.Tensor, hidden_size: int, bidirectional: bool = False, scale_x: float = 1.0,
                         mask_c: torch.Tensor | None = None, mask_pad: torch.Tensor | None = None,
                         use_tanh: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    L, B = U.shape[0], U.shape[1]
    dirs, d = (2 if bidirectional else 1), hidden_size
    k = U.shape[-1] // (dirs * d)
    U = U.reshape(L, B, dirs, d, k)
    v_f, v_r = weight_c.view(2, dirs, d)
    b_f, b_r = bias.view(2, dirs, d)
    highway = U[..., 3] if k == 4 else x.reshape(L, B, dirs, d) * scale_x
    c_init = c0.reshape(B, dirs, d)
    keep = None if mask_c is None else mask_c.reshape(B, dirs, d)
    pad = None if mask_pad is None else mask_pad.reshape(L, B, 1).bool()
    h = [[None] * L for _ in range(dirs)]
    c_last = []
    for di in range(dirs):
        c = c_init[:, di]
        steps = range(L) if di == 0 else range(L - 1, -1, -1)
        for t in steps:
            u, xt = U[t, :, di], highway[t, :, di]
            f = torch.sigmoid(u[..., 1] + v_f[di] * c + b_f[di])
            r = torch.sigmoid(u[..., 2] + v_r[di] * c + b_r[di])
            c_new = f * c + (1 - f) * u[..., 0]
            g = torch.tanh(c_new) if use_tanh else c_new
            gated = (g - xt) * r if keep is None else (g - xt) * keep[:, di] * r
            h_t = xt + gated
            if pad is not None:
                c_new = torch.where(pad[t], c, c_new)
                h_t = torch.where(pad[t], torch.zeros_like(h_t), h_t)
            c = c_new
            h[di][t] = h_t
        c_last.append(c)
    out = torch.stack([torch.stack(h[di]) for di in range(dirs)], dim=2)
    return out.reshape(L, B, dirs * d), torch.stack(c_last, dim=1).reshape(B, dirs * d)
