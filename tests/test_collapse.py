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


# -- DINOv2's levers: Sinkhorn-Knopp centering and KoLeo; RankMe and the feature spread -----------------------------
import numpy as np  # noqa: E402

from mst.eval.online import _warn_if_rank_falls  # noqa: E402
from mst.losses.dino_loss import feature_stats, sinkhorn_knopp  # noqa: E402
from mst.losses.koleo import koleo_loss  # noqa: E402


def _sinkhorn_reference(scores: np.ndarray, iters: int) -> np.ndarray:
    """SwAV's algorithm in float64: Q = exp(S)^T, alternately give every prototype (row) 1/K and every image
    (column) 1/B of the mass, then scale so each image's column sums to 1."""
    q = np.exp(scores.astype(np.float64)).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * b
    return (q * b).T


def test_sinkhorn_matches_the_reference_and_balances_prototypes():
    torch.manual_seed(0)
    scores = torch.randn(12, 5) * 3
    got = sinkhorn_knopp(scores, iters=3)
    np.testing.assert_allclose(got.numpy(), _sinkhorn_reference(scores.numpy(), 3), rtol=1e-5, atol=1e-7)
    assert torch.allclose(got.sum(-1), torch.ones(12), atol=1e-6)
    # converged, every prototype gets the same share of the batch even when one score column dominates
    skewed = scores.clone()
    skewed[:, 0] += 5.0
    many = sinkhorn_knopp(skewed, iters=200)
    np.testing.assert_allclose(many.sum(0).numpy(), np.full(5, 12 / 5), rtol=1e-3)
    assert float(torch.softmax(skewed, -1)[:, 0].mean()) > 0.8  # a softmax would have put most mass on it


def test_koleo_matches_brute_force_nearest_neighbours():
    torch.manual_seed(1)
    x = torch.randn(9, 6)
    z = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    nearest = [min(np.linalg.norm(z[i] - z[j]) for j in range(9) if j != i) for i in range(9)]
    assert float(koleo_loss(x)) == pytest.approx(-np.mean(np.log(np.array(nearest) + 1e-8)), rel=1e-5)
    single = koleo_loss(x[:1].requires_grad_())
    assert float(single) == 0.0 and single.requires_grad  # no neighbour, no term (and backward still runs)
    with pytest.raises(Exception, match="dino.koleo_weight=0.1 needs optim.batch_size >= 2"):
        build_method(make_tiny_cfg("dino.koleo_weight=0.1", "optim.batch_size=1"))


def test_feature_stats_rank_and_spread():
    torch.manual_seed(2)
    x = torch.randn(50, 8)
    sv = np.linalg.svd(x.numpy(), compute_uv=False)
    p = sv / sv.sum() + 1e-7
    st = feature_stats(x)
    assert st["rankme"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-4)
    z = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    assert st["feature_std"] == pytest.approx(float(z.std(axis=0, ddof=1).mean()), rel=1e-4)
    point = torch.ones(50, 8) + 1e-4 * torch.randn(50, 8)  # collapsed onto one direction
    assert feature_stats(point)["rankme"] < 1.1 and feature_stats(point)["feature_std"] < 1e-3


def test_rank_warning_fires_once_when_the_rank_halves():
    state = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for r in (20.0, 30.0, 16.0, 14.0, 5.0):
            _warn_if_rank_falls(state, r, step=0)
    msgs = [str(w.message) for w in caught if issubclass(w.category, CollapseWarning)]
    assert len(msgs) == 1 and "fell to 14.0" in msgs[0] and "best 30.0" in msgs[0]


def test_koleo_and_sinkhorn_in_the_mst_step():
    cfg = make_tiny_cfg("dino.koleo_weight=0.1", "dino.centering=sinkhorn")
    torch.manual_seed(0)
    mst = build_method(cfg)
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28), torch.randn(4, 1, 12, 12), torch.randn(4, 1, 12, 12)]
    out = step(mst, views)
    m = out.metrics
    expected = m["loss_ce"] + 0.1 * m["loss_koleo"] + cfg["mst"]["restore_weight"] * m.get("loss_restore", 0.0)
    assert m["loss"] == pytest.approx(expected, rel=1e-5) and m["loss_koleo"] != 0
    assert float(mst.dino_loss.center.abs().sum()) == 0.0  # Sinkhorn replaces the centre: it never moves
    with pytest.raises(Exception, match="dino.centering='mean' is not one of center, sinkhorn"):
        build_method(make_tiny_cfg("dino.centering=mean"))
