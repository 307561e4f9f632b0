"""DINO collapse monitors: the teacher's entropy against ln K, the KL between teacher and student terms, the
centre's norm, and a one-time warning when the teacher stays near uniform."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from mst.losses import DINOLoss
from mst.losses.dino_loss import CollapseMonitor, CollapseWarning, collapse_stats
from mst.methods import build_method
from tests.conftest import make_tiny_cfg, step


def test_collapse_stats_by_hand():
    k = 16
    uniform = torch.full((4, k), 1 / k)
    s = collapse_stats(uniform, ce=math.log(k) + 0.3, center=torch.tensor([[3.0, 4.0]]))
    assert s["teacher_entropy"] == pytest.approx(math.log(k)) and s["teacher_entropy_ratio"] == pytest.approx(1.0)
    assert s["kl"] == pytest.approx(0.3) and s["center_norm"] == pytest.approx(5.0)
    peaked = torch.zeros(4, k)
    peaked[:, 0] = 1.0
    assert collapse_stats(peaked, 0.0, torch.zeros(1, k))["teacher_entropy"] == pytest.approx(0.0, abs=1e-6)


def test_dino_loss_reports_the_teacher_entropy_it_used():
    torch.manual_seed(0)
    loss = DINOLoss(8, teacher_temp=0.5, warmup_teacher_temp=0.5)
    teacher = torch.randn(6, 8)
    students = [torch.randn(3, 8) for _ in range(3)]
    ce = loss(students, teacher, epoch=0)
    q = torch.softmax(teacher / 0.5, dim=-1)  # centre zero at the first step
    h = float(-(q * q.log()).sum(-1).mean())
    assert loss.stats["teacher_entropy"] == pytest.approx(h, rel=1e-5)
    assert loss.stats["kl"] == pytest.approx(float(ce) - h, rel=1e-5)
    assert loss.stats["teacher_entropy_ratio"] == pytest.approx(h / math.log(8), rel=1e-5)


def _run(cfg, steps: int) -> list:
    torch.manual_seed(0)
    mst = build_method(cfg)
    mst.collapse.steps = 3  # the default waits 100 steps
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.randn(4, 1, 12, 12), torch.randn(4, 1, 12, 12)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [step(mst, views) for _ in range(steps)]
    assert all(0 <= o.metrics["teacher_entropy_ratio"] <= 1 + 1e-6 for o in outs)
    return [w for w in caught if issubclass(w.category, CollapseWarning)]


def test_a_forced_collapse_warns_once_and_a_healthy_run_does_not():
    collapsed = make_tiny_cfg("dino.teacher_temp=50", "dino.warmup_teacher_temp=50", "dino.center_momentum=1.0")
    caught = _run(collapsed, 5)
    assert len(caught) == 1 and "drifting towards a uniform distribution" in str(caught[0].message)
    assert _run(make_tiny_cfg(), 5) == []


def test_monitor_needs_a_run_of_steps():
    m = CollapseMonitor(ratio=0.9, steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for r in (0.95, 0.95, 0.5, 0.95, 0.95):
            m.update(r, 0)
        assert not caught
        m.update(0.97, 6)
        assert len(caught) == 1
