"""SRU, the Simple Recurrent Unit (Lei et al. 2017 "Training RNNs as Fast as CNNs"; EMNLP 2018).

Per layer, every matrix product runs over the whole sequence at once, ``U = x W`` with, per unit,
a candidate, a forget and a reset column (and a highway projection when sizes differ); only the
elementwise recurrence is sequential:

    f_t = sigmoid(U_f x_t + v_f * c_{t-1} + b_f)        (2017 form, ``v1=True``: v_f = v_r = 0)
    r_t = sigmoid(U_r x_t + v_r * c_{t-1} + b_r)
    c_t = f_t * c_{t-1} + (1 - f_t) * (W x_t)
    h_t = r_t * g(c_t) + (1 - r_t) * x'_t               (highway; x' = alpha x or a 4th projection)

Parameters, shapes and initialization follow the ``sru`` package 2.6.0, so that
``SRU.from_reference`` copies a checkpoint as is. The recurrence runs on one of three backends
(the only place that imports ``triton_kernels``): ``triton`` (CUDA), ``torch`` (vectorized with a
hand-written backward; the CPU path) and ``auto`` (Triton on CUDA, PyTorch elsewhere).
"""

from __future__ import annotations

import math
import os
import sys
import warnings

import torch
from torch import nn

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> bool:
    """Whether the Triton kernels can be imported (triton is a dependency on Linux only)."""
    if sys.modules.get("triton") is not None:  # imported already: no import machinery per call
        return True
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_warned_no_triton = False


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that runs for tensors on ``device``: ``auto`` is Triton on CUDA when triton is
    installed (with one warning when it is not), PyTorch elsewhere and for float64."""
    global _warned_no_triton
    if backend == "auto":
        if device.type != "cuda" or dtype == torch.float64:
            return "torch"
        if not triton_available():
            if not _warned_no_triton:
                warnings.warn("SRU backend 'auto': triton is not installed, the recurrence runs in PyTorch "
                              "(slower on GPU); `pip install triton` to use the kernels", stacklevel=3)
                _warned_no_triton = True
            return "torch"
        return "triton"
    if backend == "triton":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"SRU backend 'triton' needs CUDA tensors, got {device.type}: use backend='torch' or "
                               "'auto' (or set TRITON_INTERPRET=1 before importing to run the kernels interpreted)")
        if not triton_available():
            raise RuntimeError("SRU backend 'triton' needs the triton package: `pip install triton`, or use "
                               "backend='auto' / 'torch'")
    return backend


_KERNELS = None


def _kernels():
    """``triton_kernels.sru``, imported on the first Triton call (it needs triton), then kept."""
    global _KERNELS
    if _KERNELS is None:
        import triton_kernels.sru as kernels

        _KERNELS = kernels
    return _KERNELS


class SRULayer(nn.Module):
    """One SRU layer (uni- or bidirectional). ``dropout`` is variational: one mask per sequence on
    the recurrent output ``g(c_t) - x'_t``, shared over time."""

    def __init__(self, input_size: int, hidden_size: int, dropout: float = 0.0, bidirectional: bool = False,
                 projection_size: int = 0, use_tanh: bool = False, highway_bias: float = 0.0, rescale: bool = False,
                 v1: bool = False, layer_norm: bool = False, normalize_after: bool = False, backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown SRU backend '{backend}': use one of {', '.join(BACKENDS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SRU dropout must be in [0, 1), got {dropout}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions
        self.dropout, self.use_tanh, self.highway_bias = dropout, use_tanh, highway_bias
        self.rescale, self.v1, self.normalize_after, self.backend = rescale, v1, normalize_after, backend
        # a factorized W only when it saves something
        self.projection_size = projection_size if 0 < projection_size < min(input_size, self.output_size) else 0
        # the highway term needs a 4th projection when x and h differ in size
        self.num_matrices = 3 if input_size == self.output_size else 4
        inner = self.projection_size or input_size
        self.weight_proj = nn.Parameter(torch.empty(input_size, self.projection_size)) if self.projection_size else None
        self.weight = nn.Parameter(torch.empty(inner, self.output_size * self.num_matrices))
        self.weight_c = nn.Parameter(torch.empty(2 * self.output_size), requires_grad=not v1)
        self.bias = nn.Parameter(torch.empty(2 * self.output_size))
        self.register_buffer("scale_x", torch.ones(1))
        # which backend ran the last forward ("triton" or "torch"; None before the first)
        self.last_backend: str | None = None
        self.layer_norm = None
        if layer_norm:
            self.layer_norm = nn.LayerNorm(self.output_size if normalize_after else input_size)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Unit-variance activations (the 2018 paper's initialization): W ~ U with Var 1/d_in, v with
        Var 1/2 and the gate columns of W scaled by sqrt(1/2), reset-gate bias = highway_bias, and
        the highway term scaled by alpha = sqrt(1 + 2 exp(highway_bias)) when ``rescale``."""
        out = self.output_size
        self.bias.zero_()
        self.bias[out:] = self.highway_bias
        alpha = math.sqrt(1 + 2 * math.exp(self.highway_bias))
        self.scale_x.fill_(alpha if self.rescale else 1.0)
        self.scale = float(self.scale_x)  # a Python float: no device sync per forward
        d_in = self.weight.shape[0]
        self.weight.uniform_(-math.sqrt(3 / d_in), math.sqrt(3 / d_in))
        if self.weight_proj is not None:
            bound = math.sqrt(3 / self.weight_proj.shape[0])
            self.weight_proj.uniform_(-bound, bound)
        w = self.weight.view(d_in, self.num_directions, self.hidden_size, self.num_matrices)
        if self.dropout > 0:
            w[..., 0] *= math.sqrt(1 - self.dropout)
        if self.layer_norm is not None:
            w *= 0.1
        if self.rescale and self.num_matrices == 4:
            w[..., 3] *= alpha
        if self.v1:
            self.weight_c.zero_()
        else:
            self.weight_c.uniform_(-math.sqrt(3), math.sqrt(3)).mul_(math.sqrt(0.5))
            w[..., 1] *= math.sqrt(0.5)
            w[..., 2] *= math.sqrt(0.5)
        if self.layer_norm is not None:
            self.layer_norm.reset_parameters()

    def forward(self, x: torch.Tensor, c0: torch.Tensor | None = None,
                mask_pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        L, B, _ = x.shape
        residual = x
        if self.layer_norm is not None and not self.normalize_after:
            x = self.layer_norm(x)
        flat = x.reshape(L * B, self.input_size)
        if self.weight_proj is not None:
            flat = flat @ self.weight_proj
        mask_c = None
        if self.training and self.dropout > 0:
            mask_c = x.new_empty(B, self.output_size).bernoulli_(1 - self.dropout).div_(1 - self.dropout)
        highway = residual if self.num_matrices == 3 else None
        self.last_backend = resolve_backend(self.backend, x.device, flat.dtype)
        if self.last_backend == "triton":
            kernels = _kernels()
            # the kernels read U as one plane per projection ([L, B, K, dirs*D], unit stride per plane):
            # the same product with the weight's columns permuted, no copy of U; c0=None is a zero state
            # the kernels start from (nothing allocated)
            U = (flat @ kernels.planar_weight(self.weight, self.num_directions, self.hidden_size)).view(
                L, B, self.num_matrices, self.output_size)
            h, c = kernels.sru_recurrence_triton(U, highway, self.weight_c, self.bias, c0, self.hidden_size,
                                                 self.bidirectional, self.scale, mask_c, mask_pad, self.use_tanh,
                                                 planar=True)
        else:
            from triton_kernels.torch_fast import sru_recurrence_torch

            if c0 is None:
                c0 = x.new_zeros(B, self.output_size)
            U = (flat @ self.weight).view(L, B, -1)
            h, c = sru_recurrence_torch(U, highway, self.weight_c, self.bias, c0, self.hidden_size,
                                        self.bidirectional, self.scale, mask_c, mask_pad, self.use_tanh)
        if self.layer_norm is not None and self.normalize_after:
            h = self.layer_norm(h)
        return h, c

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.scale = float(self.scale_x)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, dropout={self.dropout}, bidirectional={self.bidirectional}, "
                f"v1={self.v1}, highway_bias={self.highway_bias}, rescale={self.rescale}, backend={self.backend}")


class SRU(nn.Module):
    """A stack of SRU layers, with the ``sru`` package's interface:
    ``forward(x[L, B, D], c0=None, mask_pad=None) -> (h[L, B, dirs*H], c[num_layers, B, dirs*H])``.

    ``dropout`` applies inside every layer but the last (as the reference). ``mask_pad[L, B]`` is
    nonzero at padding: there the state carries over and the output is zero. Also a recurrent
    *core* for the language models: ``core(x, state) -> (h, state)`` with ``state = c``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 2, dropout: float = 0.0,
                 bidirectional: bool = False, highway_bias: float = 0.0, rescale: bool = False, v1: bool = False,
                 layer_norm: bool = False, normalize_after: bool = False, projection_size: int = 0,
                 use_tanh: bool = False, backend: str = "auto"):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"SRU needs num_layers >= 1, got {num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bidirectional = bidirectional
        self.output_size = hidden_size * (2 if bidirectional else 1)
        self.layers = nn.ModuleList(
            SRULayer(input_size if i == 0 else self.output_size, hidden_size,
                     dropout=dropout if i + 1 < num_layers else 0.0, bidirectional=bidirectional,
                     projection_size=projection_size, use_tanh=use_tanh, highway_bias=highway_bias, rescale=rescale,
                     v1=v1, layer_norm=layer_norm, normalize_after=normalize_after, backend=backend)
            for i in range(num_layers))

    @property
    def backend(self) -> str:
        return self.layers[0].backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"unknown SRU backend '{value}': use one of {', '.join(BACKENDS)}")
        for layer in self.layers:
            layer.backend = value

    def forward(self, x: torch.Tensor, c0: torch.Tensor | None = None,
                mask_pad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"SRU expects x[L, B, {self.input_size}], got {tuple(x.shape)}")
        if c0 is not None and tuple(c0.shape) != (self.num_layers, x.shape[1], self.output_size):
            raise ValueError(f"SRU expects c0[{self.num_layers}, {x.shape[1]}, {self.output_size}], "
                             f"got {tuple(c0.shape)}")
        if mask_pad is not None and tuple(mask_pad.shape) != tuple(x.shape[:2]):
            raise ValueError(f"SRU expects mask_pad[{x.shape[0]}, {x.shape[1]}], got {tuple(mask_pad.shape)}")
        states = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, None if c0 is None else c0[i], mask_pad)
            states.append(c)
        return x, torch.stack(states)

    @classmethod
    def from_reference(cls, module: nn.Module, backend: str = "auto") -> "SRU":
        """An equivalent SRU built from an ``sru.SRU`` (package 2.6.0) instance, weights copied."""
        cells = list(module.rnn_lst)
        first = cells[0]
        unsupported = [
            (getattr(module, "input_to_hidden", None) is not None, "proj_input_to_hidden_first=True"),
            (any(c.custom_m is not None for c in cells), "custom_m"),
            (not module.has_skip_term, "has_skip_term=False"),
            (module.rnn_dropout > 0, "rnn_dropout > 0 (deprecated in sru)"),
        ]
        for bad, what in unsupported:
            if bad:
                raise ValueError(f"SRU.from_reference: {what} has no equivalent here; build the sru.SRU without it")
        ours = cls(module.input_size, module.hidden_size, num_layers=module.num_layers, dropout=module.dropout,
                   bidirectional=module.bidirectional, highway_bias=first.highway_bias, rescale=first.rescale,
                   v1=first.v1, layer_norm=module.use_layer_norm, normalize_after=first.normalize_after,
                   projection_size=module.projection_size, use_tanh=first.activation_type == 1, backend=backend)
        state = {key.replace("rnn_lst.", "layers.", 1): value for key, value in module.state_dict().items()}
        ours.load_state_dict(state)
        return ours.to(next(module.parameters()).device)
