"""Every option of every config group composes, resolves and (for data/model) instantiates."""

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def test_every_group_of_the_design_exists():
    for g in ("data", "model", "hardware", "logger", "callbacks", "paths", "hydra", "debug", "experiment"):
        assert g in GROUPS and list((CONF / g).glob("*.yaml")), g


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_resolves(make_cfg, group, option):
    cfg = make_cfg([f"{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert container["trainer"]["_target_"] == "lightning.Trainer"
    assert "_target_" in container["data"] and "_target_" in container["model"]


@pytest.mark.parametrize("option", sorted(f.stem for f in (CONF / "model").glob("*.yaml")))
def test_every_model_instantiates(make_cfg, option):
    cfg = make_cfg([f"model={option}"])
    model = instantiate(cfg.model, vocab_size=50)
    counts = model.parameter_counts()
    assert 0 < counts["params/embedding"] < counts["params/total"]


@pytest.mark.parametrize("config", ["eval", "generate"])
def test_eval_and_generate_configs_compose(make_cfg, config):
    cfg = make_cfg(["ckpt_path=x.ckpt"], config=config)
    OmegaConf.to_container(cfg, resolve=True)
    assert cfg.ckpt_path == "x.ckpt"


def test_eval_accepts_a_data_override(make_cfg):
    cfg = make_cfg(["ckpt_path=x.ckpt", "data=text_dir"], config="eval")
    assert cfg.data.corpus._target_.endswith("TextDirCorpus")


@pytest.mark.parametrize("option", sorted(f.stem for f in (CONF / "data").glob("*.yaml") if f.stem not in ("synthetic", "text_dir")))
def test_every_registry_corpus_has_a_data_config_rooted_under_data_dir(make_cfg, option):
    from lrnn_lightning.data import CORPORA

    cfg = make_cfg([f"data={option}"])
    assert cfg.data.corpus.name == option and option in CORPORA
    assert cfg.data.root == f"{cfg.paths.data_dir}/{CORPORA[option].folder}"
    assert cfg.data.download is False  # never touches the network unless asked


def test_registry_and_data_configs_cover_the_same_corpora():
    from lrnn_lightning.data import CORPORA

    configs = {f.stem for f in (CONF / "data").glob("*.yaml")} - {"synthetic"}
    assert configs == set(CORPORA)
