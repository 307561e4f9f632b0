"""Plain DINO as a method of its own (``method: dino``): MST with ``mask.strategy`` and ``mst.decoder`` none by default,
every ``mst.*`` key still its own. It must train bit-identically to the ``method: mst`` + mask none + decoder none
configuration the recorded DINO runs (docs/results.md) were made with, so the DINO preset can name it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mst.config import ConfigError, load_config
from mst.methods import DINO, METHODS, MST, Method, load_method, same_training

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DINO_PRESET = CONFIGS / "fashion_mnist_dino.yaml"
# the recorded DINO runs' configuration: the preset's method before it was named dino
AS_RECORDED = ["method=mst", "mask.strategy=none", "mst.decoder=none"]
# a few steps of the preset on 32 Fashion-MNIST images, the model and head narrowed: seconds on a CPU
FEW_STEPS = ["data.subset=32", "optim.batch_size=8", "model.depth=2", "dino.out_dim=64", "dino.hidden_dim=32",
             "dino.bottleneck_dim=16", "log.progress=false", "log.tensorboard=false", "log.every=1",
             "log.knn_every=0"]
UNTIMED = ("images_per_s", "step_ms", "data_wait")  # the per-step metrics that measure the machine, not the run


def test_dino_is_mst_without_mask_and_decoder():
    cfg = load_config(None, ["method=dino"])
    assert cfg["method"] == "dino" and METHODS.get("dino") is DINO and issubclass(DINO, MST)
    assert cfg["mask"]["strategy"] == "none" and cfg["mst"]["decoder"] == "none"
    assert {"dino", "mst"} <= set(cfg) and not {"mim", "mae", "simmim"} & set(cfg)
    mst = load_config()
    assert mst["mask"]["strategy"] == "attention" and mst["mst"]["decoder"] == "cnn"  # MST's defaults are untouched
    # every other key is MST's default
    mine = ("mst", "mask")
    assert {k: v for k, v in cfg.items() if k not in mine} == {**{k: v for k, v in mst.items() if k not in mine},
                                                                "method": "dino"}
    assert {k: v for k, v in cfg["mst"].items() if k != "decoder"} == \
           {k: v for k, v in mst["mst"].items() if k != "decoder"}
    assert {**cfg["mask"], "strategy": "attention"} == mst["mask"]
    # every mst.* key still applies: DINO throws tokens with AMT's draw (no decoder by default, so it may)
    assert load_config(None, ["method=dino", "mask.strategy=amt"])["mask"]["strategy"] == "amt"
    assert load_config(None, ["method=dino", "mask.strategy=random", "mask.p=0.2"])["mask"]["p"] == 0.2
    with pytest.raises(ConfigError, match=r"mask.strategy='amt' throws tokens away, but mst.decoder='cnn'"):
        load_config(None, ["method=dino", "mask.strategy=amt", "mst.decoder=cnn"])
    with pytest.raises(ConfigError, match=r"method='dino' can take a per-token importance only from teacher"):
        load_config(None, ["method=dino", "mask.importance=encoder"])
    with pytest.warns(UserWarning, match=r"method=dino with mst.decoder='cnn'.*that is MST"):
        load_config(CONFIGS / "fashion_mnist_vit_tiny.yaml", ["method=dino"])  # an MST preset keeps its decoder


def test_dino_preset_is_the_recorded_configuration():
    cfg = load_config(DINO_PRESET)
    recorded = load_config(DINO_PRESET, AS_RECORDED)
    assert cfg["method"] == "dino" and recorded["method"] == "mst"
    assert {**cfg, "method": "mst"} == recorded  # the same resolved config but for the method's name
    assert same_training("dino", "mst") and same_training("mst", "dino") and not same_training("dino", "mae")


def _losses(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in UNTIMED} for r in rows]


def test_dino_trains_bit_identically_to_the_recorded_mst_configuration(tmp_path):
    """A few steps of the DINO preset as method dino and as the recorded runs' method mst + mask none + decoder
    none: every logged value of every step equal (==, not approx), and the same weights at the end."""
    from mst.engine.trainer import Trainer

    runs = {}
    for name, extra in (("dino", []), ("mst", AS_RECORDED)):
        cfg = load_config(DINO_PRESET, FEW_STEPS + extra)
        runs[name] = tmp_path / name
        assert Trainer(cfg, runs[name]).fit(max_steps=3) == "max_steps"
    dino, mst = _losses(runs["dino"]), _losses(runs["mst"])
    assert [r["step"] for r in dino] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in dino)
    assert dino == mst
    # checkpoints: each loads as its own method (method mst keeps loading), with the same weights
    a, b = load_method(runs["dino"]), load_method(runs["mst"])
    assert type(a) is DINO and type(b) is MST and a.student.decoder is None and b.student.decoder is None
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pretrain_own_images_with_method_dino(tmp_path, capsys):
    """`mst pretrain --data DIR --set method=dino`: the own-images preset (method-agnostic) takes it."""
    from mst.cli import main

    rng = np.random.default_rng(0)
    data = tmp_path / "photos"
    data.mkdir()
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (32, 36, 3), dtype=np.uint8)).save(data / f"{i}.png")
    run = tmp_path / "run"
    sets = ["method=dino", "optim.batch_size=8", "optim.epochs=1", "optim.warmup_epochs=0", "model.depth=1",
            "dino.out_dim=64", "dino.hidden_dim=32", "dino.bottleneck_dim=16", "log.progress=false",
            "log.tensorboard=false", "log.every=1"]
    assert main(["pretrain", "--data", str(data), "--out", str(run), "--max-steps", "2",
                 *sum((["--set", s] for s in sets), [])]) == 0
    assert "configs/own_images_cpu.yaml" in capsys.readouterr().out
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["method"] == "dino" and (cfg["mask"]["strategy"], cfg["mst"]["decoder"]) == ("none", "none")
    assert cfg["optim"]["base_lr"] == MST.small_budget_base_lr  # optim.base_lr: auto -> MST / DINO's small-budget lr
    assert [r["step"] for r in _losses(run)] == [1, 2]
    assert type(load_method(run)) is DINO


def test_method_agnostic_presets_take_dino():
    for preset in ("own_images_cpu.yaml", "own_images_gpu.yaml"):
        cfg = load_config(CONFIGS / preset, ["method=dino", "data.name=fashion_mnist"])
        assert (cfg["mask"]["strategy"], cfg["mst"]["decoder"]) == ("none", "none"), preset
        mst = load_config(CONFIGS / preset, ["method=mst", "data.name=fashion_mnist"])
        assert (mst["mask"]["strategy"], mst["mst"]["decoder"]) == ("attention", "cnn"), preset
        assert {**cfg, "method": "mst", "mst": mst["mst"], "mask": mst["mask"]} == mst, preset  # all else is MST's
    notes: list = []
    cfg = load_config(CONFIGS / "own_images_cpu.yaml", ["method=dino", "data.name=fashion_mnist"], notes=notes)
    assert cfg["optim"]["base_lr"] == 8e-3 == DINO.small_budget_base_lr
    assert any(c.key == "optim.base_lr" and c.value == 8e-3 for c in notes)


def test_a_dino_checkpoint_gets_the_mst_fine_tune_recipe():
    from mst.finetune import CHOSEN_PRESETS, default_preset

    mst_recipe = CONFIGS / "fashion_mnist_finetune_mst.yaml"
    assert default_preset(load_config(None, ["method=dino"]), False) == mst_recipe == CHOSEN_PRESETS["mst"]
    assert default_preset(load_config(DINO_PRESET), False) == mst_recipe
    assert default_preset(load_config(DINO_PRESET), True) == CHOSEN_PRESETS["scratch"]


def test_an_ablation_rerun_takes_a_run_recorded_as_method_mst(tmp_path):
    """A run directory of the DINO preset made before it named the method (method: mst) is the same run."""
    from mst.experiments.runner import _check_same_config

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(load_config(DINO_PRESET, AS_RECORDED)))
    _check_same_config(tmp_path, load_config(DINO_PRESET))
    with pytest.raises(ConfigError, match=r"another config \(mask.strategy: 'none' -> 'random'\)"):
        _check_same_config(tmp_path, load_config(DINO_PRESET, ["mask.strategy=random"]))
    with pytest.raises(ConfigError, match=r"another config \(method: 'mst' -> 'mae'"):
        _check_same_config(tmp_path, {**load_config(DINO_PRESET, AS_RECORDED), "method": "mae"})


def test_changed_defaults_name_keys_of_the_sections_read(restore_sections):
    with pytest.raises(ValueError, match=r"changes the default of mst.maks, not a key of section 'mst'"):
        type("Typo", (MST,), {"changed_defaults": {"mst": {"maks": "none"}}})
    with pytest.raises(ValueError, match=r"changes defaults of config section 'mae', which it does not read"):
        type("Elsewhere", (MST,), {"changed_defaults": {"mae": {"decoder_dim": 8}}})
    assert issubclass(DINO, Method) and DINO.trains_as == "mst" and not MST.trains_as
