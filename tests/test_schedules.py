import numpy as np
import pytest
import torch

from mst.engine.schedules import build_schedules, cosine_schedule
from mst.engine.optim import clip_gradients, param_groups, set_lr_wd, build_optimizer


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
    assert s["momentum"][0] == pytest.approx(0.996) and s["momentum"][-1] == pytest.approx(1.0, abs=1e-4)


def test_no_weight_decay_on_bias_and_norm():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    groups = param_groups(model)
    assert [p.shape for p in groups[0]["params"]] == [torch.Size([4, 3])]
    assert len(groups[1]["params"]) == 3 and groups[1]["weight_decay"] == 0.0
    opt = build_optimizer(model)
    set_lr_wd(opt, 0.1, 0.3)
    assert opt.param_groups[0]["weight_decay"] == 0.3 and opt.param_groups[1]["weight_decay"] == 0.0
    assert all(g["lr"] == 0.1 for g in opt.param_groups)


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
