"""Distillation from a frozen teacher (`method=distill`): the teacher stays frozen and runs once per step, the
student's map is resized to the teacher's grid as an explicit interpolation says, the loss is the cosine distance
written out here, a CNN student trains, is scored by k-NN and exports into timm with identical outputs, and what
cannot work is one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mst.cli import main
from mst.config import load_config
from mst.methods import build_method
from mst.methods.distill import resize_tokens
from mst.registry import ConfigError
from tests.conftest import TINY_DISTILL, step, views_for


def test_teacher_is_frozen_and_runs_once_per_step(tmp_path):
    from mst.engine.trainer import Trainer

    trainer = Trainer(load_config(overrides=TINY_DISTILL), tmp_path / "r", log=lambda *a: None)
    method = trainer.method
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    calls = []
    method.teacher.register_forward_hook(lambda m, i, o: calls.append(m.training))
    trainer.fit(max_steps=3)
    assert calls == [False, False, False]  # once per step, in eval mode
    assert all(not p.requires_grad for p in method.teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in method.teacher.state_dict().items())
    names = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in names for p in method.teacher.parameters())


def test_resize_matches_an_explicit_bilinear_interpolation():
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # a 2x2 grid of 3-d tokens
    out = resize_tokens(tokens, (2, 2), (4, 4))
    # align_corners=False: output pixel i samples input coordinate (i + 0.5) / 2 - 0.5, clamped at the border
    def ref(grid):
        res = torch.empty(4, 4)
        for i in range(4):
            for j in range(4):
                y, x = min(max((i + 0.5) / 2 - 0.5, 0), 1), min(max((j + 0.5) / 2 - 0.5, 0), 1)
                y0, x0 = int(np.floor(y)), int(np.floor(x))
                y1, x1 = min(y0 + 1, 1), min(x0 + 1, 1)
                wy, wx = y - y0, x - x0
                res[i, j] = ((1 - wy) * (1 - wx) * grid[y0, x0] + (1 - wy) * wx * grid[y0, x1]
                             + wy * (1 - wx) * grid[y1, x0] + wy * wx * grid[y1, x1])
        return res
    for b in range(2):
        for d in range(3):
            want = ref(tokens[b, :, d].reshape(2, 2))
            torch.testing.assert_close(out[b, :, d].reshape(4, 4), want)
    assert torch.equal(resize_tokens(tokens, (2, 2), (2, 2)), tokens)


def test_loss_is_the_cosine_distance_to_the_teachers_features():
    method = build_method(load_config(overrides=TINY_DISTILL + ["model.drop_path=0.0"])).train()  # deterministic
    x = views_for(method, b=3)[0]
    out = step(method, [x])
    with torch.no_grad():
        t = method.teacher(x)
        s = method.student(x)
        g = method.global_map(s.cls)
        p = method.patch_map(resize_tokens(s.patches, s.grid, t.grid))
        want_g = 1 - (g * t.cls).sum(-1) / (g.norm(dim=-1) * t.cls.norm(dim=-1))
        want_p = 1 - (p * t.patches).sum(-1) / (p.norm(dim=-1) * t.patches.norm(dim=-1))
    assert out.metrics["loss_global"] == pytest.approx(want_g.mean().item(), rel=1e-5)
    assert out.metrics["loss_patch"] == pytest.approx(want_p.mean().item(), rel=1e-5)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("coffee", "rocket")):
        src = getattr(skimage.data, name)()
        for split, n in (("train", 10), ("test", 4)):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                t, l = int(rng.integers(0, 300)), int(rng.integers(0, 300))
                Image.fromarray(src[t:t + 40, l:l + 40]).save(d / f"{i}.png")
    return root


def test_a_cnn_student_trains_is_scored_and_exports_to_timm(photos, tmp_path, capsys):
    teacher = tmp_path / "teacher.safetensors"  # a 3-channel teacher of the folder's size, as a user has one
    kwargs = dict(img_size=32, patch_size=8, in_chans=3, num_classes=0, dynamic_img_size=True, depth=1, embed_dim=32,
                  num_heads=2)
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in timm.create_model("vit_tiny_patch16_224", **kwargs).state_dict().items()},
              str(teacher))
    teacher.with_suffix(".json").write_text(json.dumps({"model_name": "vit_tiny_patch16_224", "model_kwargs": kwargs}))
    run = tmp_path / "student"
    assert main(["pretrain", "--data", str(photos), "--out", str(run), "--teacher",
                 f"timm:vit_tiny_patch16_224={teacher}", "--max-steps", "2", "--set", "model.arch=resnet18",
                 "--set", "optim.batch_size=4", "--set", "log.progress=false", "--set", "log.tensorboard=false",
                 "--set", "log.knn_every=0"]) == 0
    out = capsys.readouterr().out
    assert "method distill" in out
    res = tmp_path / "knn.json"
    assert main(["knn", "--ckpt", str(run), "--data", str(photos), "--k", "3", "--json", str(res)]) == 0
    assert 0 <= json.loads(res.read_text())["student"]["3"] <= 100
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "r18.safetensors")]) == 0
    call = next(l.strip() for l in capsys.readouterr().out.splitlines() if "timm.create_model(" in l)
    scope: dict = {}
    exec(f"import timm\n{call}", scope)
    from mst.checkpoint import load_backbone

    ours, _ = load_backbone(run)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scope["model"].eval()(x), ours(x).cls, rtol=0, atol=1e-6)
    # and fine-tuned as a classifier of the folder's classes, exported whole
    ft = tmp_path / "ft"
    assert main(["finetune", "--ckpt", str(run), "--data", str(photos), "--out", str(ft), "--epochs", "1",
                 "--set", "log.progress=false", "--set", "log.tensorboard=false"]) == 0
    assert main(["export", "--ckpt", str(ft), "--out", str(tmp_path / "clf.safetensors")]) == 0
    call = next(l.strip() for l in capsys.readouterr().out.splitlines() if "timm.create_model(" in l)
    exec(f"import timm\n{call}", scope)
    from mst.methods import load_method

    with torch.no_grad():
        torch.testing.assert_close(scope["model"].eval()(x), load_method(ft).predict(x), rtol=0, atol=1e-5)


def test_what_cannot_work_is_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="method=distill needs a teacher"):
        build_method(load_config(overrides=[o for o in TINY_DISTILL if not o.startswith("teacher.init")]))
    with pytest.raises(ConfigError, match="resnet18' cannot drop tokens .*a CNN's feature map"):
        load_config(overrides=["method=mae", "model.arch=resnet18", "model.img_size=28"])
    with pytest.raises(ConfigError, match="is a CNN: it has no tokens to mask"):
        build_method(load_config(overrides=["method=simmim", "model.arch=resnet18", "model.img_size=28"]))
    with pytest.raises(ConfigError, match=r"model.arch='convnext_atto' cannot take 28 px images"):
        build_method(load_config(overrides=TINY_DISTILL + ["model.arch=convnext_atto"]))
    code = main(["pretrain", "--out", str(tmp_path / "r"), "--teacher", "timm:beit_base_patch16_224=/nowhere.pth",
                 "--max-steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "starts from timm ViTs" in err
