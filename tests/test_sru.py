"""SRU: the reference recurrence, the PyTorch and Triton implementations, and the module."""

import itertools
import math
import os

import pytest
import torch

from conftest import interpreted
from lrnn_lightning.modules.sru import SRU, SRULayer
from triton_kernels.naive import sru_recurrence_naive
from triton_kernels.torch_fast import sru_recurrence_torch

OPTIONS = list(itertools.product([False, True], [3, 4], [False, True], [False, True], [False, True], [False, True]))
OPTION_IDS = [f"bi{int(bi)}-k{k}-v1{int(v1)}-tanh{int(t)}-drop{int(m)}-pad{int(p)}" for bi, k, v1, t, m, p in OPTIONS]


def make_inputs(L, B, d, bidirectional, k, v1, dropout, pad, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = 2 if bidirectional else 1

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    args = {
        "U": rnd(L, B, dirs * d * k).requires_grad_(),
        "x": rnd(L, B, dirs * d).requires_grad_() if k == 3 else None,
        "weight_c": (torch.zeros(2 * dirs * d, dtype=dtype, device=device) if v1 else rnd(2 * dirs * d)).requires_grad_(not v1),
        "bias": rnd(2 * dirs * d).requires_grad_(),
        "c0": rnd(B, dirs * d).requires_grad_(),
    }
    mask_c = (torch.rand(B, dirs * d, generator=g) > 0.3).to(device=device, dtype=dtype) / 0.7 if dropout else None
    mask_pad = None
    if pad:  # padding at the end of some sequences and in the middle of one
        mask_pad = torch.zeros(L, B, dtype=torch.bool)
        mask_pad[L // 2:, 0] = True
        mask_pad[min(1, L - 1), B - 1] = True
        mask_pad = mask_pad.to(device)
    return args, dict(hidden_size=d, bidirectional=bidirectional, scale_x=1.3, mask_c=mask_c, mask_pad=mask_pad)


def run(fn, args, kw, use_tanh, seed=1):
    h, c = fn(args["U"], args["x"], args["weight_c"], args["bias"], args["c0"], use_tanh=use_tanh, **kw)
    g = torch.Generator().manual_seed(seed)
    gh = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h)
    gc = torch.randn(c.shape, generator=g, dtype=torch.float64).to(c)
    wrt = [t for t in args.values() if t is not None and t.requires_grad]
    grads = torch.autograd.grad((h.float() * gh.float()).sum() + (c.float() * gc.float()).sum(), wrt)
    return h, c, grads


def assert_norm_close(ref, out, tol):
    """h, c and every gradient within ``tol`` of the reference in relative norm,
    ``||out - ref|| <= tol ||ref||``: how far an fp32 or half implementation may be from a float64
    reference (elementwise tolerances fail on the few elements where two fp32 sums round apart)."""
    (h1, c1, g1), (h2, c2, g2) = ref, out
    assert len(g1) == len(g2)
    pairs = [("h", h1, h2), ("c", c1, c2), *[(f"grad[{i}]", a, b) for i, (a, b) in enumerate(zip(g1, g2))]]
    for name, a, b in pairs:
        a, b = a.detach().double(), b.detach().double()
        err = float((b - a).norm() / a.norm().clamp_min(1e-300))
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def assert_same(a, b, atol, rtol=1e-4):
    (h1, c1, g1), (h2, c2, g2) = a, b
    torch.testing.assert_close(h2.double(), h1.double(), atol=atol, rtol=rtol)
    torch.testing.assert_close(c2.double(), c1.double(), atol=atol, rtol=rtol)
    assert len(g1) == len(g2)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(y.double(), x.double(), atol=atol, rtol=rtol)


def test_reference_gradcheck():
    for bi, k, v1, tanh, drop, pad in [(False, 3, False, False, True, True), (True, 4, False, True, False, True),
                                       (True, 3, True, False, True, False)]:
        args, kw = make_inputs(4, 2, 3, bi, k, v1, drop, pad, dtype=torch.float64)
        names = [n for n, t in args.items() if t is not None and t.requires_grad]

        def f(*tensors):
            a = dict(args, **dict(zip(names, tensors)))
            return sru_recurrence_naive(a["U"], a["x"], a["weight_c"], a["bias"], a["c0"], use_tanh=tanh, **kw)

        assert torch.autograd.gradcheck(f, [args[n] for n in names])


def test_reference_matches_the_equations_by_hand():
    """One unit, two steps, written out: c_t = f c + (1-f) u0, h_t = r c_t + (1-r) alpha x."""
    U = torch.tensor([[[0.5, 0.2, -0.3]], [[-1.0, 0.4, 0.1]]]).view(2, 1, 3)
    x = torch.tensor([0.7, -0.2]).view(2, 1, 1)
    v, b, c = torch.tensor([0.3, -0.6]), torch.tensor([0.1, -1.0]), torch.tensor([[0.25]])
    h, c_last = sru_recurrence_naive(U, x, v, b, c, hidden_size=1, scale_x=2.0)
    c_prev, hs = 0.25, []
    for t in range(2):
        u0, u1, u2 = U[t, 0].tolist()
        f = 1 / (1 + math.exp(-(u1 + 0.3 * c_prev + 0.1)))
        r = 1 / (1 + math.exp(-(u2 - 0.6 * c_prev - 1.0)))
        c_prev = f * c_prev + (1 - f) * u0
        hs.append(r * c_prev + (1 - r) * 2.0 * x[t].item())
    assert h.flatten().tolist() == pytest.approx(hs, abs=1e-6)
    assert c_last.item() == pytest.approx(c_prev, abs=1e-6)


@pytest.mark.parametrize("bi,k,v1,tanh,drop,pad", OPTIONS, ids=OPTION_IDS)
def test_torch_backend_matches_reference(bi, k, v1, tanh, drop, pad):
    args, kw = make_inputs(6, 3, 5, bi, k, v1, drop, pad, dtype=torch.float64)
    assert_same(run(sru_recurrence_naive, args, kw, tanh), run(sru_recurrence_torch, args, kw, tanh), atol=1e-10)


@interpreted
@pytest.mark.parametrize("bi,k,v1,tanh,drop,pad", OPTIONS, ids=OPTION_IDS)
def test_triton_kernels_match_reference(bi, k, v1, tanh, drop, pad):
    """Under TRITON_INTERPRET=1 (conftest) on CPU; on a GPU the cuda tests below run them compiled."""
    from triton_kernels.sru import sru_recurrence_triton

    args, kw = make_inputs(5, 3, 4, bi, k, v1, drop, pad)
    assert_same(run(sru_recurrence_naive, args, kw, tanh), run(sru_recurrence_triton, args, kw, tanh), atol=2e-5)


@interpreted
@pytest.mark.parametrize("L,B,d", [(1, 1, 1), (2, 5, 3), (7, 2, 33), (3, 4, 16)])
def test_triton_kernels_shapes(L, B, d):
    """Lane counts that are not multiples of the block, a single step, a single lane."""
    from triton_kernels.sru import sru_recurrence_triton

    for bi in (False, True):
        args, kw = make_inputs(L, B, d, bi, 3, False, True, L > 1, seed=L + d)
        assert_same(run(sru_recurrence_naive, args, kw, False), run(sru_recurrence_triton, args, kw, False), atol=2e-5)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_kernels_half_precision_accumulate_in_fp32(dtype):
    from triton_kernels.sru import sru_recurrence_triton

    args, kw = make_inputs(6, 2, 8, True, 4, False, False, True, dtype=dtype)
    args32 = {n: (None if t is None else t.detach().float().requires_grad_(t.requires_grad)) for n, t in args.items()}
    kw32 = dict(kw)
    ref = run(sru_recurrence_naive, args32, kw32, False)
    out = run(sru_recurrence_triton, args, kw, False)
    assert out[0].dtype == dtype and all(g.dtype == dtype for g in out[2])
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    assert_same(ref, out, atol=tol, rtol=tol)


# ---- the module ---------------------------------------------------------------------------------

def test_sru_shapes_and_state_contract():
    sru = SRU(6, 4, num_layers=3, bidirectional=True)
    h, c = sru(torch.randn(7, 2, 6))
    assert h.shape == (7, 2, 8) and c.shape == (3, 2, 8)
    h2, c2 = sru(torch.randn(7, 2, 6), c0=c)
    assert h2.shape == (7, 2, 8)
    with pytest.raises(ValueError, match="c0"):
        sru(torch.randn(7, 2, 6), c0=torch.zeros(2, 2, 8))
    with pytest.raises(ValueError, match="x\\[L, B, 6\\]"):
        sru(torch.randn(7, 2, 5))
    with pytest.raises(ValueError, match="backend"):
        SRU(6, 4, backend="cuda")


def test_initialization_follows_the_paper():
    layer = SRULayer(16, 16, highway_bias=-2.0, rescale=True)
    assert layer.num_matrices == 3
    assert float(layer.scale_x) == pytest.approx(math.sqrt(1 + 2 * math.exp(-2.0)))
    assert torch.all(layer.bias[:16] == 0) and torch.all(layer.bias[16:] == -2.0)
    assert layer.weight_c.requires_grad and layer.weight_c.abs().max() > 0
    v1 = SRULayer(16, 8, v1=True)
    assert v1.num_matrices == 4 and not v1.weight_c.requires_grad and torch.all(v1.weight_c == 0)
    big = SRULayer(512, 512)
    # unit-variance candidate projections: Var(W) = 1/d_in
    assert big.weight.view(512, 512, 3)[..., 0].var().item() == pytest.approx(1 / 512, rel=0.05)


def test_padding_carries_the_state_and_zeroes_the_output():
    torch.manual_seed(0)
    sru = SRU(4, 4, num_layers=2, v1=False)
    x = torch.randn(6, 2, 4)
    pad = torch.zeros(6, 2, dtype=torch.bool)
    pad[4:, 1] = True
    h, c = sru(x, mask_pad=pad)
    h_short, c_short = sru(x[:4, 1:2])
    assert torch.all(h[4:, 1] == 0)
    torch.testing.assert_close(h[:4, 1:2], h_short)
    torch.testing.assert_close(c[:, 1:2], c_short)


def test_variational_dropout_is_shared_over_time():
    torch.manual_seed(0)
    layer = SRULayer(8, 8, dropout=0.5).train()
    x = torch.randn(5, 3, 8)
    h, _ = layer(x)
    # where the mask drops a unit, h is the highway term alone at every step
    dropped = (h == x * layer.scale).all(0)
    assert dropped.any() and not dropped.all()
    layer.eval()
    h_eval, _ = layer(x)
    assert not (h_eval == x).all(0).any()


def test_torch_backend_trains_faster_path_same_gradients_as_reference(monkeypatch):
    """The module's torch backend against the naive recurrence inside the same module."""
    import triton_kernels.torch_fast as torch_fast

    torch.manual_seed(0)
    sru = SRU(6, 5, num_layers=2, bidirectional=True, layer_norm=True, highway_bias=-1.0, rescale=True)
    x = torch.randn(9, 3, 6, requires_grad=True)
    pad = torch.zeros(9, 3, dtype=torch.bool)
    pad[6:, 2] = True
    grads = []
    for impl in ("torch", "naive"):
        if impl == "naive":
            monkeypatch.setattr(torch_fast, "sru_recurrence_torch", sru_recurrence_naive)
        h, c = sru(x, mask_pad=pad)
        assert sru.layers[0].last_backend == "torch"
        grads.append(torch.autograd.grad(h.square().sum() + c.sum(), [x, *sru.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ---- the reference package --------------------------------------------------------------------

def trainable(module):
    return [p for p in module.parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def sru_package():
    return pytest.importorskip("sru", reason="the sru package (dev dependency) compiles a CPU extension at import")


REFERENCE_CASES = [
    dict(v1=True),
    dict(v1=False),
    dict(v1=False, bidirectional=True, highway_bias=-2.0, rescale=True),
    dict(v1=False, layer_norm=True),
    dict(v1=False, layer_norm=True, normalize_after=True, bidirectional=True),
    dict(v1=True, projection_size=3, rescale=True, highway_bias=-1.0),
    dict(v1=False, use_tanh=True),
]


@pytest.mark.parametrize("options", REFERENCE_CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in REFERENCE_CASES])
@pytest.mark.parametrize("input_size", [8, 5])
def test_from_reference_is_equivalent(sru_package, options, input_size):
    torch.manual_seed(0)
    hidden = 4 if options.get("bidirectional") else 8
    ref = sru_package.SRU(input_size, hidden, num_layers=2, **options)
    ours = SRU.from_reference(ref, backend="torch")
    x = torch.randn(6, 3, input_size)
    c0 = torch.randn(2, 3, 8)
    pad = torch.zeros(6, 3, dtype=torch.bool)
    pad[4:, 0] = True
    ref.eval(), ours.eval()
    with torch.no_grad():  # the package's C++ CPU kernel
        h_ref, c_ref = ref(x, c0, mask_pad=pad)
    h, c = ours(x, c0, mask_pad=pad)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c, c_ref, atol=1e-5, rtol=1e-5)
    # training-mode gradients against the package's autograd path (dropout 0: deterministic)
    ref.train(), ours.train()
    xr = x.clone().requires_grad_()
    xo = x.clone().requires_grad_()
    h_ref, c_ref = ref(xr, c0, mask_pad=pad)
    g_ref = torch.autograd.grad(h_ref.square().sum() + c_ref.sum(), [xr, *trainable(ref)], allow_unused=True)
    h, c = ours(xo, c0, mask_pad=pad)
    g = torch.autograd.grad(h.square().sum() + c.sum(), [xo, *trainable(ours)], allow_unused=True)
    for a, b in zip(g_ref, g):
        if a is None or b is None:
            assert a is None or not a.abs().any()
            continue
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_from_reference_refuses_what_it_cannot_express(sru_package):
    ref = sru_package.SRU(4, 4, num_layers=1, has_skip_term=False)
    with pytest.raises(ValueError, match="has_skip_term"):
        SRU.from_reference(ref)


# ---- CUDA: the compiled kernels ------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                          reason="needs a CUDA GPU and compiled kernels (TRITON_INTERPRET unset)")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bi,k,pad", [(False, 3, False), (True, 3, False), (True, 4, True), (True, 3, True)])
def test_cuda_kernels_match_torch(dtype, bi, k, pad):
    """The kernels (same inputs, in ``dtype``) against the torch path in float64."""
    from triton_kernels.sru import sru_recurrence_triton

    args, kw = make_inputs(64, 16, 96, bi, k, False, True, pad, dtype=dtype, device="cuda")
    args64 = {n: (None if t is None else t.detach().double().requires_grad_(t.requires_grad)) for n, t in args.items()}
    kw64 = dict(kw, mask_c=kw["mask_c"].double())
    ref = run(sru_recurrence_torch, args64, kw64, False)
    assert_norm_close(ref, run(sru_recurrence_triton, args, kw, False), 1e-5 if dtype == torch.float32 else 1e-2)


@cuda
@pytest.mark.cuda
def test_cuda_module_auto_uses_triton_and_matches_torch():
    """``auto`` runs the Triton kernels on CUDA (a silent fall-back would compare torch with torch),
    and they give the torch path's outputs and gradients."""
    torch.manual_seed(0)
    sru = SRU(32, 32, num_layers=2, bidirectional=True).cuda()
    x = torch.randn(20, 4, 32, device="cuda", requires_grad=True)
    runs = {}
    for backend in ("auto", "torch"):
        sru.backend = backend
        sru.zero_grad()
        x.grad = None
        h, c = sru(x)
        (h.square().sum() + c.sum()).backward()
        runs[backend] = [layer.last_backend for layer in sru.layers], h, c, x.grad.clone(), sru.layers[0].weight.grad.clone()
    assert runs["auto"][0] == ["triton", "triton"] and runs["torch"][0] == ["torch", "torch"]
    for a, b in zip(runs["auto"][1:], runs["torch"][1:]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ---- the language models -----------------------------------------------------------------------

@pytest.mark.parametrize("model", ["sru", "lightsru"])
def test_fast_dev_run_of_sru_language_models(make_cfg, model):
    from conftest import TINY

    from lrnn_lightning.run import train

    metrics = train(make_cfg([*TINY, f"model={model}", "model.num_layers=2", "debug=fdr"]))
    assert math.isfinite(metrics["test/ppl"]) and metrics["test/ppl"] > 1
    assert metrics["params/embedding"] > 0


@pytest.mark.parametrize("model", ["sru", "lightsru"])
def test_sru_language_models_train_and_reload(make_cfg, tmp_path, model):
    from conftest import TINY

    from lrnn_lightning.checkpoint import load_language_model
    from lrnn_lightning.modules.sru import SRU as SRUModule
    from lrnn_lightning.run import train

    metrics = train(make_cfg([*TINY, f"model={model}", "model.num_layers=2", "trainer.max_epochs=1"]))
    # the test ran from the best checkpoint, which must load with weights_only=True
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"]
    model_, _, _ = load_language_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert isinstance(model_.core, SRUModule) and metrics["test/ppl"] < metrics["data/vocab_size"]


def test_sru_ptb_experiment_has_the_papers_size():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from conftest import CONF

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=["experiment=sru_ptb"])
    core = instantiate(cfg.model.core)
    head = instantiate(cfg.model.head)(vocab_size=10_000, input_size=core.input_size, hidden_size=core.output_size)
    total = sum(p.numel() for m in (core, head) for p in m.parameters())
    assert core.num_layers == 6 and 23e6 < total < 25e6  # "about 24 M parameters, 6 layers"
