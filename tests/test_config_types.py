"""Config values checked by type and range: every bad value, YAML error or impossible combination is one
ConfigError line naming the key (and, through the CLI, ``error: ...`` with exit code 2, no traceback)."""
import re

import pytest

import mst.config as config
from mst.cli import main
from mst.config import (ConfigError, _flatten, apply_override, check_types, default_of, defaults_for, load_config,
                        merge_dict, register_section, validate)
from mst import settings
from mst.config_checks import show
from mst.methods import METHODS, Method

# the keys that may be "auto" (derived from the data), as their fields say
AUTO_KEYS = {f"{s}.{k}" for s, keys in settings.sections().items() for k, spec in keys.items() if spec.auto}

MAE, SIMMIM, FINETUNE = ["method=mae"], ["method=simmim"], ["method=finetune"]


def exactly(message: str):
    """pytest.raises for a ConfigError whose whole text is ``message``."""
    return pytest.raises(ConfigError, match="^" + re.escape(message) + "$")


def typed(key: str, shown: str, what: str) -> str:
    """The type error of a key of AUTO_KEYS, whose default may be a value or "auto" (then named as allowed)."""
    default = default_of(key)
    return f"{key}={shown} must be {what}{' or ' + repr('auto') if default == 'auto' else ''} (default {show(default)})"


# every key of AUTO_KEYS set to a value, as the data would make them (so no check depends on the data)
CONCRETE = ["data.channels=1", "data.mean=[0.286]", "data.std=[0.353]", "model.img_size=28", "model.patch_size=4",
            "augment.local_size=12", "model.arch=vit_tiny", "mst.decoder_channels=[64, 32]",
            "optim.epochs=10", "optim.batch_size=8"]


def unresolved(*overrides: str, method: str = "mst") -> dict:
    """The method's defaults with ``overrides`` applied, before "auto" is resolved and before validation."""
    cfg = defaults_for(method)
    for item in overrides:
        apply_override(cfg, item)
    return cfg


@pytest.mark.parametrize("overrides, message", [
    (["optim.epochs=two"], typed("optim.epochs", "'two'", "an integer")),
    (["optim.epochs=2.5"], typed("optim.epochs", "2.5", "an integer")),
    (["optim.base_lr=fast"], "optim.base_lr='fast' must be a number (default 0.0005)"),
    (["optim.base_lr=nan"], "optim.base_lr=nan must be a finite number (default 0.0005)"),
    (["optim.base_lr=true"], "optim.base_lr=true must be a number (default 0.0005)"),
    (["log.progress=1"], "log.progress=1 must be true or false (default true)"),
    (["model.pos_embed=[1]"], "model.pos_embed=[1] must be a string (default 'learned')"),
    (["data.mean=[0.5, a]"], typed("data.mean", "[0.5, 'a']", "a list of numbers")),
    (["data.mean=0.5"], typed("data.mean", "0.5", "a list of numbers")),
    (["mst.decoder_channels=[16, 8.5]"], typed("mst.decoder_channels", "[16, 8.5]", "a list of integers")),
    (["optim.batch_size=many"], typed("optim.batch_size", "'many'", "an integer")),
    (["optim.lr_milestones=[a]"], "optim.lr_milestones=['a'] must be a list of integers (default [])"),
    # keys whose default is None: null or the type of the table
    (["data.subset=many"], "data.subset='many' must be an integer or null (default null)"),
    (["model.depth=2.5"], "model.depth=2.5 must be an integer or null (default null)"),
    (["model.embed_dim=wide"], "model.embed_dim='wide' must be an integer or null (default null)"),
    (["augment.rand_augment=true"], "augment.rand_augment=true must be a string or null (default null)"),
    (["data.root=[a]"], "data.root=['a'] must be a string or null (default null)"),
    (SIMMIM + ["mask.unit=2.5"], "mask.unit=2.5 must be an integer or null (default null)"),
    (MAE + ["amt.mask_ratio=half"], "amt.mask_ratio='half' must be a number or null (default null)"),
    (FINETUNE + ["finetune.init=[a]"], "finetune.init=['a'] must be a string or null (default null)"),
    (["log.knn_test_subset=all"], "log.knn_test_subset='all' must be an integer or null (default 1000)"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(overrides, message):
    with exactly(message):
        load_config(overrides=overrides)


@pytest.mark.parametrize("overrides, message", [
    (["optim.base_lr=-1"], "optim.base_lr=-1.0 must be > 0"),
    (["optim.base_lr=0"], "optim.base_lr=0.0 must be > 0"),
    (["optim.min_lr=-1e-6"], "optim.min_lr=-1e-06 must be >= 0"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1 must be >= 0"),
    (["optim.warmup_epochs=-1"], "optim.warmup_epochs=-1 must be >= 0"),
    (["optim.batch_size=0"], "optim.batch_size=0 must be >= 1"),
    (["optim.epochs=0"], "optim.epochs=0 must be >= 1"),
    (["optim.clip_grad=-1"], "optim.clip_grad=-1.0 must be >= 0"),
    (["optim.betas=[0.9, 1.0]"], "optim.betas=[0.9, 1.0] must be two numbers, each in [0, 1)"),
    (["dino.teacher_temp=0"], "dino.teacher_temp=0.0 must be > 0"),
    (["dino.warmup_teacher_temp=-0.04"], "dino.warmup_teacher_temp=-0.04 must be > 0"),
    (["dino.student_temp=0"], "dino.student_temp=0.0 must be > 0"),
    (["dino.center_momentum=1.5"], "dino.center_momentum=1.5 must lie in [0, 1]"),
    (["dino.momentum_teacher=-0.1"], "dino.momentum_teacher=-0.1 must lie in [0, 1]"),
    (["dino.out_dim=0"], "dino.out_dim=0 must be >= 1"),
    (["augment.n_local=-1"], "augment.n_local=-1 must be >= 0"),
    (["model.img_size=0"], "model.img_size=0 must be >= 1"),
    (["augment.local_size=-4"], "augment.local_size=-4 must be >= 1"),
    (["augment.flip_p=1.5"], "augment.flip_p=1.5 must lie in [0, 1]"),
    (["augment.color_jitter_p=-0.1"], "augment.color_jitter_p=-0.1 must lie in [0, 1]"),
    (["augment.grayscale_p=2"], "augment.grayscale_p=2.0 must lie in [0, 1]"),
    (["augment.solarize_p=1.1"], "augment.solarize_p=1.1 must lie in [0, 1]"),
    (["augment.blur_p=[1.0, 0.1, 1.5]"],
     "augment.blur_p=[1.0, 0.1, 1.5] must be three numbers (global 1, global 2, locals), each in [0, 1]"),
    (["augment.blur_p=[1.0, 0.1]"],
     "augment.blur_p=[1.0, 0.1] must be three numbers (global 1, global 2, locals), each in [0, 1]"),
    (["augment.global_scale=[0.5, 0.4]"],
     "augment.global_scale=[0.5, 0.4] must be two numbers [low, high] with low <= high, each in (0, 1]"),
    (["augment.local_scale=[0, 0.4]"],
     "augment.local_scale=[0.0, 0.4] must be two numbers [low, high] with low <= high, each in (0, 1]"),
    (["augment.global_scale=[0.4, 1.5]"],
     "augment.global_scale=[0.4, 1.5] must be two numbers [low, high] with low <= high, each in (0, 1]"),
    (["mask.p=1.5"], "mask.p=1.5 must lie in [0, 1]"),
    (["data.subset=0"], "data.subset=0 must be >= 1"),
    (["data.num_workers=-1"], "data.num_workers=-1 must be >= 0"),
    (["data.channels=0"], "data.channels=0 must be >= 1"),
    (["data.std=[0]"], "data.std=[0.0] must be a list of numbers, each > 0"),
    (["log.every=0"], "log.every=0 must be >= 1"),
    (["model.drop_path=1"], "model.drop_path=1.0 must lie in [0, 1)"),
    (["model.depth=0"], "model.depth=0 must be >= 1"),
    (MAE + ["mae.decoder_dim=0"], "mae.decoder_dim=0 must be >= 1"),
    (MAE + ["mae.decoder_heads=0"], "mae.decoder_heads=0 must be >= 1"),
    (MAE + ["degrade.zoom_in=0.5"], "degrade.zoom_in=0.5 must be > 1 (the view is this much wider than the input)"),
    (MAE + ["degrade.ring_weight=1.5"], "degrade.ring_weight=1.5 must lie in [0, 1] (the edge term's share)"),
    (MAE + ["degrade.distort=[0.3]"], "degrade.distort=[0.3] must be [low, high]"),
    (MAE + ["degrade.decolor_max=0"], "degrade.decolor_max=0.0 must be > 0"),
    (MAE + ["degrade.blur_kernel=4"], "degrade.blur_kernel=4 must be an odd size >= 3"),
    (MAE + ["amt.mask_ratio=1.0"], "amt.mask_ratio=1.0 must lie in [0, 1)"),
    (MAE + ["amt.throw_ratio=-0.1"], "amt.throw_ratio=-0.1 must lie in [0, 1)"),
    (SIMMIM + ["mask.unit=0"], "mask.unit=0 must be >= 1"),
    (FINETUNE + ["finetune.mixup_prob=1.5"], "finetune.mixup_prob=1.5 must lie in [0, 1]"),
    (FINETUNE + ["finetune.mixup_switch_prob=-1"], "finetune.mixup_switch_prob=-1.0 must lie in [0, 1]"),
    (FINETUNE + ["finetune.reprob=2"], "finetune.reprob=2.0 must lie in [0, 1]"),
    (FINETUNE + ["finetune.label_smoothing=1.5"], "finetune.label_smoothing=1.5 must lie in [0, 1]"),
])
def test_a_value_out_of_range_is_one_line_naming_the_key_and_the_range(overrides, message):
    with exactly(message):
        load_config(overrides=overrides)


def test_a_yaml_error_in_set_names_the_key_and_the_text():
    with pytest.raises(ConfigError, match=r"^--set data\.mean=\[0\.5,: the value is not valid YAML \(") as e:
        load_config(overrides=["data.mean=[0.5,"])
    assert "\n" not in str(e.value)


def test_a_bad_value_in_a_preset_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  epochs: two\n")
    with exactly(typed("optim.epochs", "'two'", "an integer")):
        load_config(f)
    f.write_text("augment:\n  flip_p: 2\n")
    with exactly("augment.flip_p=2.0 must lie in [0, 1]"):
        load_config(f)
    f.write_text("optim:\n  epochs: [1,\n")
    one_line = r"^config file .*bad.yaml is not valid YAML: .* at line \d+, column \d+$"
    with pytest.raises(ConfigError, match=one_line) as e:
        load_config(f)
    assert "\n" not in str(e.value)


def test_merge_dict_checks_types_too(tiny_cfg):
    with exactly(typed("optim.epochs", "'two'", "an integer")):
        merge_dict(tiny_cfg, {"optim": {"epochs": "two"}})


def test_valid_values_still_load_and_are_brought_to_the_key_type(tmp_path):
    cfg = load_config(overrides=["optim.base_lr=1", "optim.epochs=2.0", "data.subset=null", "log.knn_test_subset=null",
                                 "model.depth=null", "augment.flip_p=0", "augment.solarize_p=1", "model.drop_path=0",
                                 "optim.min_lr=0", "augment.global_scale=[1, 1]", "optim.lr_milestones=[3.0, 5]"])
    assert cfg["optim"]["base_lr"] == 1.0 and isinstance(cfg["optim"]["base_lr"], float)
    assert cfg["optim"]["epochs"] == 2 and isinstance(cfg["optim"]["epochs"], int)
    scale = cfg["augment"]["global_scale"]
    assert scale == [1.0, 1.0] and all(isinstance(v, float) for v in scale)
    assert cfg["optim"]["lr_milestones"] == [3, 5] and all(isinstance(v, int) for v in cfg["optim"]["lr_milestones"])
    assert cfg["data"]["subset"] is None and cfg["log"]["knn_test_subset"] is None and cfg["model"]["depth"] is None
    assert load_config(overrides=["optim.base_lr=1e-3"])["optim"]["base_lr"] == 1e-3
    # a string key keeps the text YAML would read as a number or a date; quoted text stays a string
    cfg = unresolved("data.root=2024", "finetune.init=2024-01-01", "augment.rand_augment='1e3'", method="finetune")
    check_types(cfg)
    assert cfg["data"]["root"] == "2024" and cfg["finetune"]["init"] == "2024-01-01"
    assert cfg["augment"]["rand_augment"] == "1e3"
    # any positive number of channels (multiband images), with as many means and stds
    cfg = load_config(overrides=["data.channels=4", "data.mean=[0.5, 0.5, 0.5, 0.5]", "data.std=[0.2, 0.2, 0.2, 0.2]"])
    assert cfg["data"]["channels"] == 4
    with pytest.raises(ConfigError, match=r"data.mean / data.std need 3 values"):
        load_config(overrides=["data.channels=3", "data.mean=[0.5]", "data.std=[0.2]"])
    f = tmp_path / "ok.yaml"
    f.write_text("optim:\n  base_lr: 1\n  weight_decay: 0\nmst:\n  restore_weight: 1e-1\n")
    cfg = load_config(f)
    assert (cfg["optim"]["base_lr"], cfg["optim"]["weight_decay"], cfg["mst"]["restore_weight"]) == (1.0, 0.0, 0.1)
    cfg = load_config(overrides=MAE + ["amt.enabled=true", "amt.mask_ratio=0", "amt.throw_ratio=0.5"])
    assert cfg["amt"]["mask_ratio"] == 0.0


def test_auto_keys_accept_auto_and_skip_the_checks_that_need_their_value(restore_sections):
    assert {"data.channels", "data.mean", "data.std", "model.img_size", "model.patch_size", "augment.local_size",
            "mst.decoder_channels", "optim.epochs", "optim.batch_size", "optim.base_lr"} <= AUTO_KEYS
    assert "optim.amp" not in AUTO_KEYS  # "auto" is one of its choices, not a value from the data
    auto = [f"{k}=auto" for k in sorted(AUTO_KEYS) if k.split(".")[0] in defaults_for("mst")]
    cfg = unresolved(*auto)
    check_types(cfg)  # "auto" passes the type and range checks of every AUTO key
    assert all(cfg[k.split(".")[0]][k.split(".")[1]] == "auto" for k in (i.split("=")[0] for i in auto))
    # the checks of combinations skip what is still "auto" (here the data's channels and statistics)
    cfg = unresolved(*CONCRETE, "data.channels=auto", "data.mean=auto", "data.std=auto")
    validate(cfg)
    with exactly("augment.n_local='auto' must be an integer (default 6)"):  # not an AUTO key
        load_config(overrides=["augment.n_local=auto"])
    # a key whose default is "auto" still loads a value of its own type, and "auto" is named in the error
    cfg = load_config(overrides=["data.channels=3", "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.2, 0.2, 0.2]"])
    assert cfg["data"]["channels"] == 3
    with exactly("data.channels='three' must be an integer or 'auto' (default 'auto')"):
        load_config(overrides=["data.channels=three"])
    with exactly("data.channels=0 must be >= 1"):
        load_config(overrides=["data.channels=0"])
    # a new key declared with the default "auto" and no type takes anything
    settings.declare("data", {"bands": settings.make_spec("auto", strict=False)}, "tests.test_config_types")
    cfg = unresolved("data.bands=[1, 2]")
    check_types(cfg)
    assert cfg["data"]["bands"] == [1, 2]


class _Typed(Method):
    sections = ("typed_probe",)

    def forward(self, batch, ctx):  # never run
        raise NotImplementedError


def test_a_section_registered_at_run_time_is_checked_by_its_own_defaults(restore_sections):
    register_section("typed_probe", {"scale": 1.0, "steps": 3, "name": "x", "on": True})
    METHODS.register("typed_probe_method", _Typed)
    try:
        cfg = load_config(overrides=["method=typed_probe_method", "typed_probe.scale=2", "typed_probe.steps=4.0"])
        assert cfg["typed_probe"] == {"scale": 2.0, "steps": 4, "name": "x", "on": True}
        with exactly("typed_probe.steps='many' must be an integer (default 3)"):
            load_config(overrides=["method=typed_probe_method", "typed_probe.steps=many"])
        with exactly("typed_probe.on='yes please' must be true or false (default true)"):
            load_config(overrides=["method=typed_probe_method", "typed_probe.on=yes please"])
        with pytest.raises(ConfigError, match=r"unknown config key 'typed_probe.scal'.*typed_probe.scale"):
            load_config(overrides=["method=typed_probe_method", "typed_probe.scal=2"])
    finally:
        METHODS.unregister("typed_probe_method")


@pytest.mark.parametrize("method", ["mst", "mae", "simmim", "finetune"])
def test_every_key_is_type_checked(method):
    keys = [k for k in _flatten(defaults_for(method)) if k != "method"]
    for key in keys:
        with pytest.raises(ConfigError, match="^" + re.escape(f"{key}={{'bad': 1}} must be ")):
            load_config(overrides=[f"method={method}", f"{key}={{bad: 1}}"])


def test_every_built_in_key_has_its_type_and_doc_on_its_field():
    """One home: each key's type and one-line doc are on its field (a None, "auto" or [] default must name its
    type, or the declaration fails), and every old name leads to a key that exists."""
    every = settings.sections()
    for section, keys in every.items():
        for key, spec in keys.items():
            if settings.owner(section, key).startswith("mst."):  # not a test module's method
                assert spec.kind is not None and spec.doc, f"{section}.{key}"
    for old, new in settings.old_names().items():
        section, key = new.split(".")
        assert key in every[section] and old not in {f"{s}.{k}" for s, ks in every.items() for k in ks}
    with pytest.raises(ValueError, match="needs kind="):
        settings.make_spec(None, "a key with no type")


def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--set", "optim.epochs=two"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {typed('optim.epochs', repr('two'), 'an integer')}\n"
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--set", "data.mean=[0.5,"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set data.mean=[0.5,: the value is not valid YAML") and err.count("\n") == 1
    assert "Traceback" not in err
