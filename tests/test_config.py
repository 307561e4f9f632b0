"""Config: presets, overrides, the per-method sections, and errors that name the key and the valid choices."""
from pathlib import Path

import pytest

from mst.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1] / "configs"


def test_presets_load():
    names = sorted(p.name for p in ROOT.glob("*.yaml"))
    assert {"fashion_mnist_vit_tiny.yaml", "fashion_mnist_dino.yaml", "fashion_mnist_mae.yaml",
            "fashion_mnist_simmim.yaml", "imagenet_deit_small_100ep.yaml", "imagenet_deit_small_300ep.yaml",
            "imagenet_mae_vit_base_800ep.yaml", "imagenet_simmim_vit_base_800ep.yaml"} <= set(names)
    for name in names:
        load_config(ROOT / name)
    mst = load_config(ROOT / "fashion_mnist_vit_tiny.yaml")
    assert mst["method"] == "mst" and mst["mask"]["strategy"] == "attention" and mst["mst"]["decoder"] == "cnn"
    dino = load_config(ROOT / "fashion_mnist_dino.yaml")
    assert dino["method"] == "dino" and dino["mask"]["strategy"] == "none" and dino["mst"]["decoder"] == "none"
    inet = load_config(ROOT / "imagenet_deit_small_100ep.yaml")
    # the paper: lr 2e-3 at batch 1024, wd 0.04, 10 warm-up epochs, lambda 1.0 / 0.6, num 8, p 0.1
    assert inet["optim"]["base_lr"] * 1024 / 256 == pytest.approx(2e-3)
    assert inet["optim"]["weight_decay"] == 0.04 and inet["optim"]["warmup_epochs"] == 10
    assert (inet["mst"]["ce_weight"], inet["mst"]["restore_weight"]) == (1.0, 0.6)
    assert (inet["mask"]["num"], inet["mask"]["p"]) == (8, 0.1)
    assert inet["model"]["arch"] == "vit_small" and inet["model"]["patch_size"] == 16


def test_each_method_gets_only_its_sections():
    mst = load_config()
    assert {"dino", "mst"} <= set(mst) and not {"mim", "mae", "simmim"} & set(mst)
    mae = load_config(overrides=["method=mae"])
    assert {"mim", "mae"} <= set(mae) and not {"dino", "mst", "simmim"} & set(mae)
    simmim = load_config(overrides=["method=simmim"])
    assert {"mim", "simmim"} <= set(simmim) and "mae" not in simmim
    with pytest.raises(ConfigError, match=r"section 'mae'.*not used by method 'mst'.*belongs to mae"):
        load_config(overrides=["mae.decoder_depth=2"])
    with pytest.raises(ConfigError, match=r"section 'dino'.*not used by method 'simmim'.*belongs to dino, mst"):
        load_config(ROOT / "fashion_mnist_simmim.yaml", ["dino.out_dim=8"])


def test_override_types():
    cfg = load_config(overrides=["optim.base_lr=1e-3", "mask.strategy=random", "mst.decoder=none",
                                 "augment.global_scale=[0.3, 1.0]", "data.root=null"])
    assert cfg["optim"]["base_lr"] == 1e-3
    assert cfg["mask"]["strategy"] == "random" and cfg["mst"]["decoder"] == "none"
    assert cfg["augment"]["global_scale"] == [0.3, 1.0]
    assert cfg["data"]["root"] is None


def test_unknown_override_names_closest_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.base_lrr'.*optim.base_lr"):
        load_config(overrides=["optim.base_lrr=1"])
    with pytest.raises(ConfigError, match="mask.num"):
        load_config(overrides=["mask.nun=4"])


def test_old_key_names_are_read_as_the_new_ones_with_a_one_line_notice(tmp_path):
    from mst.config import RenamedKeyNotice

    with pytest.warns(RenamedKeyNotice, match=r"^config key 'mst.mask' in --set is now 'mask.strategy' \(read as it\)$"):
        cfg = load_config(overrides=["mst.mask=none"])
    assert cfg["mask"]["strategy"] == "none"
    # masking had three homes (mst.*, mim.*, amt.*): the old keys of MST and of the MIM methods lead to one section
    with pytest.warns(RenamedKeyNotice):
        cfg = load_config(overrides=["method=simmim", "mim.mask=blocks", "mim.mask_ratio=0.6", "mim.mask_patch_size=8",
                                     "model.img_size=32"])
    assert (cfg["mask"]["strategy"], cfg["mask"]["ratio"], cfg["mask"]["unit"]) == ("blocks", 0.6, 8)
    with pytest.warns(RenamedKeyNotice):
        cfg = load_config(overrides=["mst.mask_num=4", "mst.mask_p=0.2", "mst.importance=teacher", "mask.replacement=bert"])
    assert (cfg["mask"]["num"], cfg["mask"]["p"], cfg["mst"]["replacement"]) == (4, 0.2, "bert")
    g = tmp_path / "both.yaml"
    g.write_text("mst:\n  mask_p: 0.2\nmim:\n  mask_p: 0.3\n")
    with pytest.raises(ConfigError, match=r"^mim.mask_p=0.3 and mask.p=0.2 in .*both.yaml: mim.mask_p is the old "
                                          r"name of mask.p; set only mask.p$"), pytest.warns(RenamedKeyNotice):
        load_config(g)
    f = tmp_path / "old.yaml"
    f.write_text("head:\n  out_dim: 64\naugment:\n  global_size: 32\n")
    with pytest.warns(RenamedKeyNotice) as notices:
        cfg = load_config(f)
    assert sorted(str(n.message) for n in notices) == [
        f"config key 'augment.global_size' in {f} is now 'model.img_size' (read as it)",
        f"config key 'head.out_dim' in {f} is now 'dino.out_dim' (read as it)"]
    assert cfg["dino"]["out_dim"] == 64 and cfg["model"]["img_size"] == 32 and "head" not in cfg
    assert "global_size" not in cfg["augment"]  # one size key
    f.write_text("augment:\n  global_size: 32\nmodel:\n  img_size: 28\n")
    with pytest.raises(ConfigError, match=r"^augment.global_size=32 and model.img_size=28 in .*old.yaml: "
                                          r"augment.global_size is the old name of model.img_size; set only "
                                          r"model.img_size$"):
        load_config(f)


def test_a_checkpoint_written_before_a_rename_loads_with_the_new_keys(tmp_path):
    """Its config is upgraded when read: old names moved, keys newer than it at their defaults."""
    import torch

    from mst.checkpoint import load_checkpoint

    cfg = load_config(overrides=["optim.epochs=1"])
    old = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    old["augment"]["global_size"] = old["model"].pop("img_size")
    del old["augment"]["eval_crop"]  # a key that did not exist yet
    torch.save({"config": old, "method": {}}, tmp_path / "checkpoint.pth")
    loaded = load_checkpoint(tmp_path / "checkpoint.pth")["config"]
    assert loaded["model"]["img_size"] == 28 and "global_size" not in loaded["augment"]
    assert loaded["augment"]["eval_crop"] == 1.0 and loaded == cfg


def test_unknown_key_in_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"optim.epochz.*bad.yaml.*optim.epochs"):
        load_config(f)


def test_registries_name_the_valid_choices():
    with pytest.raises(ConfigError, match=r"method='maee' is not a registered method; choose one of .*mae, mst, "
                                          r"simmim.*did you mean mae"):
        load_config(overrides=["method=maee"])
    with pytest.raises(ConfigError, match=r"mask.strategy=.block. is not a registered mask strategy; .*blocks"):
        load_config(overrides=["mask.strategy=block"])
    with pytest.raises(ConfigError, match=r"mst.decoder=.cnnn. is not a registered decoder; .*cnn, linear, transformer"):
        load_config(overrides=["mst.decoder=cnnn"])
    with pytest.raises(ConfigError, match=r"model.arch='vit_huge' is not a registered backbone"):
        load_config(overrides=["model.arch=vit_huge"])
    with pytest.raises(ConfigError, match=r"mae.decoder='cnn' decodes a full token grid"):
        load_config(overrides=["method=mae", "mae.decoder=cnn"])
    with pytest.raises(ConfigError, match=r"mst.decoder='transformer' decodes visible tokens only"):
        load_config(overrides=["mst.decoder=transformer"])
    from mst.masking import MASKS, RandomMask

    class NeedsUnits(RandomMask):  # reads a key it did not declare
        @classmethod
        def from_config(cls, section, patch_size):
            return cls(section["units"])

    MASKS.register("needs_units", NeedsUnits)
    try:
        with pytest.raises(ConfigError, match=r"^mask strategy 'needs_units' reads mask.units, which no strategy "
                                              r"declares \(the mask section has importance, num, .*\): declare it in "
                                              r"NeedsUnits.settings, or choose another mask.strategy$"):
            load_config(overrides=["mask.strategy=needs_units"])
    finally:
        MASKS.unregister("needs_units")


def test_bad_values():
    with pytest.raises(ConfigError, match=r"model.img_size=30 is not divisible by model.patch_size=4"):
        load_config(overrides=["model.img_size=30", "model.patch_size=4"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["optim.base_lr"])
    with pytest.raises(ConfigError, match="data.mean"):
        load_config(overrides=["data.channels=3", "data.mean=[0.5]"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent.yaml")
    with pytest.raises(ConfigError, match=r"optim.betas=\[0.9\] must be two numbers"):
        load_config(overrides=["optim.betas=[0.9]"])


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "1.5"])
def test_mask_ratio_outside_0_1_is_refused(ratio):
    for method in ("mae", "simmim"):
        with pytest.raises(ConfigError, match=rf"mask.ratio={ratio} must lie in \[0, 1\)"):
            load_config(overrides=[f"method={method}", f"mask.ratio={ratio}"])


def test_mask_patch_size_must_be_a_multiple_of_the_patch_and_divide_the_image():
    with pytest.raises(ConfigError, match=r"mask.unit=6 is not a multiple of model.patch_size=4"):
        load_config(overrides=["method=simmim", "mask.unit=6"])
    with pytest.raises(ConfigError, match=r"mask.unit=8 does not divide the image \(model.img_size=28"):
        load_config(overrides=["method=simmim", "mask.unit=8"])
    cfg = load_config(overrides=["method=simmim", "mask.unit=8", "model.img_size=32",
                                 "model.img_size=32"])
    assert cfg["mask"]["unit"] == 8


def test_online_knn_on_an_unlabelled_folder_is_switched_off_with_a_warning(tmp_path):
    from PIL import Image

    Image.new("L", (32, 32), 7).save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="online evaluation is switched off"):
        cfg = load_config(overrides=["data.name=folder", f"data.root={tmp_path}", "log.knn_every=1"])
    assert cfg["log"]["knn_every"] == 0


def test_a_preset_can_lay_itself_over_a_base(tmp_path):
    amt = load_config(ROOT / "fashion_mnist_mae_amt.yaml")
    plain = load_config(ROOT / "fashion_mnist_mae.yaml")
    assert amt["amt"]["enabled"] and not plain["amt"]["enabled"]
    amt["amt"]["enabled"] = False
    assert amt == plain  # one key apart
    (tmp_path / "a.yaml").write_text("base: b.yaml\noptim:\n  epochs: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="makes a loop"):
        load_config(tmp_path / "a.yaml")
