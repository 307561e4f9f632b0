import pytest
import torch

from mst.engine.ema import TeacherEMA
from mst.models.backbone import ViTBackbone
from mst.models.decoder import GlobalImageDecoder
from mst.models.encoder import build_student_teacher
from tests.conftest import make_tiny_cfg


def explicit_last_block_attention(vit, x):
    """Full attention of the last block, computed by hand from its weights: (B, H, N+1, N+1)."""
    z = vit.patch_embed(x)
    z = vit._pos_embed(z)
    z = vit.norm_pre(z)
    for blk in vit.blocks[:-1]:
        z = blk(z)
    blk = vit.blocks[-1]
    h = blk.norm1(z)
    attn = blk.attn
    b, n, c = h.shape
    qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q @ k.transpose(-2, -1)) / (c // attn.num_heads) ** 0.5).softmax(-1)


@pytest.mark.parametrize("patch,size", [(4, 28), (16, 64)])
def test_captured_attention_equals_explicit(patch, size):
    cfg = make_tiny_cfg(f"model.patch_size={patch}", f"model.img_size={size}", f"augment.global_size={size}",
                        "augment.local_size=32" if patch == 16 else "augment.local_size=12")
    torch.manual_seed(0)
    bb = ViTBackbone(cfg["model"], in_chans=1).eval()
    x = torch.randn(3, 1, size, size)
    with torch.no_grad():
        out = bb(x, return_attention=True)
        full = explicit_last_block_attention(bb.vit, x)
    expect = full[:, :, 0, 1:].mean(1)
    assert out.attention.shape == (3, (size // patch) ** 2)
    assert (out.attention - expect).abs().max().item() < 1e-5
    # the fused path's output is unchanged by the capture
    with torch.no_grad():
        ref = bb.vit.forward_features(x)
    assert torch.allclose(out.cls, ref[:, 0], atol=1e-5)
    assert torch.allclose(out.patches, ref[:, 1:], atol=1e-5)


def test_mask_applied_after_projection_before_position():
    cfg = make_tiny_cfg()
    torch.manual_seed(0)
    bb = ViTBackbone(cfg["model"], in_chans=1, mask_token=True).eval()
    x = torch.randn(2, 1, 28, 28)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[0, [0, 5, 48]] = True
    seen = {}

    def keep_input(module, inputs, output):  # returns None: the output is left alone
        seen.setdefault("tokens", inputs[0].detach())

    handle = bb.vit.pos_drop.register_forward_hook(keep_input)
    with torch.no_grad():
        bb(x, mask=mask)
    handle.remove()
    tokens = seen["tokens"][:, 1:]  # after pos embed was added; drop CLS
    pos = bb.vit.pos_embed[:, 1:]
    emb = bb.vit.patch_embed(x).reshape(2, 49, -1)
    expect = torch.where(mask.unsqueeze(-1), bb.mask_token.expand(2, 49, -1), emb) + pos
    assert torch.allclose(tokens, expect, atol=1e-6)
    # masked positions: [MASK] + position (positions stay distinct)
    assert torch.allclose(tokens[0, 0] - pos[0, 0], bb.mask_token[0, 0], atol=1e-6)


def test_teacher_has_no_mask_token():
    cfg = make_tiny_cfg()
    bb = ViTBackbone(cfg["model"], in_chans=1, mask_token=False)
    with pytest.raises(RuntimeError, match="no \\[MASK\\]"):
        bb(torch.randn(1, 1, 28, 28), mask=torch.zeros(1, 49, dtype=torch.bool))


def test_width_and_heads_overrides():
    cfg = make_tiny_cfg("model.embed_dim=48", "model.num_heads=4")
    bb = ViTBackbone(cfg["model"], in_chans=1)
    out = bb(torch.randn(2, 1, 28, 28))
    assert out.cls.shape == (2, 48) and out.patches.shape == (2, 49, 48)
    assert bb.vit.blocks[0].attn.num_heads == 4
    bad = make_tiny_cfg("model.embed_dim=50", "model.num_heads=4")
    with pytest.raises(ValueError, match="embed_dim=50 is not divisible by model.num_heads=4"):
        ViTBackbone(bad["model"], in_chans=1)


def test_patch_size_must_divide_image():
    cfg = make_tiny_cfg()
    bb = ViTBackbone(cfg["model"], in_chans=1)
    with pytest.raises(ValueError, match=r"\(30, 30\) is not divisible by the patch size 4"):
        bb(torch.randn(1, 1, 30, 30))


@pytest.mark.parametrize("patch,size,ups", [(4, 28, 2), (16, 64, 4), (8, 32, 3)])
def test_decoder_output_shape(patch, size, ups):
    dec = GlobalImageDecoder(embed_dim=24, patch_size=patch, out_chans=3, channels=[16, 16, 8, 8])
    assert dec.num_upsamplings == ups
    grid = size // patch
    out = dec(torch.randn(2, grid * grid, 24), (grid, grid))
    assert out.shape == (2, 3, size, size)
    kinds = [type(m).__name__ for m in dec.stages.modules()]
    assert kinds.count("Conv2d") == ups and kinds.count("BatchNorm2d") == ups and kinds.count("ReLU") == ups
    with pytest.raises(ValueError, match="power-of-two"):
        GlobalImageDecoder(24, 6, 3, [8, 8, 8])


def test_student_teacher_split_and_ema_by_name():
    cfg = make_tiny_cfg()
    student, teacher = build_student_teacher(cfg)
    s_names = set(dict(student.named_parameters()))
    t_names = set(dict(teacher.named_parameters()))
    assert t_names < s_names
    assert "backbone.mask_token" in s_names - t_names
    assert any(n.startswith("decoder.") for n in s_names - t_names)
    assert not any(n.startswith("decoder.") or "mask_token" in n for n in t_names)
    assert all(not p.requires_grad for p in teacher.parameters())
    for n, p in teacher.state_dict().items():
        assert torch.equal(p, student.state_dict()[n])

    ema = TeacherEMA(student, teacher)
    before_t = {n: p.clone() for n, p in teacher.named_parameters()}
    before_s = {n: p.clone() for n, p in student.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema.update(0.9)
    for n, p in teacher.named_parameters():
        assert torch.allclose(p, 0.9 * before_t[n] + 0.1 * (before_s[n] + 1.0), atol=1e-6), n
    # student-only parameters were not read into anything and stay as they were (+1)
    for n in s_names - t_names:
        assert torch.allclose(dict(student.named_parameters())[n], before_s[n] + 1.0)


def test_ema_rejects_teacher_only_parameter():
    cfg = make_tiny_cfg()
    student, teacher = build_student_teacher(cfg)
    teacher.extra = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(KeyError, match="extra"):
        TeacherEMA(student, teacher)
