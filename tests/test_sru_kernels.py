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

from conftest import ROOT, interpreted
from lrnn_lightning.modules import sru as sru_module
from lrnn_lightning.modules.sru import SRU
from test_sru import assert_norm_close, assert_same, make_inputs, run
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
                 "backward-K3-fp16-xfp32-pt", "backward-K4-fp16-xfp16", "-dirs1", "-dodd", "-L1", "-noc0"):
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


@interpreted
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


@interpreted
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


@interpreted
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


@interpreted
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


@interpreted
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


# ---- the launch path: retain_graph, double backward, zero states, torch.compile, direct launch ----

NAMES = ("U", "x", "weight_c", "bias", "c0")


def _wrt(args):
    return [args[n] for n in NAMES if args[n] is not None and args[n].requires_grad]


@interpreted
def test_backward_twice_with_retain_graph_gives_the_same_gradients():
    """A second backward through a retained graph (it used to find the launch cleared)."""
    from triton_kernels.sru import sru_recurrence_triton

    args, kw = make_inputs(4, 2, 4, True, 3, False, True, True)
    h, c = sru_recurrence_triton(*(args[n] for n in NAMES), **kw)
    loss = h.square().sum() + c.sum()
    first = torch.autograd.grad(loss, _wrt(args), retain_graph=True)
    second = torch.autograd.grad(loss, _wrt(args))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    ref = run(sru_recurrence_naive, args, kw, False)[2]
    got = run(sru_recurrence_triton, args, kw, False)[2]
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)


@interpreted
def test_double_backward_takes_the_reference_gradients():
    """``create_graph=True``: the backward kernel is not differentiable, the reference's gradients
    are (``_reference_gradients``): second derivatives checked numerically in float64."""
    from triton_kernels.sru import sru_recurrence_triton

    args, kw = make_inputs(2, 1, 2, True, 3, False, True, True, dtype=torch.float64)
    names = [n for n in NAMES if args[n] is not None and args[n].requires_grad]

    def f(*tensors):
        a = dict(args, **dict(zip(names, tensors)))
        return sru_recurrence_triton(*(a[n] for n in NAMES), use_tanh=True, **kw)

    inputs = [args[n] for n in names]
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)
    # the kernels' own first derivatives against finite differences of their forward (fp32 inside:
    # a step and tolerances at that precision)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-3, atol=1e-3, rtol=1e-3, fast_mode=True)
    # with a graph, the first derivatives equal the kernels' (no graph)
    h, c = f(*(args[n] for n in names))
    with_graph = torch.autograd.grad(h.sum() + c.sum(), _wrt(args), create_graph=True)
    kernels = torch.autograd.grad(h.sum() + c.sum(), _wrt(args))
    assert all(g.requires_grad for g in with_graph)
    for a, b in zip(kernels, with_graph):
        torch.testing.assert_close(b.detach(), a, atol=1e-5, rtol=1e-5)


def test_torch_path_double_backward_raises_instead_of_being_wrong():
    from triton_kernels.torch_fast import sru_recurrence_torch

    args, kw = make_inputs(3, 2, 2, False, 3, False, False, False, dtype=torch.float64)
    h, c = sru_recurrence_torch(*(args[n] for n in NAMES), **kw)
    (g,) = torch.autograd.grad(h.square().sum(), [args["U"]], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


class _Ops(TorchDispatchMode):
    """The aten ops that run below autograd."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@interpreted
def test_zero_initial_state_and_unused_last_state_cost_no_buffer():
    """c0=None (the module's first window) and a last state whose gradient is not taken (detached
    and carried): the kernels start from zero, nothing is allocated or filled for them."""
    from triton_kernels.sru import sru_recurrence_triton

    args, kw = make_inputs(4, 2, 4, True, 3, False, True, True)
    zero = dict(args, c0=torch.zeros_like(args["c0"]))
    h_ref, c_ref = sru_recurrence_triton(*(zero[n] for n in NAMES), **kw)
    g_ref = torch.autograd.grad(h_ref.square().sum(), _wrt(args)[:-1])
    with _Ops() as ops:
        h, c = sru_recurrence_triton(*(args[n] for n in NAMES[:4]), None, **kw)
        g = torch.autograd.grad(h.square().sum(), _wrt(args)[:-1])
    assert not {"zeros", "zeros_like", "new_zeros", "zero_", "fill_"} & set(ops.names), ops.names
    # eager calls launch through the autograd Function, not the custom ops (those cost more host time)
    assert not {"recurrence_forward", "recurrence_backward"} & set(ops.names)
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=0, rtol=0)
    for a, b in zip(g_ref, g):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    # the module passes no c0 to the kernels, and gets the same as with zeros
    torch.manual_seed(0)
    sru = SRU(8, 4, num_layers=2, bidirectional=True, backend="triton")
    x = torch.randn(3, 2, 8)
    torch.testing.assert_close(sru(x), sru(x, c0=torch.zeros(2, 2, 8)), atol=0, rtol=0)


@interpreted
def test_custom_ops_pass_opcheck():
    """The ops torch.compile sees: schema, fake (shape) functions, autograd registration, AOT dispatch."""
    from triton_kernels.sru import _op_backward, _op_forward, pad_bytes, to_planar

    args, kw = make_inputs(3, 2, 4, True, 3, False, True, True)
    U = to_planar(args["U"].detach(), 2, 4).requires_grad_()
    common = (args["x"], args["weight_c"], args["bias"])
    pad = pad_bytes(kw["mask_pad"])
    torch.library.opcheck(_op_forward, (U, *common, args["c0"], kw["mask_c"], pad, 4, 2, 1.3, True, True))
    torch.library.opcheck(_op_forward, (U, *common, None, None, None, 4, 2, 1.0, False, False),
                          test_utils=("test_schema", "test_faketensor"))
    h, c, c_seq = _op_forward(U, *common, args["c0"], kw["mask_c"], pad, 4, 2, 1.3, False, True)
    grad = (torch.randn_like(h), torch.randn_like(c))
    torch.library.opcheck(_op_backward, (U.detach(), args["x"].detach(), args["weight_c"].detach(),
                                         args["bias"].detach(), args["c0"].detach(), kw["mask_c"], pad, c_seq,
                                         *grad, 4, 2, 1.3, False), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend,v1", [pytest.param("triton", False, marks=interpreted), ("torch", False),
                                        ("torch", True)])
def test_module_compiles_without_graph_break(backend, v1):
    """``torch.compile(fullgraph=True)`` (AOT autograd, no Inductor: fast) traces the whole stack, the
    Triton recurrence as the custom op; same outputs and gradients as eager."""
    torch.manual_seed(0)
    sru = SRU(8, 4, num_layers=2, bidirectional=True, v1=v1, backend=backend).eval()
    x = torch.randn(5, 3, 8, requires_grad=True)
    pad = torch.zeros(5, 3, dtype=torch.bool)
    pad[3:, 1] = True
    params = [x, *[p for p in sru.parameters() if p.requires_grad]]
    h0, c0 = sru(x, mask_pad=pad)
    g0 = torch.autograd.grad(h0.square().sum() + c0.sum(), params)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    h, c = torch.compile(sru, fullgraph=True, backend=capture)(x, mask_pad=pad)
    g = torch.autograd.grad(h.square().sum() + c.sum(), params)
    assert len(graphs) == 1
    code = graphs[0].code
    assert ("lrnn_sru.recurrence_forward" in code) == (backend == "triton")
    torch.testing.assert_close(h, h0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(c, c0, atol=1e-6, rtol=1e-6)
    for a, b in zip(g0, g):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_launch_key_separates_every_triton_specialization():
    """The direct launch reuses a compiled kernel for every call with the same ``launch_key``: the key
    must tell apart whatever Triton's JIT specializes on (its own ``specialize_impl``, no GPU needed)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    from triton_kernels.sru import launch_key

    base = torch.zeros(64)
    samples = [1, 2, 16, 17, 32, 2**31 + 16, 2**31 + 1, -1, True, False, 0.5, 1.0, base, base[1:], base[4:],
               base.to(torch.bfloat16), torch.zeros(64, dtype=torch.bool), torch.zeros(64, dtype=torch.int8)]

    def spec(a):
        return native_specialize_impl(BaseBackend, a, False, True, True)

    for a, b in [(a, b) for a in samples for b in samples]:
        if launch_key((a,)) == launch_key((b,)):
            assert spec(a) == spec(b), (a, b)


# ---- CUDA: the compiled kernels (run where a GPU is present) -------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                          reason="needs a CUDA GPU and compiled kernels (TRITON_INTERPRET unset)")


def _cuda_case(L, B, d, bi, k, v1, drop, pad, tanh, dtype, x_dtype=None, seed=0):
    args, kw = make_inputs(L, B, d, bi, k, v1, drop, pad, dtype=dtype, device="cuda", seed=seed)
    if x_dtype is not None and args["x"] is not None:
        args["x"] = args["x"].detach().to(x_dtype).requires_grad_()
        for name in ("weight_c", "bias", "c0"):
            args[name] = args[name].detach().to(x_dtype).requires_grad_(args[name].requires_grad)
    ref_args = {n: (None if t is None else t.detach().double().requires_grad_(t.requires_grad)) for n, t in args.items()}
    ref_kw = dict(kw, mask_c=None if kw["mask_c"] is None else kw["mask_c"].double())
    return args, kw, ref_args, ref_kw


def _check_against_torch(args, kw, ref_args, ref_kw, tanh, tol):
    """The kernels against the torch path in float64 (``ref_*``), in relative norm."""
    from triton_kernels.sru import sru_recurrence_triton
    from triton_kernels.torch_fast import sru_recurrence_torch

    assert_norm_close(run(sru_recurrence_torch, ref_args, ref_kw, tanh), run(sru_recurrence_triton, args, kw, tanh),
                      tol)


def _half_or_fp32_tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-2


@cuda
@pytest.mark.cuda
def test_cuda_every_autotune_config_with_a_partial_last_block():
    from triton_kernels import sru as kernels

    saved = [(k, k.configs) for k in (kernels._sru_forward_kernel, kernels._sru_backward_kernel)]
    try:
        for config in kernels._configs():
            for kernel, _ in saved:
                kernel.configs = [config]
                kernel.cache = {}
            kernels.clear_launch_cache()  # else the direct launch keeps the kernel compiled for another config
            # d = 100: no block size divides it; both directions, padding, dropout
            case = _cuda_case(33, 5, 100, True, 3, False, True, True, False, torch.float32, seed=config.kwargs["BLOCK"])
            _check_against_torch(*case, tanh=False, tol=1e-5)
            assert kernels._sru_forward_kernel.best_config is config
    finally:
        for kernel, configs in saved:
            kernel.configs = configs
            kernel.cache = {}
        kernels.clear_launch_cache()


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("L,bi,k,v1,tanh,dtype,x_dtype", [
    (1, True, 3, False, False, torch.float32, None),
    (17, False, 4, False, True, torch.float32, None),
    (17, True, 3, True, False, torch.float32, None),
    (40, True, 3, False, True, torch.bfloat16, None),
    (40, True, 4, True, False, torch.float16, None),
    (40, True, 3, False, False, torch.bfloat16, torch.float32),
    (40, True, 3, False, False, torch.float32, None),
])
def test_cuda_kernels_options_and_dtypes(L, bi, k, v1, tanh, dtype, x_dtype):
    _check_against_torch(*_cuda_case(L, 6, 72, bi, k, v1, True, True, tanh, dtype, x_dtype), tanh=tanh,
                         tol=_half_or_fp32_tol(dtype))


@cuda
@pytest.mark.cuda
def test_cuda_no_grad_and_missing_output_gradients():
    from triton_kernels.sru import sru_recurrence_triton
    from triton_kernels.torch_fast import sru_recurrence_torch

    args, kw = make_inputs(20, 4, 64, True, 3, False, False, True, device="cuda")
    names = ("U", "x", "weight_c", "bias", "c0")
    ref_args = {n: t.detach().double().requires_grad_(t.requires_grad) for n, t in args.items()}
    with torch.no_grad():
        before = torch.cuda.memory_allocated()
        h, c = sru_recurrence_triton(*(args[n] for n in names), **kw)
        grown = torch.cuda.memory_allocated() - before
        ref_h, ref_c = sru_recurrence_torch(*(ref_args[n] for n in names), **kw)
    assert_norm_close((ref_h, ref_c, []), (h, c, []), 1e-5)
    # h and the last state only: no [L, B, 2d] fp32 state sequence
    assert grown <= h.numel() * 4 + c.numel() * 4 * 4 + 4096
    for part in ("h", "c"):
        grads = []
        for fn, a in ((sru_recurrence_torch, ref_args), (sru_recurrence_triton, args)):
            wrt = [a[n] for n in names if a[n].requires_grad]
            h, c = fn(*(a[n] for n in names), **kw)
            got = torch.autograd.grad(h.square().sum() if part == "h" else c.square().sum(), wrt, allow_unused=True)
            grads.append([torch.zeros_like(t) if g is None else g for g, t in zip(got, wrt)])
        for ref, got in zip(*grads):
            if ref.abs().max() > 0:
                assert float((got.double() - ref).norm() / ref.norm()) <= 1e-5
            else:
                assert not got.abs().max()

@cuda
@pytest.mark.cuda
def test_cuda_more_than_2_31_elements():
    """Offsets past 2^31 elements (int64 addressing): U[L, B, 3, d] in bf16 with L*B*3*d > 2^31."""
    from triton_kernels.sru import from_planar, sru_recurrence_triton
    from triton_kernels.torch_fast import sru_recurrence_torch

    L, B, d = 4096, 128, 1408  # 2.2e9 elements of U
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs 40 GB of GPU memory")
    g = torch.Generator(device="cuda").manual_seed(0)
    U = torch.randn(L, B, 3, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    x = torch.randn(L, B, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    wc = torch.randn(2 * d, device="cuda", generator=g).requires_grad_()
    bias = torch.zeros(2 * d, device="cuda").requires_grad_()
    c0 = torch.zeros(B, d, device="cuda")
    h, c = sru_recurrence_triton(U, x, wc, bias, c0, d, planar=True)
    (gU,) = torch.autograd.grad(h[-1, -1].float().sum(), [U])
    # the last batch rows (the farthest offsets), recomputed alone by the torch path
    tail_U = from_planar(U.detach()[:, -2:].float()).requires_grad_()
    ref_h, ref_c = sru_recurrence_torch(tail_U, x.detach()[:, -2:].float(), wc.detach(), bias.detach(), c0[-2:], d)
    (ref_gU,) = torch.autograd.grad(ref_h[-1, -1].sum(), [tail_U])
    torch.testing.assert_close(h[:, -2:].float(), ref_h, atol=6e-2, rtol=6e-2)
    torch.testing.assert_close(c[-2:], ref_c, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(from_planar(gU[:, -2:].float()), ref_gU, atol=6e-2, rtol=6e-2)


@cuda
@pytest.mark.cuda
def test_cuda_autotune_runs_once_for_several_sequence_lengths():
    from triton_kernels import sru as kernels
    from triton_kernels.sru import sru_recurrence_triton

    args, kw = make_inputs(16, 3, 48, False, 3, False, False, False, device="cuda")
    names = ("U", "x", "weight_c", "bias", "c0")
    sru_recurrence_triton(*(args[n] for n in names), **kw)
    tuned = len(kernels._sru_forward_kernel.cache)
    for L in (5, 9, 31):
        short = dict(args, U=args["U"][:L], x=args["x"][:L])
        sru_recurrence_triton(*(short[n] for n in names), **kw)
    assert len(kernels._sru_forward_kernel.cache) == tuned


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("bi,pad", [(False, False), (True, True)])
def test_cuda_direct_launch_is_run_to_run_identical(bi, pad):
    """The first call goes through the autotuner and the JIT, later ones launch the kept compiled kernel
    (``_Launcher``): bitwise the same results every time (no atomics), the same kernel for another L,
    and a separate one for an input whose address is not 16-byte aligned."""
    from triton_kernels import sru as kernels
    from triton_kernels.sru import sru_recurrence_triton

    kernels.clear_launch_cache()
    args, kw = make_inputs(24, 5, 80, bi, 3, False, True, pad, device="cuda", seed=3)
    first = run(sru_recurrence_triton, args, kw, False)
    kept = len(kernels._FORWARD.compiled), len(kernels._BACKWARD.compiled)
    assert kept == (1, 1)
    for _ in range(2):
        again = run(sru_recurrence_triton, args, kw, False)
        for a, b in zip((first[0], first[1], *first[2]), (again[0], again[1], *again[2])):
            assert torch.equal(a, b)
    assert (len(kernels._FORWARD.compiled), len(kernels._BACKWARD.compiled)) == kept
    # an unaligned x (a view one element into a buffer) against the float64 torch path
    from triton_kernels.torch_fast import sru_recurrence_torch

    buffer = torch.empty(args["x"].numel() + 1, device="cuda")
    x = buffer[1:].view_as(args["x"]).copy_(args["x"].detach()).requires_grad_()
    assert x.data_ptr() % 16 != 0
    shifted = dict(args, x=x)
    ref_args = {n: (None if t is None else t.detach().double().requires_grad_(t.requires_grad))
                for n, t in args.items()}
    ref = run(sru_recurrence_torch, ref_args, dict(kw, mask_c=kw["mask_c"].double()), False)
    for _ in range(2):  # through the JIT, then directly
        assert_norm_close(ref, run(sru_recurrence_triton, shifted, kw, False), 1e-5)
    assert len(kernels._FORWARD.compiled) == 2


def _layer_step(layer, x):
    h, c = layer(x)
    (h.square().mean() + c.mean()).backward()
    return h, c


@cuda
@pytest.mark.cuda
def test_cuda_graph_captures_the_layer_forward_and_backward():
    """No host sync and no allocation outside the graph's pool: one training step of a layer is
    captured by a CUDA graph and replays to the eager result."""
    torch.manual_seed(0)
    layer = SRU(64, 64, num_layers=2, bidirectional=True, backend="triton").cuda()
    static_x = torch.randn(16, 8, 64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up: autotuning and compilation happen here, not in capture
        for _ in range(3):
            layer.zero_grad(set_to_none=True)
            _layer_step(layer, static_x)
    torch.cuda.current_stream().wait_stream(side)
    assert all(lay.last_backend == "triton" for lay in layer.layers)
    layer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_h, static_c = _layer_step(layer, static_x)
    new_x = torch.randn(16, 8, 64, device="cuda")
    static_x.copy_(new_x)
    graph.replay()
    replayed = [static_h.clone(), static_c.clone()] + [p.grad.clone() for p in layer.parameters() if p.requires_grad]
    for p in layer.parameters():
        p.grad = None
    h, c = _layer_step(layer, new_x)
    eager = [h, c] + [p.grad for p in layer.parameters() if p.requires_grad]
    for a, b in zip(eager, replayed):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


@cuda
@pytest.mark.cuda
def test_cuda_inductor_compiles_the_layer_without_graph_break():
    torch.manual_seed(0)
    sru = SRU(32, 32, num_layers=2, bidirectional=True, backend="triton").cuda()
    x = torch.randn(12, 4, 32, device="cuda", requires_grad=True)
    params = [x, *[p for p in sru.parameters() if p.requires_grad]]
    h0, c0 = sru(x)
    g0 = torch.autograd.grad(h0.square().sum() + c0.sum(), params)
    torch._dynamo.reset()
    h, c = torch.compile(sru, fullgraph=True)(x)
    g = torch.autograd.grad(h.square().sum() + c.sum(), params)
    assert_norm_close((h0, c0, g0), (h, c, g), 1e-5)
