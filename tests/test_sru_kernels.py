"""The Triton SRU kernels without a GPU: compiled for sm_80/sm_90 by Triton's own toolchain, and their
launch logic (no-grad path, autotune key, planar layout, mixed dtypes, backend fallback) run
interpreted (TRITON_INTERPRET=1, set by conftest)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import ROOT
from lrnn_lightning.modules import sru as sru_module
from lrnn_lightning.modules.sru import SRU
from test_sru import assert_same, make_inputs, run
from triton_kernels.naive import sru_recurrence_naive

triton = pytest.importorskip("triton", reason="triton is a dependency on Linux only")


def test_every_kernel_variant_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    """Every flag x dtype combination the module can launch (and the JIT's integer specializations),
    compiled to cubin for Ampere and Hopper, outside the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1")
    out = tmp_path / "aot.json"
    proc = subprocess.run([sys.executable, "-m", "triton_kernels.aot", "--arch", "80", "90", "--jobs", "2",
                           "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    results = report["results"]
    names = {r["variant"] for r in results}
    # both kernels, both K, the three dtypes, bf16 U with an fp32 input, every flag
    for part in ("forward-K3-fp32-xfp32", "forward-K4-bf16-xbf16", "forward-K3-bf16-xfp32-pts",
                 "backward-K3-fp16-xfp32-pt", "backward-K4-fp16-xfp16", "-dirs1", "-dodd", "-L1"):
        assert any(part in n for n in names), part
    assert {r["arch"] for r in results} == {80, 90}
    assert all(r["ok"] for r in results)
    for r in results:
        assert r["usage"]["spill_bytes"] == 0 and r["usage"]["registers"] <= 255, r
        # the time loop is software pipelined: its loads are asynchronous copies (L = 1 has no loop)
        assert r["ptx"]["cp_async"] > 0 or r["variant"].endswith("-L1"), r["variant"]


class _Allocations(TorchDispatchMode):
    """Records the shape and dtype of every tensor allocated by ``torch.empty``-like ops."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.empty, torch.ops.aten.empty_like, torch.ops.aten.empty_strided):
            self.shapes.append((tuple(out.shape), out.dtype))
        return out


def test_no_state_sequence_is_written_without_gradient():
    from triton_kernels.sru import sru_recurrence_triton

    args, kw = make_inputs(6, 3, 8, True, 3, False, False, False)
    seq = (6, 3, 16)
    with _Allocations() as grad_mode:
        h_grad, c_grad = sru_recurrence_triton(*(args[n] for n in ("U", "x", "weight_c", "bias", "c0")), **kw)
    with torch.no_grad(), _Allocations() as no_grad:
        h, c = sru_recurrence_triton(*(args[n] for n in ("U", "x", "weight_c", "bias", "c0")), **kw)
    # with a gradient: h and the fp32 states; without: h alone, and no autograd record
    assert [s for s in grad_mode.shapes if s[0] == seq] == [(seq, torch.float32)] * 2
    assert [s for s in no_grad.shapes if s[0] == seq] == [(seq, torch.float32)]
    assert h.grad_fn is None and h_grad.grad_fn is not None
    torch.testing.assert_close(h, h_grad.detach())
    torch.testing.assert_close(c, c_grad.detach())
    # inputs that need no gradient, grad mode on: the same lean path
    plain = {n: (t.detach() if t is not None else None) for n, t in args.items()}
    with _Allocations() as frozen:
        sru_recurrence_triton(*(plain[n] for n in ("U", "x", "weight_c", "bias", "c0")), **kw)
    assert [s for s in frozen.shapes if s[0] == seq] == [(seq, torch.float32)]


def test_autotuning_is_not_keyed_on_the_sequence_length():
    from triton_kernels import sru as kernels

    for kernel in (kernels._sru_forward_kernel, kernels._sru_backward_kernel):
        keys = list(getattr(kernel, "keys", None) or kernel.key)
        assert "L" not in keys and {"B", "D", "K"} <= set(keys)


@pytest.mark.parametrize("bi,inp,hidden,tanh", [(False, 8, 8, False), (True, 6, 4, True), (True, 8, 4, False)])
def test_module_triton_path_planar_layout_matches_torch(bi, inp, hidden, tanh):
    """The module multiplies with a column-permuted weight so that U comes out planar; same
    outputs and gradients as the torch path (K = 3 and the 4-matrix highway projection)."""
    torch.manual_seed(0)
    sru = SRU(inp, hidden, num_layers=2, bidirectional=bi, use_tanh=tanh, rescale=True, highway_bias=-0.5)
    x = torch.randn(5, 3, inp, requires_grad=True)
    pad = torch.zeros(5, 3, dtype=torch.bool)
    pad[3:, 1] = True
    results = []
    for backend in ("torch", "triton"):
        sru.backend = backend
        h, c = sru(x, mask_pad=pad)
        assert all(layer.last_backend == backend for layer in sru.layers)
        grads = torch.autograd.grad(h.square().sum() + c.sum(), [x, *[p for p in sru.parameters() if p.requires_grad]])
        results.append((h, c, grads))
    (h1, c1, g1), (h2, c2, g2) = results
    torch.testing.assert_close(h2, h1, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(c2, c1, atol=2e-5, rtol=1e-4)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, atol=5e-5, rtol=1e-4)


def test_planar_input_and_gradient_layout():
    from triton_kernels.sru import from_planar, sru_recurrence_triton, to_planar

    args, kw = make_inputs(4, 2, 5, True, 4, False, True, True)
    planar = to_planar(args["U"].detach(), 2, 5).requires_grad_()
    h, c = sru_recurrence_triton(planar, None, args["weight_c"], args["bias"], args["c0"], planar=True, **kw)
    ref_h, ref_c = sru_recurrence_naive(args["U"], None, args["weight_c"], args["bias"], args["c0"], **kw)
    torch.testing.assert_close(h, ref_h, atol=2e-5, rtol=1e-4)
    (g_planar,) = torch.autograd.grad(h.sum() + c.sum(), [planar])
    (g_ref,) = torch.autograd.grad(ref_h.sum() + ref_c.sum(), [args["U"]])
    assert g_planar.shape == planar.shape
    torch.testing.assert_close(from_planar(g_planar), g_ref, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="planar U must be"):
        sru_recurrence_triton(args["U"], None, args["weight_c"], args["bias"], args["c0"], planar=True, **kw)


def test_mixed_dtypes_bf16_U_with_fp32_input_and_parameters():
    """What autocast produces: U in bf16, the layer input, v, b and c0 in fp32."""
    from triton_kernels.sru import sru_recurrence_triton

    args, kw = make_inputs(5, 2, 8, True, 3, False, True, True)
    mixed = dict(args, U=args["U"].detach().bfloat16().requires_grad_())
    ref_args = dict(args, U=mixed["U"].detach().float().requires_grad_())
    ref = run(sru_recurrence_naive, ref_args, kw, False)
    out = run(sru_recurrence_triton, mixed, kw, False)
    assert out[0].dtype == torch.bfloat16 and out[1].dtype == torch.float32
    grads = dict(zip([n for n, t in mixed.items() if t is not None and t.requires_grad], out[2]))
    assert grads["U"].dtype == torch.bfloat16 and grads["x"].dtype == torch.float32
    assert grads["weight_c"].dtype == torch.float32
    assert_same(ref, out, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("which", ["h_only", "c_only"])
def test_single_step_and_missing_output_gradients(which):
    """L = 1, and a loss on h alone (grad_c_last is None) or on c alone (grad_h is None)."""
    from triton_kernels.sru import sru_recurrence_triton

    for L in (1, 3):
        args, kw = make_inputs(L, 2, 4, True, 3, False, False, False, seed=L)
        wrt = [t for t in args.values() if t is not None and t.requires_grad]
        grads = []
        for fn in (sru_recurrence_naive, sru_recurrence_triton):
            h, c = fn(args["U"], args["x"], args["weight_c"], args["bias"], args["c0"], **kw)
            loss = h.square().sum() if which == "h_only" else c.square().sum()
            got = torch.autograd.grad(loss, wrt, allow_unused=True)
            grads.append([torch.zeros_like(t) if g is None else g for g, t in zip(got, wrt)])
        for a, b in zip(*grads):
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)


def test_auto_backend_falls_back_to_torch_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    monkeypatch.setattr(sru_module, "_warned_no_triton", False)
    assert not sru_module.triton_available()
    with pytest.warns(UserWarning, match="triton is not installed"):
        assert sru_module.resolve_backend("auto", torch.device("cuda"), torch.float32) == "torch"
    assert sru_module.resolve_backend("auto", torch.device("cpu"), torch.float32) == "torch"
    with pytest.raises(RuntimeError, match="pip install triton"):
        sru_module.resolve_backend("triton", torch.device("cuda"), torch.float32)


def test_sru_trains_on_cpu_where_triton_cannot_be_imported(tmp_path):
    """A machine without triton (macOS, Windows): the module imports and runs its torch path."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from lrnn_lightning.modules.sru import SRU\n"
        "m = SRU(4, 4, num_layers=2)\n"
        "h, c = m(torch.randn(3, 2, 4))\n"
        "(h.sum() + c.sum()).backward()\n"
        "print('ok', m.layers[0].last_backend, 'triton_kernels.sru' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "torch", "False"]
