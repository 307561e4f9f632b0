"""Figures: exact PNG sizes, non-constant attention maps, masks of the right size, training curves."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from mst.config import load_config
from mst.eval.visualize import attention_figure, per_head_attention, plot_training_curves, run_visualize
from mst.models.encoder import build_student_teacher

TINY = ["model.depth=1", "head.out_dim=64", "head.hidden_dim=64", "head.bottleneck_dim=32",
        "decoder.channels=[16,8]", "mask.p=0.5", "mask.num=2"]


def _models():
    torch.manual_seed(0)
    cfg = load_config(overrides=TINY)
    student, teacher = build_student_teacher(cfg)
    return cfg, student.eval(), teacher.eval()


def test_attention_figure(tmp_path):
    cfg, student, teacher = _models()
    x = torch.randn(1, 28, 28)
    out = tmp_path / "fig.png"
    res = attention_figure(teacher.backbone, x, cfg["data"]["mean"], cfg["data"]["std"], cfg["mask"],
                           student=student, out_path=out, seed=0, panel_px=100)
    with Image.open(out) as im:
        assert im.size == res["size"] == (5 * 100, 2 * 100)  # 5 panels in row 1 (3 heads in row 2)
    assert res["attention"].shape == (28, 28) and np.ptp(res["attention"]) > 0
    assert res["head_attention"].shape == (3, 28, 28) and all(np.ptp(a) > 0 for a in res["head_attention"])
    # the plotted mean map is the backbone's own attention, upsampled
    own = teacher.backbone(x[None], return_attention=True).attention.reshape(7, 7)
    np.testing.assert_allclose(res["attention"][::4, ::4], own.numpy(), atol=1e-6)
    np.testing.assert_allclose(res["head_attention"].mean(0), res["attention"], atol=1e-6)
    assert res["attention_mask"].shape == res["random_mask"].shape == (7, 7)
    assert not (res["attention_mask"] & ~res["candidates"]).any()  # only candidates are ever masked
    assert res["candidates"].sum() == 49 // 2
    assert res["reconstruction"].shape == (28, 28)
    # without a student: 4 panels
    res2 = attention_figure(teacher.backbone, x, [0.5], [0.5], cfg["mask"], out_path=tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert im.size == res2["size"] == (4 * 160, 2 * 160)
    assert res2["reconstruction"] is None


def test_per_head_attention_sums_to_patch_share():
    _, _, teacher = _models()
    att = per_head_attention(teacher.backbone, torch.randn(2, 1, 28, 28))
    assert att.shape == (2, 3, 49)
    assert (att.sum(-1) < 1).all() and (att > 0).all()  # the CLS token's own share is left out


def test_training_curves(tmp_path):
    lines = [
        {"step": 10, "epoch": 0, "loss": 5.0, "loss_ce": 4.0, "loss_restore": 1.0, "lr": 1e-4, "note": "x"},
        {"step": 20, "epoch": 0, "loss": 4.0, "loss_ce": 3.2, "loss_restore": 0.8, "lr": 2e-4},
        {"step": 20, "epoch": 0, "knn_top1": 55.0},
        {"step": 30, "epoch": 1, "loss": 3.5, "loss_ce": 2.9, "loss_restore": 0.6, "lr": 3e-4, "flag": True},
    ]
    text = "\n".join(json.dumps(r) for r in lines) + '\n{"step": 40, "loss"'  # cut short by a kill
    (tmp_path / "metrics.jsonl").write_text(text)
    notes: list[str] = []
    out = plot_training_curves(tmp_path, log=notes.append)
    assert out == tmp_path / "training_curves.png"
    with Image.open(out) as im:
        assert im.size == (3 * 400, 2 * 300)  # 5 numeric series -> 3 x 2 grid of 4x3-inch panels at 100 dpi
    assert len(notes) == 1 and "not valid JSON" in notes[0]


def test_run_visualize(tmp_path):
    cfg, student, teacher = _models()
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config": cfg, "student": student.state_dict(), "teacher": teacher.state_dict(), "epoch": 0},
               run / "checkpoint.pt")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(img)
    written = run_visualize(run, images=[img], out_dir=tmp_path / "figs", log=lambda s: None)
    assert [p.name for p in written] == ["attention_photo.png", "training_curves.png"]
    with Image.open(written[0]) as im:
        assert im.size == (5 * 160, 2 * 160)
    from_data = run_visualize(run / "checkpoint.pt", n=2, out_dir=tmp_path / "figs2", log=lambda s: None)
    assert len(from_data) == 3 and all(p.is_file() for p in from_data)
