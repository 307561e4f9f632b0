"""Export: timm key layout, offline reload through timm.create_model, identical CLS features, detection keys."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from mst.config import load_config
from mst.checkpoint import load_backbone
from mst.eval.export import detection_state_dict, export_backbone, load_exported, save_detection_checkpoint
from mst.methods import build_method
from tests.conftest import save_method


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config(overrides=["model.depth=2", "model.embed_dim=96", "model.num_heads=3", "dino.out_dim=64",
                                 "dino.hidden_dim=64", "dino.bottleneck_dim=32", "mst.decoder_channels=[16,8]"])
    method = build_method(cfg)
    teacher = method.teacher
    with torch.no_grad():  # make the teacher differ from the student, as after training
        for p in teacher.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    save_method(method, path, epoch=3)
    return path, cfg


def test_export_layout_and_metadata(ckpt, tmp_path):
    path, cfg = ckpt
    weights, meta_path = export_backbone(path, tmp_path / "vit.safetensors", log=lambda s: None)
    assert meta_path == tmp_path / "vit.json"
    sd = load_file(str(weights))
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight",
                "blocks.1.mlp.fc2.bias"):
        assert key in sd, key
    assert not any(k.startswith(("vit.", "backbone.", "head", "decoder")) or "mask_token" in k for k in sd)
    assert "blocks.2.attn.qkv.weight" not in sd  # depth 2
    meta = json.loads(meta_path.read_text())
    assert meta["model_name"] == "vit_tiny_patch16_224"
    assert meta["model_kwargs"] == {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 0,
                                    "dynamic_img_size": True, "depth": 2, "embed_dim": 96, "num_heads": 3}
    assert meta["which"] == "teacher" and meta["epoch"] == 3
    assert meta["mean"] == cfg["data"]["mean"] and meta["std"] == cfg["data"]["std"]
    with pytest.raises(ValueError, match="safetensors"):
        export_backbone(path, tmp_path / "vit.pt", log=lambda s: None)


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_timm_reload_matches_backbone(ckpt, tmp_path, which):
    path, _ = ckpt
    weights, meta_path = export_backbone(path, tmp_path / f"{which}.safetensors", which=which, log=lambda s: None)
    ours, _ = load_backbone(path, which)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = ours(x).cls
        model = load_exported(weights)
        cls = model.forward_features(x)[:, 0]
        assert (cls - ref).abs().max() < 1e-5
        # the plain documented line, straight from the JSON, works offline too
        meta = json.loads(meta_path.read_text())
        plain = timm.create_model(meta["model_name"], pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(weights)), **meta["model_kwargs"]).eval()
        assert (plain.forward_features(x)[:, 0] - ref).abs().max() < 1e-5
        # dynamic_img_size: a larger input still runs (pos-embed interpolated), like the project's backbone
        big = torch.randn(1, 1, 56, 56)
        assert (model.forward_features(big)[:, 0] - ours(big).cls).abs().max() < 1e-5
    assert model.pretrained_cfg["mean"] == tuple(meta["mean"])


def test_detection_state_dict(ckpt, tmp_path):
    path, _ = ckpt
    weights, _ = export_backbone(path, tmp_path / "vit.safetensors", log=lambda s: None)
    sd = detection_state_dict(weights)
    assert "backbone.blocks.0.attn.qkv.weight" in sd and all(k.startswith("backbone.") for k in sd)
    plain = load_file(str(weights))
    torch.testing.assert_close(sd["backbone.pos_embed"], plain["pos_embed"])
    d2 = detection_state_dict(plain, prefix="backbone.net.")
    assert set(d2) == {"backbone.net." + k for k in plain}
    out = save_detection_checkpoint(weights, tmp_path / "det.pth", log=lambda s: None)
    back = torch.load(out, weights_only=True)
    assert set(back) == set(sd)
