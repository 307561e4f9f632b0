import math

import pytest
import torch

from mst.losses import DINOLoss, restore_loss


def reference_dino(student, teacher, center, t_temp, s_temp=0.1, n_global=2):
    """Eq. 2 written out with Python loops over samples, views and classes."""
    b = teacher.shape[0] // n_global
    total, pairs = 0.0, 0
    for i in range(n_global):
        for v in range(len(student)):
            if v == i:
                continue
            loss_pair = 0.0
            for n in range(b):
                t = [(teacher[i * b + n, k].item() - center[0, k].item()) / t_temp for k in range(teacher.shape[1])]
                tm = max(t)
                tz = sum(math.exp(x - tm) for x in t)
                q = [math.exp(x - tm) / tz for x in t]
                s = [student[v][n, k].item() / s_temp for k in range(teacher.shape[1])]
                sm = max(s)
                logz = sm + math.log(sum(math.exp(x - sm) for x in s))
                loss_pair += -sum(q[k] * (s[k] - logz) for k in range(len(q)))
            total += loss_pair / b
            pairs += 1
    return total / pairs, pairs


def test_dino_loss_matches_reference_and_updates_center():
    g = torch.Generator().manual_seed(0)
    b, k, n_local = 3, 7, 3
    student = [torch.randn(b, k, generator=g) for _ in range(2 + n_local)]
    teacher = torch.randn(2 * b, k, generator=g)
    loss_fn = DINOLoss(k, 2, 0.1, 0.04, 0.04, 0, 10, 0.9)
    loss_fn.center.copy_(torch.randn(1, k, generator=g))
    center0 = loss_fn.center.clone()
    got = loss_fn(student, teacher, epoch=0)
    ref, pairs = reference_dino(student, teacher, center0, 0.04)
    assert pairs == 2 * (2 + n_local) - 2  # 8 pairs for 2 + 3 views
    assert got.item() == pytest.approx(ref, rel=1e-5)
    # center <- 0.9 center + 0.1 mean(teacher logits)
    expect = 0.9 * center0 + 0.1 * teacher.mean(0, keepdim=True)
    assert torch.allclose(loss_fn.center, expect, atol=1e-6)


def test_dino_loss_gradient_only_to_student():
    student = [torch.randn(2, 5, requires_grad=True) for _ in range(4)]
    teacher = torch.randn(4, 5, requires_grad=True)
    DINOLoss(5)(student, teacher, 0).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert teacher.grad is None


def test_teacher_temperature_schedule():
    loss = DINOLoss(4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30, epochs=100)
    assert loss.teacher_temp(0) == pytest.approx(0.04)
    assert loss.teacher_temp(15) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert loss.teacher_temp(29) == pytest.approx(0.07)
    assert loss.teacher_temp(99) == pytest.approx(0.07)
    assert loss.teacher_temp(500) == pytest.approx(0.07)


def test_restore_loss_whole_image_and_masked():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 1, 8, 8, generator=g)
    target = torch.randn(2, 1, 8, 8, generator=g)
    assert restore_loss(pred, target).item() == pytest.approx((pred - target).abs().mean().item())
    mask = torch.zeros(2, 4, dtype=torch.bool)  # 2x2 grid of 4-px patches
    mask[0, 1] = True  # image 0, top-right patch
    mask[1, 2] = True  # image 1, bottom-left patch
    got = restore_loss(pred, target, mask, patch_size=4, region="masked")
    err = (pred - target).abs()
    expect = (err[0, 0, :4, 4:].sum() + err[1, 0, 4:, :4].sum()) / 32
    assert got.item() == pytest.approx(expect.item(), rel=1e-6)
    assert restore_loss(pred, target, torch.zeros(2, 4, dtype=torch.bool), 4, "masked").item() == 0.0
    with pytest.raises(ValueError, match="does not match"):
        restore_loss(pred, target[:, :, :4])
