"""Linear probe: learns a separable problem, per-sample crop/flip geometry, augmented path on a tiny ViT."""
from __future__ import annotations

import json

import torch

from mst.config import load_config
from mst.eval.features import random_init_backbone
from mst.eval.linear import random_resized_crop_flip, topk_accuracy, train_linear_probe
from tests.conftest import save_method

TINY = ["model.depth=1", "dino.out_dim=64", "dino.hidden_dim=64", "dino.bottleneck_dim=32"]


def blobs(n: int, centers: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, len(centers), (n,), generator=g)
    return centers[y] + torch.randn(n, centers.shape[1], generator=g), y


def test_probe_separates_gaussian_blobs():
    g = torch.Generator().manual_seed(0)
    centers = 4.0 * torch.randn(5, 16, generator=g)
    train, test = blobs(500, centers, g), blobs(200, centers, g)
    lines: list[str] = []
    res = train_linear_probe(train, test, epochs=10, lr=0.1, batch_size=64, device="cpu", log=lines.append)
    assert res["top1"] >= 95.0 and res["best_top1"] >= res["top1"]
    assert res["top5"] == 100.0  # 5 classes: top-5 always hits
    assert len(res["history"]) == 10 and res["history"][0]["epoch"] == 1
    assert res["history"][-1]["loss"] < res["history"][0]["loss"]
    assert res["num_features"] == 16 and res["num_classes"] == 5
    assert isinstance(res["classifier"], torch.nn.Linear)
    assert len(lines) == 11  # header + one line per epoch
    again = train_linear_probe(train, test, epochs=10, lr=0.1, batch_size=64, device="cpu", log=lambda s: None)
    assert again["history"] == res["history"]  # seeded: reproducible


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 2, 0])
    top1, top2 = topk_accuracy(logits, target, ks=(1, 2))
    assert abs(top1 - 100 / 3) < 1e-4 and abs(top2 - 200 / 3) < 1e-4
    assert topk_accuracy(logits, target, ks=(5,)) == [100.0]
    # from counts, as results JSON records them: 7 of 10 is 70.0, not float32's 69.9999988079071
    logits10 = torch.eye(10)
    assert topk_accuracy(logits10, torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 0, 0]), ks=(1,)) == [70.0]
    assert json.dumps(topk_accuracy(logits10, torch.tensor([1] * 10), ks=(1,))) == "[10.0]"


def test_crop_flip_geometry():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    same = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    torch.testing.assert_close(same, x)
    flipped = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    torch.testing.assert_close(flipped, x.flip(-1))
    g = torch.Generator().manual_seed(0)
    crops = random_resized_crop_flip(x[:1].expand(16, 1, 8, 8), scale=(0.1, 0.3), generator=g)
    assert crops.shape == (16, 1, 8, 8)
    assert len({round(float(c.sum()), 3) for c in crops}) > 1  # each sample gets its own crop


def test_augmented_probe_runs_backbone_each_epoch():
    cfg = load_config(overrides=TINY)
    bb = random_init_backbone(cfg)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(48, 1, 28, 28, generator=g)
    labels = torch.arange(48) % 3
    images[labels == 1] += 1.5  # classes differ in brightness: learnable through any crop
    calls = {"n": 0}
    handle = bb.vit.blocks[0].register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    res = train_linear_probe((images, labels), (images[:12], labels[:12]), backbone=bb, kind="last4",
                             augment=True, epochs=2, lr=0.05, batch_size=16, device="cpu", log=lambda s: None)
    handle.remove()
    assert res["num_features"] == bb.embed_dim  # depth 1: "last4" is the single block's CLS
    assert len(res["history"]) == 2 and 0.0 <= res["top1"] <= 100.0
    # test features once (1 batch) + feature-size probe (1) + 3 train batches per epoch x 2 epochs
    assert calls["n"] == 1 + 1 + 6
    for p in bb.parameters():
        assert p.grad is None  # frozen


def test_run_linear(tmp_path):
    from mst.eval.linear import run_linear
    from mst.methods import build_method

    torch.manual_seed(0)
    cfg = load_config(overrides=TINY)
    method = build_method(cfg)
    path = tmp_path / "checkpoint.pt"
    save_method(method, path, epoch=0)
    res = run_linear(path, epochs=5, train_subset=300, test_subset=100, batch_size=32, lr=0.5, device="cpu",
                     save_path=tmp_path / "clf.pt", log=lambda s: None)
    assert "classifier" not in res and len(res["history"]) == 5
    assert res["top1"] > 20.0  # random-init ViT features of Fashion-MNIST: well above chance after 5 epochs
    saved = torch.load(tmp_path / "clf.pt", weights_only=True)
    assert saved["state_dict"]["weight"].shape == (10, 192)


def test_cli_linear_writes_json(tmp_path, capsys):
    import json

    from mst.cli import main
    from mst.methods import build_method

    torch.manual_seed(0)
    cfg = load_config(overrides=TINY)
    method = build_method(cfg)
    path = tmp_path / "checkpoint.pt"
    save_method(method, path, epoch=0)
    out = tmp_path / "res" / "linear.json"
    assert main(["linear", "--ckpt", str(path), "--epochs", "2", "--train-subset", "200", "--test-subset", "50",
                 "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    text = "\n" + capsys.readouterr().out
    printed = json.loads(text[text.rindex("\n{\n") + 1:])  # the summary is the last thing printed
    assert saved == printed
    assert 0.0 <= saved["top1"] <= 100.0 and saved["top1"] <= saved["top5"]
