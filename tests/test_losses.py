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


def test_mae_loss_equals_hand_computation_on_masked_patches():
    """MAE: mean over pixels of each patch, then over masked patches; norm_pix: each target patch minus its
    mean over sqrt(unbiased variance + 1e-6). Written out with Python loops."""
    from mst.losses import patch_mse

    g = torch.Generator().manual_seed(5)
    pred, target = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g) * 3 + 1
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    for norm in (False, True):
        total, count = 0.0, 0
        for b in range(2):
            for n in range(5):
                if not mask[b, n]:
                    continue
                t = target[b, n].tolist()
                if norm:
                    mu = sum(t) / len(t)
                    var = sum((v - mu) ** 2 for v in t) / (len(t) - 1)
                    t = [(v - mu) / math.sqrt(var + 1e-6) for v in t]
                total += sum((p - q) ** 2 for p, q in zip(pred[b, n].tolist(), t)) / len(t)
                count += 1
        assert patch_mse(pred, target, mask, norm_pix=norm).item() == pytest.approx(total / count, rel=1e-5)
    # unmasked patches do not matter at all
    other = target.clone()
    other[~mask] += 100
    assert patch_mse(pred, other, mask).item() == pytest.approx(patch_mse(pred, target, mask).item())


def test_simmim_loss_equals_reference_l1_on_masked_pixels():
    """SimMIM's reference: |x - x_rec| on the image, times the pixel mask, summed, / (mask pixels + 1e-5) / C."""
    from mst.losses import patch_l1
    from mst.models.tokens import patchify, pixel_mask

    g = torch.Generator().manual_seed(6)
    x, rec = torch.randn(2, 3, 8, 12, generator=g), torch.randn(2, 3, 8, 12, generator=g)
    mask = torch.rand(2, 6, generator=g) < 0.5
    m = pixel_mask(mask, (2, 3), 4)  # (B, 1, H, W)
    reference = ((x - rec).abs() * m).sum() / (m.sum() + 1e-5) / 3
    got = patch_l1(patchify(rec, 4), patchify(x, 4), mask, channels=3)
    assert got.item() == pytest.approx(reference.item(), rel=1e-6)
