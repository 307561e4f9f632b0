import numpy as np
import pytest
import torch

from mst.engine.optim import build_optimizer, clip_gradients, set_lr_wd
from mst.schedules import build_schedules, cosine_schedule, multistep_schedule
from mst.methods import build_method


def test_cosine_schedule_points():
    s = cosine_schedule(1.0, 0.1, epochs=10, iters_per_epoch=5, warmup_epochs=2, warmup_start=0.0)
    assert len(s) == 50
    assert s[0] == 0.0
    assert s[5] == pytest.approx(0.5)  # halfway through the linear warm-up
    assert s[10] == pytest.approx(1.0)  # warm-up ends at the base value
    assert s[10 + 20] == pytest.approx(0.55)  # cosine midpoint: (base + final) / 2
    assert s[-1] == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi * 39 / 40)))
    assert np.all(np.diff(s[10:]) <= 1e-12)


def test_build_schedules_scaling(tiny_cfg):
    cfg = tiny_cfg
    cfg["optim"].update(epochs=10, warmup_epochs=2, base_lr=5e-4, batch_size=64, min_lr=1e-6)
    s = build_schedules(cfg, iters_per_epoch=4, world_size=4)
    peak = 5e-4 * 64 * 4 / 256
    assert s["lr"][0] == 0.0 and s["lr"][8] == pytest.approx(peak)
    assert s["lr"][-1] == pytest.approx(1e-6, abs=peak * 0.01)
    assert s["wd"][0] == pytest.approx(0.04) and s["wd"][-1] == pytest.approx(0.4, abs=1e-3)
    assert "momentum" not in s  # the teacher momentum is MST's own schedule
    m = build_method(cfg).schedules(4, 10)["momentum"]
    assert m[0] == pytest.approx(0.996) and m[-1] == pytest.approx(1.0, abs=1e-4) and len(m) == 40


def test_multistep_schedule_points():
    s = multistep_schedule(1.0, [6, 8], 0.1, epochs=10, iters_per_epoch=5, warmup_epochs=2)
    assert len(s) == 50 and s[0] == 0.0 and s[5] == pytest.approx(0.5)
    assert s[10] == s[29] == 1.0 and s[30] == pytest.approx(0.1) and s[40] == pytest.approx(0.01)


def test_no_weight_decay_on_bias_and_norm_and_layer_scales(tiny_cfg):
    method = build_method(tiny_cfg)
    groups = method.param_groups()
    names = {id(p): n for n, p in method.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    assert "student.backbone.vit.blocks.0.attn.qkv.weight" in decayed
    assert not any(n.endswith(".bias") or "norm" in n.split(".")[-2] for n in decayed)
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["no_weight_decay"]
    assert not any(n.startswith("teacher.") for n in names.values() if n in decayed)
    model = torch.nn.Linear(3, 4)
    opt = build_optimizer([{"params": [model.weight]}, {"params": [model.bias], "no_weight_decay": True,
                                                         "weight_decay": 0.0, "lr_scale": 0.5}], (0.9, 0.95))
    set_lr_wd(opt, 0.1, 0.3)
    assert opt.param_groups[0]["weight_decay"] == 0.3 and opt.param_groups[1]["weight_decay"] == 0.0
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.05] and opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_per_parameter_clipping():
    a = torch.nn.Parameter(torch.zeros(4))
    b = torch.nn.Parameter(torch.zeros(4))
    a.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5 -> clipped to 1
    b.grad = torch.tensor([0.3, 0.4, 0.0, 0.0])  # norm 0.5 -> untouched
    m = torch.nn.Module()
    m.a, m.b = a, b
    clip_gradients(m, 1.0)
    assert a.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(b.grad, torch.tensor([0.3, 0.4, 0.0, 0.0]))


def test_global_norm_clipping():
    m = torch.nn.Module()
    m.a, m.b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    m.a.grad, m.b.grad = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])  # global norm 5
    clip_gradients(m, 1.0, "norm")
    assert m.a.grad.tolist() == pytest.approx([0.6, 0.0], rel=1e-4) and m.b.grad.tolist() == pytest.approx(
        [0.0, 0.8], rel=1e-4)
