"""Fine-tuning: layer-wise lr decay, balanced low-label subsets, init from a checkpoint vs scratch, timm's Mixup,
resume, the exported classifier in timm, clear refusals; and MAE's linear probe."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mst.config import load_config
from mst.data import DataError, balanced_subset_indices
from mst.checkpoint import backbone_state, load_checkpoint
from mst.engine.optim import build_optimizer, set_lr_wd
from mst.finetune import finetune_config, run_finetune
from mst.methods import build_method
from mst.registry import ConfigError
from tests.conftest import TINY_MAE, save_method

FT = ["optim.epochs=2", "optim.batch_size=8", "optim.warmup_epochs=1", "log.progress=false", "log.tensorboard=false",
      "log.every=1", "log.knn_every=1", "log.knn_test_subset=40", "augment.backend=tensor"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    method = build_method(load_config(overrides=TINY_MAE))
    return save_method(method, tmp_path_factory.mktemp("pre") / "checkpoint.pt"), method


def test_layer_decay_groups_have_the_asked_learning_rates():
    cfg = load_config(overrides=["method=finetune", "model.depth=4", "finetune.layer_decay=0.5"])
    method = build_method(cfg)
    opt = build_optimizer(method.param_groups())
    set_lr_wd(opt, 1.0, 0.05)
    lr_of = {}
    for g in opt.param_groups:
        for p in g["params"]:
            lr_of[p] = (g["lr"], g["weight_decay"])
    named = dict(method.backbone.vit.named_parameters())
    for i in range(4):  # 0-based block i: base x decay^(depth - i)
        assert lr_of[named[f"blocks.{i}.attn.qkv.weight"]] == (pytest.approx(0.5 ** (4 - i)), 0.05)
        assert lr_of[named[f"blocks.{i}.norm1.bias"]] == (pytest.approx(0.5 ** (4 - i)), 0.0)
    for name in ("patch_embed.proj.weight", "pos_embed", "cls_token"):  # base x decay^(depth + 1)
        assert lr_of[named[name]][0] == pytest.approx(0.5 ** 5)
    assert lr_of[named["pos_embed"]][1] == lr_of[named["cls_token"]][1] == 0.0  # no decay on them
    assert lr_of[named["head.weight"]] == (pytest.approx(1.0), 0.05) and lr_of[named["head.bias"]][0] == 1.0


def test_balanced_subset_has_exact_per_class_counts():
    labels = np.repeat(np.arange(10), 200)
    np.random.default_rng(0).shuffle(labels)
    idx = balanced_subset_indices(labels, 1003, seed=3)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.tolist() == [101, 101, 101] + [100] * 7 and len(set(idx.tolist())) == 1003
    assert np.array_equal(idx, balanced_subset_indices(labels, 1003, seed=3))  # same seed, same subset
    assert not np.array_equal(idx, balanced_subset_indices(labels, 1003, seed=4))
    with pytest.raises(DataError, match="the split has only 2000"):
        balanced_subset_indices(labels, 2001, seed=0)
    with pytest.raises(DataError, match="cannot hold one image of each of the 10 classes"):
        balanced_subset_indices(labels, 9)
    with pytest.raises(DataError, match="class 9 has only 59 images, fewer than the 60"):
        balanced_subset_indices(np.concatenate([np.repeat(np.arange(10), 60)[:-1], [0]]), 600)


def test_finetune_config_takes_the_checkpoint_shape_and_a_balanced_subset(pretrained):
    path, _ = pretrained
    cfg = finetune_config(path, overrides=FT, train_subset=50)
    pre = load_checkpoint(path)["config"]
    assert cfg["method"] == "finetune" and cfg["model"]["depth"] == pre["model"]["depth"] == 2
    assert cfg["data"]["subset"] == 50 and cfg["data"]["balanced"] and cfg["finetune"]["num_classes"] == 10
    assert cfg["finetune"]["init"].endswith("checkpoint.pt")
    with pytest.raises(DataError, match="data.subset=70000 is larger than the 60000 images"):
        from mst.data import build_dataset

        build_dataset(finetune_config(path, overrides=FT, train_subset=70000)["data"])
    with pytest.raises(DataError, match="cannot hold one image of each of the 10 classes"):
        build_dataset(finetune_config(path, overrides=FT, train_subset=5)["data"])


def test_init_from_a_checkpoint_and_the_scratch_baseline(pretrained):
    path, pre_method = pretrained
    cfg = finetune_config(path, overrides=FT)
    torch.manual_seed(123)
    fresh = build_method(cfg)
    before = {k: v.clone() for k, v in fresh.backbone.vit.state_dict().items()}
    assert fresh.init_from(str(path)) == "encoder"
    weights = backbone_state(load_checkpoint(path))
    got = fresh.backbone.vit.state_dict()
    assert all(torch.equal(got[k], v) for k, v in weights.items())  # every pretrained weight, unchanged
    assert got["head.weight"].abs().max() < 1e-3  # MAE's near-zero head
    scratch = build_method(finetune_config(path, overrides=FT, random_init=True))
    assert scratch.cfg["finetune"]["init"] is None
    assert not torch.equal(scratch.backbone.vit.state_dict()["blocks.0.attn.qkv.weight"], weights["blocks.0.attn.qkv.weight"])
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], weights["blocks.0.attn.qkv.weight"])
    # a backbone of other channels is refused with a message
    with pytest.raises(ConfigError, match=r"takes 1-channel images but data.channels=3"):
        build_method(finetune_config(path, overrides=FT + ["data.channels=3", "data.mean=[0.5,0.5,0.5]",
                                                          "data.std=[0.5,0.5,0.5]"])).init_from(str(path))


def test_mixup_and_cutmix_go_through_timm(pretrained, monkeypatch):
    from timm.data import Mixup

    path, _ = pretrained
    method = build_method(finetune_config(path, overrides=FT + ["finetune.mixup=0.8", "finetune.cutmix=1.0"]))
    assert isinstance(method.mixup, Mixup) and method.mixup.mixup_alpha == 0.8 and method.mixup.cutmix_alpha == 1.0
    calls = []
    real = Mixup.__call__

    def counting(self, x, target):
        calls.append(x.shape)
        return real(self, x, target)

    monkeypatch.setattr(Mixup, "__call__", counting)
    from mst.data import Batch
    from mst.methods import StepContext

    x = torch.randn(8, 1, 28, 28)
    out = method(Batch([x], torch.arange(8) % 10, torch.arange(8)), StepContext(0, 0))
    assert calls == [x.shape] and torch.isfinite(out.loss)
    off = build_method(finetune_config(path, overrides=FT + ["finetune.mixup=0", "finetune.cutmix=0"]))
    assert off.mixup is None and type(off.criterion).__name__ == "LabelSmoothingCrossEntropy"
    with pytest.raises(ConfigError, match="optim.batch_size=7 must be even"):
        finetune_config(path, overrides=FT + ["optim.batch_size=7", "finetune.mixup=0.8"])


def test_finetune_resumes_exactly_and_exports_a_timm_classifier(pretrained, tmp_path):
    from mst.eval.export import export_backbone, load_exported

    path, _ = pretrained
    full = run_finetune(path, tmp_path / "full", overrides=FT, train_subset=40, log=lambda *a: None)
    assert full["train_images"] == 40 and [h["epoch"] for h in full["history"]] == [1, 2]
    assert json.loads((tmp_path / "full" / "finetune.json").read_text())["top1"] == full["top1"]
    from mst.engine.trainer import Trainer

    cfg = finetune_config(path, overrides=FT, train_subset=40)
    part = Trainer(cfg, tmp_path / "part", log=lambda *a: None)
    part.method.init_from(str(path))
    assert part.fit(max_steps=3) == "max_steps"
    resumed = run_finetune(path, tmp_path / "part", overrides=FT, train_subset=40, log=lambda *a: None)
    a = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r.get("loss", r.get("test_top1")) for r in a] == pytest.approx(
        [r.get("loss", r.get("test_top1")) for r in b], rel=1e-5)
    assert [h["top1"] for h in resumed["history"]] == pytest.approx([h["top1"] for h in full["history"]])
    # the exported classifier gives the fine-tuned model's logits in timm
    weights, meta = export_backbone(tmp_path / "full", tmp_path / "clf.safetensors", log=lambda *a: None)
    info = json.loads(meta.read_text())
    assert info["model_kwargs"]["num_classes"] == 10
    model = load_exported(weights)
    ours = build_method(cfg)
    ours.load_state_dict(load_checkpoint(tmp_path / "full")["method"])
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), ours.eval().predict(x), atol=1e-5)


def test_finetune_refuses_unlabelled_data(pretrained, tmp_path):
    path, _ = pretrained
    with pytest.raises(ConfigError, match="fine-tuning needs labels"):
        finetune_config(path, overrides=FT + ["data.name=folder", f"data.root={tmp_path}"])


def test_mae_linear_probe_is_batchnorm_then_linear_with_lars():
    from mst.eval.linear import train_linear_probe

    g = torch.Generator().manual_seed(0)
    centers = 4.0 * torch.randn(4, 16, generator=g)
    y = torch.randint(0, 4, (400,), generator=g)
    x = centers[y] * 50 + 1000 + torch.randn(400, 16, generator=g)  # badly scaled features: BN fixes that
    from mst.eval.linear import MAE_PROBE_LR

    res = train_linear_probe((x[:300], y[:300]), (x[300:], y[300:]), epochs=20, lr=MAE_PROBE_LR * 256 / 64,
                             batch_size=64, probe="mae", log=lambda s: None)
    clf = res["classifier"]
    bn = clf[0]
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert res["top1"] > 90.0
    with pytest.raises(ValueError, match="probe='svm' is not one of dino, mae"):
        train_linear_probe((x, y), (x, y), epochs=1, probe="svm", log=lambda s: None)


def test_a_balanced_knn_bank_holds_the_fine_tunes_labels(pretrained):
    from mst.data import build_dataset
    from mst.eval.features import load_eval_split

    path, _ = pretrained
    cfg = finetune_config(path, overrides=FT, train_subset=50)
    labelled = build_dataset(cfg["data"])
    x, y = load_eval_split(cfg, "train", 50, seed=0, balanced=True)
    assert torch.bincount(y).tolist() == [5] * 10
    assert y.tolist() == np.asarray(labelled.targets).tolist()
    first, _ = labelled[0]
    assert torch.allclose(x[0, 0] * 0.3530 + 0.2860, torch.as_tensor(np.asarray(first), dtype=torch.float32) / 255,
                          atol=1e-5)


def test_finetune_on_a_labelled_image_folder(pretrained, tmp_path):
    """An image_folder with train/ and test/: the number of classes comes from the folders, 2 here."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for cls, level in (("bright", 200), ("dark", 30)):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(level + rng.integers(-20, 20, (33, 41)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    path, _ = pretrained
    over = FT + ["data.name=image_folder", f"data.root={tmp_path / 'data'}", "augment.backend=pil"]
    res = run_finetune(path, tmp_path / "ft", overrides=over, train_subset=16, log=lambda *a: None)
    cfg = load_checkpoint(tmp_path / "ft")["config"]
    assert cfg["finetune"]["num_classes"] == 2 and res["train_images"] == 16
    assert 0 <= res["top1"] <= 100 and len(res["history"]) == 2


def test_a_fine_tune_whose_loss_stays_at_chance_after_warm_up_warns_once(pretrained):
    """ln K is the loss of a uniform prediction: a classifier still there after the warm-up is not learning (the
    SimMIM / AttMask fine-tune at base lr 1.6e-2 sat at ln 10 for 25 of 30 epochs). During the warm-up it is
    normal, and it is the mean over a window that counts (the loss of a near-uniform classifier dips now and then)."""
    import warnings

    from mst.data import Batch
    from mst.health import ChanceLossMonitor, NotLearningWarning
    from mst.methods import StepContext

    m = ChanceLossMonitor(num_classes=10, steps=3)
    assert m.chance == pytest.approx(float(np.log(10)))
    rising = [m.update(2.30, lr, step) for step, lr in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])]
    assert not any(rising) and not m.losses  # the warm-up: the lr still rises, nothing counted
    line = 0.97 * np.log(10)
    with pytest.warns(NotLearningWarning, match=r"a mean >= 97% of ln 10 = 2.30 over 3 steps .*step 10"):
        losses = [2.30, 1.50, 2.30, 2.30, line - 0.01, 2.30, 2.30]  # window means: -, -, 2.03, 2.03, 2.27
        seen = [m.update(loss, 0.5, step) for step, loss in zip(range(6, 13), losses)]
    assert seen == [False] * 4 + [True, False, False]  # a dip under the line does not hide the mean; then once
    path, _ = pretrained
    method = build_method(finetune_config(path, overrides=FT))
    assert method.chance.num_classes == 10
    method.chance.steps = 2
    batch = Batch([torch.randn(8, 1, 28, 28)], torch.arange(8) % 10, torch.arange(8))
    with warnings.catch_warnings(record=True) as caught:  # the near-zero head predicts uniformly: loss = ln 10
        warnings.simplefilter("always")
        for step, lr in enumerate([1e-3, 1e-3, 1e-3]):
            method(batch, StepContext(0, step, values={"lr": lr}))
    assert [type(w.message) for w in caught] == [NotLearningWarning]
