"""model.compile=true: the core and the head run through torch.compile, train to the same losses,
and write checkpoints interchangeable with uncompiled runs (no ``_orig_mod.`` in the keys)."""

import torch

from conftest import TINY
from lrnn_lightning.checkpoint import load_language_model
from lrnn_lightning.run import train

# two epochs: the first accumulates the reallocation statistics inside the compiled head, a round follows
SHORT = [*TINY, "model=lightrnn", "trainer.max_epochs=2", "trainer.limit_train_batches=6",
         "trainer.limit_val_batches=3", "test=false"]


def test_compiled_model_trains_like_the_uncompiled_one_and_checkpoints_stay_interchangeable(make_cfg):
    plain = train(make_cfg([*SHORT, "model.compile=false"], run="plain"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # aot_eager: dynamo's graphs and AOT autograd without inductor's C++ build (50 s on 2 cores, same losses)
    compiled = train(make_cfg([*SHORT, "model.compile=true", "model.compile_options.backend=aot_eager"],
                              run="compiled"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # the core's and the head's at least
    for key in ("train/loss", "val/loss", "realloc/cost_before", "realloc/cost_after"):
        assert abs(compiled[key] - plain[key]) <= 1e-5 * abs(plain[key]), key
    assert compiled["realloc/moved_words"] == plain["realloc/moved_words"]

    keys = {}
    for name, metrics in (("plain", plain), ("compiled", compiled)):
        ckpt = torch.load(metrics["ckpt/best"], map_location="cpu", weights_only=True)
        keys[name] = set(ckpt["state_dict"])
    assert keys["compiled"] == keys["plain"]
    assert not any("_orig_mod" in k for k in keys["compiled"])
    # a compiled run's checkpoint loads into a plain model and evaluates as the run reported
    model, _, meta = load_language_model(compiled["ckpt/best"])
    assert meta["model_config"]["compile"] is True
    assert getattr(model.core, "_compiled_call_impl", None) is None
