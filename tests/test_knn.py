"""k-NN classifier against a brute-force reference, feature extraction kinds, and the CLI entry point."""
from __future__ import annotations

import math

import pytest
import torch

from mst.config import load_config
from mst.eval.features import extract_features, normalize_images, random_init_backbone
from mst.eval.knn import knn_accuracy, knn_classify, run_knn
from mst.methods import build_method
from tests.conftest import save_method

TINY = ["model.depth=2", "dino.out_dim=64", "dino.hidden_dim=64", "dino.bottleneck_dim=32",
        "mst.decoder_channels=[16,8]"]


def brute_force_knn(train, train_labels, test, k, T, num_classes):
    """One test point at a time, explicit loops, float64."""
    preds = []
    tr = [[float(v) for v in row] for row in train]
    tr = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in tr]
    for row in test:
        q = [float(v) for v in row]
        nq = math.sqrt(sum(x * x for x in q))
        q = [v / nq for v in q]
        sims = [(sum(a * b for a, b in zip(q, t)), j) for j, t in enumerate(tr)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for s, j in sims[: min(k, len(tr))]:
            votes[int(train_labels[j])] += math.exp(s / T)
        preds.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return preds


@pytest.mark.parametrize("n_test", [1, 7, 99])
def test_knn_matches_brute_force(n_test):
    g = torch.Generator().manual_seed(n_test)
    # 4 classes of very different sizes: class 3 has only 3 members, so k=20 exceeds it; 50 < k=60
    labels = torch.tensor([0] * 20 + [1] * 15 + [2] * 12 + [3] * 3)
    train = torch.randn(50, 8, generator=g) + labels[:, None].float()
    test = torch.randn(n_test, 8, generator=g) + 1.5
    ks = (1, 3, 10, 20, 60)
    preds = knn_classify(train, labels, test, ks=ks, T=0.07, num_classes=4, batch_size=16)
    assert set(preds) == set(ks)
    for k in ks:
        ref = brute_force_knn(train, labels, test, k, 0.07, 4)
        assert preds[k].tolist() == ref, f"k={k}"
        assert preds[k].shape == (n_test,)


def test_knn_k_beyond_train_set_is_whole_set_vote():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[0.05, 1.0]])
    preds = knn_classify(train, labels, test, ks=(1, 200), T=100.0)
    assert preds[1].tolist() == [1]  # nearest is class 1
    # k=200 -> all three vote, each ~exp(0) at T=100: two class-0 votes outweigh the class-1 vote
    assert preds[200].tolist() == brute_force_knn(train, labels, test, 200, 100.0, 2) == [0]
    # at T=0.07 the near class-1 neighbour's weight wins the same whole-set vote
    assert knn_classify(train, labels, test, ks=(200,), T=0.07)[200].tolist() == [1]


def test_knn_small_temperature_does_not_overflow():
    g = torch.Generator().manual_seed(0)
    train, labels = torch.randn(30, 4, generator=g), torch.arange(30) % 3
    test = torch.randn(5, 4, generator=g)
    preds = knn_classify(train, labels, test, ks=(1, 5), T=0.001)  # exp(1 / 0.001) would overflow
    assert preds[5].tolist() == preds[1].tolist()  # so sharp a temperature leaves only the nearest vote


def test_knn_accuracy_separable():
    centers = torch.eye(3) * 5
    labels = torch.arange(60) % 3
    g = torch.Generator().manual_seed(1)
    train = centers[labels] + 0.1 * torch.randn(60, 3, generator=g)
    test_labels = torch.arange(9) % 3
    test = centers[test_labels] + 0.1 * torch.randn(9, 3, generator=g)
    acc = knn_accuracy(train, labels, test, test_labels, ks=(5, 20))
    assert acc == {5: 100.0, 20: 100.0}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config(overrides=TINY)
    method = build_method(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_method(method, path, epoch=0)
    return path, cfg


def test_feature_kinds(tiny_ckpt):
    _, cfg = tiny_ckpt
    bb = random_init_backbone(cfg)
    x = torch.randn(5, 1, 28, 28)
    d = bb.embed_dim
    cls, none = extract_features(bb, x, "cls", batch_size=2)
    assert none is None and cls.shape == (5, d)
    last4, _ = extract_features(bb, (x, torch.arange(5)), "last4", batch_size=3)
    assert last4.shape == (5, 2 * d)  # depth 2: "last 4" is both blocks
    torch.testing.assert_close(last4[:, -d:], cls, atol=1e-5, rtol=1e-5)  # last block's normed CLS = .cls
    pooled, y = extract_features(bb, (x, torch.arange(5)), "last4_avgpool", batch_size=4)
    assert pooled.shape == (5, 3 * d) and y.tolist() == [0, 1, 2, 3, 4]
    patches, _ = extract_features(bb, x, "patches")
    assert patches.shape == (5, 49, d)
    torch.testing.assert_close(pooled[:, -d:], patches.mean(1), atol=1e-5, rtol=1e-5)
    # deterministic random baseline
    torch.testing.assert_close(random_init_backbone(cfg)(x).cls, bb(x).cls)


def test_normalize_images():
    imgs = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8).numpy()
    x = normalize_images(imgs, [0.5], [0.5])
    assert x.shape == (1, 1, 2, 2)
    torch.testing.assert_close(x[0, 0], torch.tensor([[-1.0, 1.0], [-0.6, -0.2]]))
    assert normalize_images(imgs, [0.5] * 3, [0.5] * 3, size=4).shape == (1, 3, 4, 4)


def test_run_knn(tiny_ckpt):
    path, _ = tiny_ckpt
    lines: list[str] = []
    res = run_knn(path, ks=(1, 10), train_subset=200, test_subset=50, batch_size=128, device="cpu", log=lines.append)
    assert set(res["top1"]) == {1, 10}
    assert all(0.0 <= v <= 100.0 for v in res["top1"].values())
    assert res["n_train"] == 200 and res["n_test"] == 50
    assert any("top-1" in line for line in lines)
    base = run_knn(path, ks=(10,), train_subset=200, test_subset=50, random_init=True, device="cpu", log=lambda s: None)
    assert base["which"] == "random-init"
    # random features of Fashion-MNIST still beat chance (10 %) by far
    assert base["top1"][10] > 30.0


def test_run_knn_image_folder(tiny_ckpt, tmp_path):
    """A labelled image folder with train/ and test/ splits: bright vs dark images, RGB files of odd sizes."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for cls, level in (("bright", 200), ("dark", 30)):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(level + rng.integers(-20, 20, (33, 41, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    path, _ = tiny_ckpt
    res = run_knn(path, data={"name": "image_folder", "root": str(tmp_path)}, ks=(3,), device="cpu",
                  log=lambda s: None)
    assert res["n_train"] == 12 and res["n_test"] == 6
    assert res["top1"][3] == 100.0
