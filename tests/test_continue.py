"""Continued pretraining's controls (layer-wise lr decay, frozen first layers for the run or for K epochs), a
dataset restricted to some classes (the simulated foundation's domains), and the off-the-shelf row: a source
evaluated and exported as it is, which for a run's own export must score exactly as the run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mst.cli import main
from mst.config import load_config
from mst.data import DataError, build_dataset
from mst.engine.optim import set_lr_wd
from mst.engine.trainer import Trainer
from tests.conftest import TINY_MAE, TINY


def quiet(*_a, **_k) -> None:
    pass


def groups_by_param(trainer) -> dict[str, dict]:
    names = {id(p): n for n, p in trainer.method.named_parameters()}
    return {names[id(p)]: g for g in trainer.optimizer.param_groups for p in g["params"]}


def test_layer_decay_scales_each_backbone_layer(tmp_path):
    trainer = Trainer(load_config(overrides=TINY_MAE + ["optim.layer_decay=0.5"]), tmp_path / "r", log=quiet)
    by = groups_by_param(trainer)
    set_lr_wd(trainer.optimizer, 1.0, 0.05)
    depth = 2  # block i: 0.5^(depth - i); embeddings 0.5^(depth + 1); the final norm with the last block
    assert by["encoder.vit.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(0.5 ** 2)
    assert by["encoder.vit.blocks.1.mlp.fc1.weight"]["lr"] == pytest.approx(0.5 ** 1)
    assert by["encoder.vit.patch_embed.proj.weight"]["lr"] == pytest.approx(0.5 ** (depth + 1))
    assert by["encoder.vit.cls_token"]["lr"] == pytest.approx(0.5 ** (depth + 1))
    assert by["encoder.vit.norm.weight"]["lr"] == pytest.approx(0.5)
    decoder = [n for n in by if n.startswith("decoder.")]
    assert decoder and all(by[n]["lr"] == 1.0 for n in decoder)  # the new decoder keeps the base lr
    assert by["encoder.vit.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert by["encoder.vit.blocks.0.attn.qkv.bias"]["weight_decay"] == 0.0  # no-decay groups stay so


def test_frozen_for_the_run_stays_put_and_leaves_the_optimizer(tmp_path):
    cfg = load_config(overrides=TINY + ["optim.freeze_blocks=1"])  # MST: patch embedding, tokens, block 0
    trainer = Trainer(cfg, tmp_path / "r", log=quiet)
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    by = groups_by_param(trainer)
    assert not any(n.startswith("student.backbone.vit.blocks.0.") or "patch_embed" in n for n in by)
    assert "student.backbone.vit.blocks.1.attn.qkv.weight" in by
    trainer.fit(max_steps=3)
    after = trainer.method.state_dict()
    for name in ("student.backbone.vit.patch_embed.proj.weight", "student.backbone.vit.blocks.0.mlp.fc1.weight",
                 "student.backbone.vit.pos_embed"):
        assert torch.equal(after[name], before[name]), name
    # the teacher's EMA of an unmoving student stays where it was, up to m t + (1 - m) t's rounding
    teacher = "teacher.backbone.vit.blocks.0.mlp.fc1.weight"
    assert torch.allclose(after[teacher], before[teacher], atol=1e-6, rtol=0)
    assert not torch.equal(after["student.backbone.vit.blocks.1.mlp.fc1.weight"],
                           before["student.backbone.vit.blocks.1.mlp.fc1.weight"])


def test_frozen_for_k_epochs_moves_after_them(tmp_path):
    cfg = load_config(overrides=TINY_MAE + ["optim.freeze_blocks=0", "optim.freeze_epochs=1", "optim.epochs=2"])
    trainer = Trainer(cfg, tmp_path / "r", log=quiet)
    key = "encoder.vit.patch_embed.proj.weight"
    start = trainer.method.state_dict()[key].clone()
    trainer.fit(max_steps=trainer.iters_per_epoch)  # the whole first epoch: held
    assert torch.equal(trainer.method.state_dict()[key], start)
    assert not torch.equal(trainer.method.state_dict()["encoder.vit.blocks.0.mlp.fc1.weight"],
                           Trainer(cfg, tmp_path / "fresh", log=quiet).method.state_dict()[
                               "encoder.vit.blocks.0.mlp.fc1.weight"])
    trainer.fit()  # epoch 2: free
    assert not torch.equal(trainer.method.state_dict()[key], start)


def test_data_classes_keep_and_renumber_classes():
    ds = build_dataset({"name": "fashion_mnist", "root": None, "channels": 1, "classes": [7, 5]})
    full = build_dataset({"name": "fashion_mnist", "root": None, "channels": 1})
    labels = np.asarray(full.targets)
    assert len(ds) == int((labels == 7).sum() + (labels == 5).sum())
    assert ds.classes == ["Sneaker", "Sandal"] and sorted(set(ds.targets.tolist())) == [0, 1]
    first7 = int(np.flatnonzero(np.isin(labels, [5, 7]))[0])
    assert ds[0][1] == (0 if labels[first7] == 7 else 1)
    assert np.array_equal(np.asarray(ds[0][0]), np.asarray(full[first7][0]))
    # evaluation's in-memory path (k-NN, linear, the fine-tune's test split) keeps and renumbers the same images
    from mst.eval.features import load_eval_split

    cfg = load_config(overrides=["data.classes=[7,5]"])
    x, y = load_eval_split(cfg, "test")
    test = build_dataset(dict(cfg["data"]), "test")
    assert len(y) == len(test) == 2000 and torch.equal(y, torch.as_tensor(test.targets))
    first = torch.as_tensor(np.asarray(test[0][0]), dtype=torch.float32) / 255
    torch.testing.assert_close(x[0, 0] * 0.3530 + 0.2860, first, atol=1e-5, rtol=0)
    with pytest.raises(DataError, match=r"data.classes=\[3, 12\] must be distinct label indices of the 10"):
        build_dataset({"name": "fashion_mnist", "root": None, "channels": 1, "classes": [3, 12]})


def test_the_off_the_shelf_row_of_a_runs_own_export_equals_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    over = [a for o in TINY_MAE for a in ("--set", o)]
    assert main(["pretrain", "--out", str(run), "--max-steps", "2", *over]) == 0
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "vit.safetensors")]) == 0
    capsys.readouterr()
    res = tmp_path / "knn.json"
    assert main(["knn", "--ckpt", str(run), "--init", str(tmp_path / "vit.safetensors"), "--k", "5",
                 "--train-subset", "200", "--test-subset", "100", "--baselines", "--json", str(res)]) == 0
    rows = json.loads(res.read_text())
    shelf = next(v for k, v in rows.items() if k.startswith("off-the-shelf"))
    assert shelf == rows["encoder"] and set(rows) >= {"encoder", "random_init", "raw_pixels"}
    # the source alone: evaluated, fine-tuned and exported as it is
    assert main(["linear", "--init", str(tmp_path / "vit.safetensors"), "--epochs", "1", "--train-subset", "100",
                 "--test-subset", "50"]) == 0
    assert main(["export", "--init", str(tmp_path / "vit.safetensors"), "--out", str(tmp_path / "again.safetensors")]) == 0
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "vit.safetensors")), load_file(str(tmp_path / "again.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    figs = tmp_path / "figs"
    assert main(["visualize", "--init", str(tmp_path / "vit.safetensors"), "--n", "1", "--out", str(figs)]) == 0
    assert list(figs.glob("*.png"))  # the source's attention maps
    err_code = main(["linear", "--ckpt", str(run), "--init", str(tmp_path / "vit.safetensors")])
    assert err_code == 2 and "give --ckpt or --init, not both" in capsys.readouterr().err
