import pytest

from mst.config import ConfigError, load_config


def test_presets_load(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"fashion_mnist_vit_tiny.yaml", "fashion_mnist_dino.yaml", "imagenet_deit_small_100ep.yaml",
            "imagenet_deit_small_300ep.yaml"} <= set(names)
    for name in names:
        load_config(root / name)
    mst = load_config(root / "fashion_mnist_vit_tiny.yaml")
    assert mst["mask"]["strategy"] == "attention" and mst["decoder"]["enabled"]
    dino = load_config(root / "fashion_mnist_dino.yaml")
    assert dino["mask"]["strategy"] == "none" and not dino["decoder"]["enabled"]
    inet = load_config(root / "imagenet_deit_small_100ep.yaml")
    # the paper: lr 2e-3 at batch 1024, wd 0.04, 10 warm-up epochs, lambda 1.0 / 0.6, num 8, p 0.1
    assert inet["optim"]["base_lr"] * 1024 / 256 == pytest.approx(2e-3)
    assert inet["optim"]["weight_decay"] == 0.04 and inet["optim"]["warmup_epochs"] == 10
    assert (inet["loss"]["ce_weight"], inet["loss"]["restore_weight"]) == (1.0, 0.6)
    assert (inet["mask"]["num"], inet["mask"]["p"]) == (8, 0.1)
    assert inet["model"]["arch"] == "vit_small" and inet["model"]["patch_size"] == 16


def test_override_types():
    cfg = load_config(overrides=["optim.base_lr=1e-3", "mask.strategy=random", "decoder.enabled=false",
                                 "augment.global_scale=[0.3, 1.0]", "data.root=null"])
    assert cfg["optim"]["base_lr"] == 1e-3
    assert cfg["mask"]["strategy"] == "random"
    assert cfg["decoder"]["enabled"] is False
    assert cfg["augment"]["global_scale"] == [0.3, 1.0]
    assert cfg["data"]["root"] is None


def test_unknown_override_names_closest_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.base_lrr'.*optim.base_lr"):
        load_config(overrides=["optim.base_lrr=1"])
    with pytest.raises(ConfigError, match="mask.num"):
        load_config(overrides=["mask.nun=4"])


def test_unknown_key_in_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"optim.epochz.*bad.yaml.*optim.epochs"):
        load_config(f)


def test_bad_values():
    with pytest.raises(ConfigError, match=r"augment.global_size=30 is not divisible by model.patch_size=4"):
        load_config(overrides=["augment.global_size=30"])
    with pytest.raises(ConfigError, match="mask.strategy='block'"):
        load_config(overrides=["mask.strategy=block"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["optim.base_lr"])
    with pytest.raises(ConfigError, match="data.mean"):
        load_config(overrides=["data.channels=3"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent.yaml")
