"""Swin-T backbone: [MASK] at the patch embedding, pooled-query token importance, decoder at stride 32."""
import pytest
import torch

from mst.methods import build_method
from mst.models.backbones import create_backbone
from mst.models.swin import SwinBackbone
from mst.registry import ConfigError
from mst.config import load_config
from tests.conftest import TINY_MAE, make_tiny_cfg, save_method, step

SWIN = ["model.arch=swin_tiny", "model.patch_size=4", "model.img_size=64", "model.depth=null",
        "model.img_size=64", "augment.local_size=32", "mst.decoder_channels=[16,16,8,8,8]"]


def explicit_pooled_attention(bb: SwinBackbone, x: torch.Tensor) -> torch.Tensor:
    """Recompute the importance by hand: run every block but the last's attention, then the pooled query."""
    z = bb.vit.patch_embed(x)
    for layer in bb.vit.layers[:-1]:
        z = layer(z)
    last = bb.vit.layers[-1]
    z = last.downsample(z)
    for blk in last.blocks[:-1]:
        z = blk(z)
    h = last.blocks[-1].norm1(z)
    b, hh, ww, c = h.shape
    attn = last.blocks[-1].attn
    qkv = attn.qkv(h.reshape(b, hh * ww, c)).reshape(b, hh * ww, 3, attn.num_heads, -1)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # B, heads, N, hd
    logits = (q.mean(2, keepdim=True) @ k.transpose(-2, -1)).squeeze(2) * (c // attn.num_heads) ** -0.5
    probs = logits.softmax(-1).mean(1).reshape(b, 1, hh, ww)
    up = torch.nn.functional.interpolate(probs, size=(x.shape[-2] // 4, x.shape[-1] // 4), mode="bilinear",
                                         align_corners=False).flatten(1)
    return up / up.sum(1, keepdim=True)


def test_swin_importance_and_shapes():
    cfg = make_tiny_cfg(*SWIN)
    torch.manual_seed(0)
    bb = create_backbone(cfg["model"], in_chans=1).eval()
    assert isinstance(bb, SwinBackbone) and bb.patch_size == 32
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = bb(x, return_attention=True)
        ref = explicit_pooled_attention(bb, x)
    assert out.grid == (2, 2) and out.mask_grid == (16, 16)
    assert out.cls.shape == (2, 768) and out.patches.shape == (2, 4, 768)
    assert out.attention.shape == (2, 256)
    assert torch.allclose(out.attention.sum(1), torch.ones(2), atol=1e-5)
    assert (out.attention - ref).abs().max().item() < 1e-5
    assert out.attention.std(1).min() > 0  # not constant


def test_swin_mask_at_patch_embedding_and_training_step():
    cfg = make_tiny_cfg(*SWIN, "mask.p=1.0", "mask.num=4")
    torch.manual_seed(0)
    method = build_method(cfg)
    student = method.student
    assert student.decoder.num_upsamplings == 5
    seen = {}

    def keep_input(module, inputs):  # returns None: the input is only read
        seen.setdefault("x", inputs[0].detach())

    h = student.backbone.vit.layers[0].register_forward_pre_hook(keep_input)
    views = [torch.randn(2, 1, 64, 64) for _ in range(2)] + [torch.randn(2, 1, 32, 32) for _ in range(2)]
    out = step(method, views)
    h.remove()
    assert out.mask.shape == (4, 256) and (out.mask.sum(1) == 64).all()  # p=1: all 256/4 candidates
    first = seen["x"].reshape(4, 256, -1)  # the masked global views' input to the first stage
    assert torch.allclose(first[out.mask], student.backbone.mask_token[0].expand(int(out.mask.sum()), -1))
    out.loss.backward()
    assert student.backbone.mask_token.grad.abs().sum() > 0
    assert "loss_restore" in out.metrics


def test_swin_rejects_bad_settings():
    cfg = make_tiny_cfg(*SWIN)
    with pytest.raises(ValueError, match="total stride 32"):
        create_backbone(cfg["model"], 1)(torch.randn(1, 1, 48, 48))
    bad = dict(cfg["model"], depth=2)
    with pytest.raises(ValueError, match="depth cannot be overridden"):
        create_backbone(bad, 1)
    # Swin needs the whole grid: the keep contract is refused, in the backbone and for MAE at config time
    with pytest.raises(ValueError, match="Swin cannot drop tokens"):
        create_backbone(cfg["model"], 1)(torch.randn(1, 1, 64, 64), keep=torch.ones(1, 256, dtype=torch.bool))
    with pytest.raises(ConfigError, match="model.arch='swin_tiny' cannot drop tokens"):
        load_config(overrides=TINY_MAE + SWIN[:5])


def test_swin_export_loads_in_timm(tmp_path):
    from mst.eval.export import export_backbone, load_exported

    cfg = make_tiny_cfg(*SWIN)
    torch.manual_seed(0)
    method = build_method(cfg)
    teacher = method.teacher
    save_method(method, tmp_path / "checkpoint.pt")
    weights, _ = export_backbone(tmp_path, tmp_path / "swin.safetensors", log=lambda *a: None)
    model = load_exported(weights).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ours = teacher.backbone.eval()(x).cls
        theirs = model(x)  # timm: avg-pooled final features, num_classes=0
    assert (ours - theirs).abs().max().item() < 1e-5
