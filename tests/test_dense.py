"""Dense probe: deterministic canvases whose label maps match the pasted items, hand-checked mIoU, a tiny run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mst.config import load_config
from mst.eval.dense import DenseProbe, make_dense_set, miou, run_dense, train_dense_probe
from mst.methods import build_method
from tests.conftest import save_method


def items(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fake 28x28 items: a random blob of foreground on zeros, with some faint (sub-threshold) pixels."""
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        t, l = rng.integers(2, 12, size=2)
        imgs[i, t : t + 14, l : l + 12] = rng.integers(30, 256, size=(14, 12))
        imgs[i, 0, :] = 10  # faint rim: below the 10 % threshold, never pasted
    return imgs, rng.integers(0, 10, size=n)


def test_dense_set_deterministic():
    imgs, labels = items()
    a = make_dense_set(imgs, labels, 6, canvas=56, seed=3)
    b = make_dense_set(imgs, labels, 6, canvas=56, seed=3)
    c = make_dense_set(imgs, labels, 6, canvas=56, seed=4)
    assert a[0].dtype == np.uint8 and a[1].dtype == np.int64 and a[0].shape == a[1].shape == (6, 56, 56)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_dense_labels_match_pasted_items():
    imgs, labels = items()
    canv, maps, placed = make_dense_set(imgs, labels, 8, canvas=56, items_per_canvas=(2, 3), seed=1,
                                        return_items=True)
    for i in range(8):
        assert 2 <= len(placed[i]) <= 3
        covered = np.zeros((56, 56), bool)
        expected = np.zeros((56, 56), np.int64)
        image = np.zeros((56, 56), np.uint8)
        for j, t, l in placed[i]:
            fg = imgs[j] > 25.5
            covered[t : t + 28, l : l + 28] |= fg
            expected[t : t + 28, l : l + 28][fg] = labels[j] + 1
            image[t : t + 28, l : l + 28][fg] = imgs[j][fg]
        np.testing.assert_array_equal(maps[i], expected)
        np.testing.assert_array_equal(canv[i], image)
        assert (maps[i][~covered] == 0).all() and (canv[i][~covered] == 0).all()
        # every item's foreground carries its class + 1 except where a later item's foreground lies on top
        for n, (j, t, l) in enumerate(placed[i]):
            later = np.zeros((56, 56), bool)
            for j2, t2, l2 in placed[i][n + 1 :]:
                later[t2 : t2 + 28, l2 : l2 + 28] |= imgs[j2] > 25.5
            own = np.zeros((56, 56), bool)
            own[t : t + 28, l : l + 28] = imgs[j] > 25.5
            assert (maps[i][own & ~later] == labels[j] + 1).all()
        assert set(np.unique(maps[i])) <= {0} | {int(labels[j]) + 1 for j, _, _ in placed[i]}


def test_miou_hand_computed():
    target = torch.tensor([[0, 0, 1], [1, 2, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    res = miou(pred, target, num_classes=4)
    # IoU: class 0 = 1/3, class 1 = 2/3, class 2 = 1/2; class 3 absent from both -> not averaged
    assert math.isclose(res["miou"], 100 * (1 / 3 + 2 / 3 + 1 / 2) / 3, rel_tol=1e-9)
    assert math.isclose(res["pixel_acc"], 100 * 4 / 6, rel_tol=1e-9)
    assert res["per_class_iou"][3] is None
    assert math.isclose(res["per_class_iou"][1], 200 / 3, rel_tol=1e-9)
    # a class only predicted (never in the target) counts, with IoU 0
    res2 = miou(torch.tensor([3, 1]), torch.tensor([1, 1]), num_classes=4)
    assert math.isclose(res2["miou"], 100 * (1 / 2 + 0) / 2, rel_tol=1e-9)


def test_probe_learns_token_labels():
    g = torch.Generator().manual_seed(0)
    protos = 3 * torch.randn(3, 8, generator=g)
    lab = torch.randint(0, 3, (40, 4, 4), generator=g)
    tokens = protos[lab.reshape(40, 16)] + 0.1 * torch.randn(40, 16, 8, generator=g)
    maps = lab.repeat_interleave(2, 1).repeat_interleave(2, 2)  # 8x8 pixels, 2x2 per token
    res = train_dense_probe(tokens[:30], maps[:30], tokens[30:], maps[30:], (4, 4), 3, epochs=30, lr=0.05,
                            batch_size=10, device="cpu", log=lambda s: None)
    assert isinstance(res["probe"], DenseProbe)
    assert res["pixel_acc"] > 80.0 and res["miou"] > 60.0  # bilinear upsampling blurs token borders a little


def test_run_dense(tmp_path):
    cfg = load_config(overrides=["model.depth=1", "dino.out_dim=64", "dino.hidden_dim=64",
                                 "dino.bottleneck_dim=32"])
    method = build_method(cfg)
    path = tmp_path / "checkpoint.pt"
    save_method(method, path, epoch=0)
    res = run_dense(path, n_train=32, n_test=8, epochs=2, batch_size=16, device="cpu", log=lambda s: None)
    assert len(res["per_class_iou"]) == 11 and res["classes"][0] == "background"
    assert 0.0 <= res["miou"] <= 100.0 and 0.0 <= res["pixel_acc"] <= 100.0
    with pytest.raises(ValueError, match="divisible"):
        run_dense(path, canvas=58, n_train=4, n_test=2, epochs=1, device="cpu", log=lambda s: None)
