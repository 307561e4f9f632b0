"""Figures: exact PNG sizes, non-constant attention maps, masks of the right size, training curves."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mst.config import load_config
from mst.eval.visualize import (attention_figure, per_head_attention, plot_collapse_curves, plot_training_curves,
                                run_visualize)
from mst.methods import build_method
from tests.conftest import TINY_MAE, TINY_SIMMIM, save_method

TINY = ["model.depth=1", "dino.out_dim=64", "dino.hidden_dim=64", "dino.bottleneck_dim=32",
        "mst.decoder_channels=[16,8]", "mask.p=0.5", "mask.num=2"]


def _models():
    torch.manual_seed(0)
    cfg = load_config(overrides=TINY)
    method = build_method(cfg).eval()
    return cfg, method, method.teacher


def test_attention_figure_with_mst_panels(tmp_path):
    cfg, method, teacher = _models()
    x = torch.randn(1, 28, 28)
    panels = method.panels(x[None], torch.Generator().manual_seed(0))[0]
    assert [p.title.split(":")[0].split(" ")[0] for p in panels] == ["random", "attn", "decoder"]
    out = tmp_path / "fig.png"
    res = attention_figure(teacher.backbone, x, cfg["data"]["mean"], cfg["data"]["std"], panels, out_path=out,
                           panel_px=100)
    with Image.open(out) as im:
        assert im.size == res["size"] == (5 * 100, 2 * 100)  # input, attention + 3 panels; 3 heads in row 2
    assert res["attention"].shape == (28, 28) and np.ptp(res["attention"]) > 0
    assert res["head_attention"].shape == (3, 28, 28) and all(np.ptp(a) > 0 for a in res["head_attention"])
    # the plotted mean map is the backbone's own attention, upsampled
    own = teacher.backbone(x[None], return_attention=True).attention.reshape(7, 7)
    np.testing.assert_allclose(res["attention"][::4, ::4], own.numpy(), atol=1e-6)
    np.testing.assert_allclose(res["head_attention"].mean(0), res["attention"], atol=1e-6)
    # MST's guided mask panel: masked tokens (grey 0.5) only among the candidates (red tint), 2 x 2 = 4 px tokens
    guided = panels[1].image
    grey = (guided == 0.5).all(-1)[::4, ::4]
    red = (guided[..., 0] > guided[..., 1] + 0.1)[::4, ::4]
    n_mask, n_cand = (int(v) for v in panels[1].title.split(": ")[1].split("/"))
    assert grey.sum() == n_mask and n_cand == 49 // 2 and red.sum() == n_cand - n_mask
    assert panels[2].image.shape == (28, 28)
    # without method panels: input and attention only, the heads set the width
    res2 = attention_figure(teacher.backbone, x, [0.5], [0.5], out_path=tmp_path / "b.png")
    with Image.open(tmp_path / "b.png") as im:
        assert im.size == res2["size"] == (3 * 160, 2 * 160)


@pytest.mark.parametrize("tiny", [TINY_MAE, TINY_SIMMIM])
def test_mim_panels_show_mask_and_reconstruction(tiny):
    torch.manual_seed(0)
    method = build_method(load_config(overrides=tiny)).eval()
    x = torch.randn(2, 1, 28, 28)
    rows = method.panels(x, torch.Generator().manual_seed(0))
    assert [p.title.split(" ")[0] for p in rows[0]] == ["masked", "reconstruction", "reconstruction"]
    masked, _, pasted = rows[0]
    n_masked = int(masked.title.split(" ")[1])
    assert n_masked == (37 if method.cfg["method"] == "mae" else 30)  # 49 - int(49 * 0.25); ceil(0.6 * 49)
    grey = (masked.image == 0.5).all(-1)[::4, ::4]
    assert grey.sum() == n_masked
    # visible tokens of the pasted panel are the input itself
    from mst.figures import to_display

    img = to_display(x[0], method.cfg["data"]["mean"], method.cfg["data"]["std"])
    visible = np.kron(~grey, np.ones((4, 4), dtype=bool))
    np.testing.assert_allclose(pasted.image[visible], img[visible], atol=1e-5)


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


def test_collapse_curves_overlay_runs_and_skip_without_monitors(tmp_path):
    for name, ratio in (("healthy", 0.4), ("collapsed", 0.95)):
        d = tmp_path / name
        d.mkdir()
        recs = [{"step": s, "loss_ce": 5.0, "teacher_entropy_ratio": ratio, "kl": 1.0, "center_norm": 2.0,
                 "teacher_cls_std": 0.05} for s in (10, 20, 30)] + [{"step": 30, "knn_top1": 60.0, "rankme": 40.0}]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    out = plot_collapse_curves({"healthy": tmp_path / "healthy", "collapsed": tmp_path / "collapsed"},
                               tmp_path / "c.png")
    with Image.open(out) as im:
        assert im.size == (1200, 600)  # 3 x 2 panels of 4 x 3 inches at 100 dpi
    mae = tmp_path / "mae"
    mae.mkdir()
    (mae / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    notes: list[str] = []
    assert plot_collapse_curves({"mae": mae}, tmp_path / "m.png", notes.append) is None
    assert "no run logged the DINO monitors" in notes[0] and not (tmp_path / "m.png").exists()


def test_run_visualize(tmp_path):
    cfg, method, teacher = _models()
    run = tmp_path / "run"
    run.mkdir()
    save_method(method, run / "checkpoint.pt")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(img)
    written = run_visualize(run, images=[img], out_dir=tmp_path / "figs", log=lambda s: None,
                            method_panels=method.panels)
    assert [p.name for p in written] == ["attention_photo.png", "training_curves.png"]
    with Image.open(written[0]) as im:
        assert im.size == (5 * 160, 2 * 160)
    from_data = run_visualize(run / "checkpoint.pt", n=2, out_dir=tmp_path / "figs2", log=lambda s: None)
    assert len(from_data) == 3 and all(p.is_file() for p in from_data)


def test_cli_visualize_draws_a_mim_checkpoint(tmp_path, capsys):
    from mst.cli import main

    torch.manual_seed(0)
    method = build_method(load_config(overrides=TINY_MAE + ["amt.enabled=true"]))
    save_method(method, tmp_path / "checkpoint.pt")
    assert main(["visualize", "--ckpt", str(tmp_path), "--n", "1", "--out", str(tmp_path / "figs")]) == 0
    png = tmp_path / "figs" / "attention_test_0.png"
    with Image.open(png) as im:  # input, attention, AMT's 2 maps, masked, reconstruction, pasted: 7 x 160 px
        assert im.size == (7 * 160, 2 * 160)
    assert str(png) in capsys.readouterr().out
