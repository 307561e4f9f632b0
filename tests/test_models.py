import pytest

from mst.registry import ConfigError
import torch

from mst.engine.ema import TeacherEMA
from mst.models.backbones import create_backbone
from mst.models.decoders import DECODERS, GlobalImageDecoder, LinearPixelDecoder, MAEDecoder, build_decoder
from mst.methods.mst import student_teacher
from mst.settings import Config
from mst.models.tokens import gather_tokens, keep_indices, patchify, scatter_tokens, unpatchify
from tests.conftest import make_tiny_cfg


def ViTBackbone(model_cfg, in_chans, mask_token=False):  # noqa: N802 - the registry's ViT, as the tests name it
    return create_backbone(model_cfg, in_chans, mask_token=mask_token)


def explicit_last_block_attention(vit, x, tokens=None):
    """Full attention of the last block, computed by hand from its weights: (B, H, N+1, N+1). ``tokens``: the
    sequence after position embeddings (default: all of x's)."""
    z = vit._pos_embed(vit.patch_embed(x)) if tokens is None else tokens
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
    cfg = make_tiny_cfg(f"model.patch_size={patch}", f"model.img_size={size}", f"model.img_size={size}",
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
    with pytest.raises(ConfigError, match="model.embed_dim=50 is not divisible by model.num_heads=4"):
        make_tiny_cfg("model.embed_dim=50", "model.num_heads=4")
    with pytest.raises(ValueError, match="embed_dim=50 is not divisible by model.num_heads=4"):
        ViTBackbone(dict(cfg["model"], embed_dim=50, num_heads=4), in_chans=1)


def test_patch_size_must_divide_image():
    cfg = make_tiny_cfg()
    bb = ViTBackbone(cfg["model"], in_chans=1)
    with pytest.raises(ValueError, match=r"\(30, 30\) is not divisible by the patch size 4"):
        bb(torch.randn(1, 1, 30, 30))


@pytest.mark.parametrize("patch,size,ups", [(4, 28, 2), (16, 64, 4), (8, 32, 3), (14, 56, 4), (6, 24, 3)])
def test_decoder_output_shape(patch, size, ups):
    dec = GlobalImageDecoder(embed_dim=24, patch_size=patch, out_chans=3, channels=[16, 16, 8, 8])
    assert dec.num_upsamplings == ups
    grid = size // patch
    out = dec(torch.randn(2, grid * grid, 24), (grid, grid))
    assert out.shape == (2, 3, size, size)
    kinds = [type(m).__name__ for m in dec.stages.modules()]
    assert kinds.count("Conv2d") == ups and kinds.count("BatchNorm2d") == ups and kinds.count("ReLU") == ups
    with pytest.raises(ValueError, match="at least 3 widths for patch size 6"):
        GlobalImageDecoder(24, 6, 3, [8, 8])
    with pytest.raises(ValueError, match="patch size >= 2"):
        GlobalImageDecoder(24, 1, 3, [8])


def test_decoder_of_a_patch_that_is_no_power_of_two_ends_on_the_rest():
    """DINOv2's 14 px: three 2x stages, then 1.75x (nearest), exactly 14 px per token."""
    dec = GlobalImageDecoder(embed_dim=8, patch_size=14, out_chans=1, channels=[4, 4, 4, 4])
    factors = [m.scale_factor for m in dec.stages if isinstance(m, torch.nn.Upsample)]
    assert factors == [2.0, 2.0, 2.0, 1.75]
    x = torch.randn(1, 8, 3, 3)
    ref = torch.nn.functional.interpolate(torch.arange(9.0).reshape(1, 1, 3, 3), scale_factor=14, mode="nearest")
    up = torch.nn.functional.interpolate(torch.arange(9.0).reshape(1, 1, 3, 3), scale_factor=8, mode="nearest")
    assert torch.equal(torch.nn.functional.interpolate(up, scale_factor=1.75, mode="nearest"), ref)
    assert dec(x.flatten(2).transpose(1, 2), (3, 3)).shape == (1, 1, 42, 42)


def test_student_teacher_split_and_ema_by_name():
    cfg = make_tiny_cfg()
    student, teacher = student_teacher(Config.of(cfg))
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
    student, teacher = student_teacher(Config.of(cfg))
    teacher.extra = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(KeyError, match="extra"):
        TeacherEMA(student, teacher)


def test_keep_gathers_after_position_embeddings():
    """keep = "keep only these tokens": each image's kept tokens, with their own position embeddings, go through
    the blocks; the result equals running timm's blocks by hand on exactly those tokens."""
    cfg = make_tiny_cfg("model.drop_path=0.0")
    torch.manual_seed(0)
    bb = ViTBackbone(cfg["model"], in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    keep = torch.zeros(3, 49, dtype=torch.bool)
    for i in range(3):
        keep[i, torch.randperm(49, generator=g)[:12]] = True
    with torch.no_grad():
        out = bb(x, keep=keep, return_attention=True)
        z = bb.vit._pos_embed(bb.vit.patch_embed(x))
        idx = keep_indices(keep)
        z = torch.cat([z[:, :1], torch.stack([z[i, 1:][idx[i]] for i in range(3)])], 1)
        ref = bb.vit.norm(bb.vit.blocks(z))
    assert out.patches.shape == (3, 12, bb.embed_dim) and torch.equal(out.keep_index, idx)
    assert torch.allclose(out.patches, ref[:, 1:], atol=1e-5) and torch.allclose(out.cls, ref[:, 0], atol=1e-5)
    for i in range(3):  # kept positions in ascending order
        assert idx[i].tolist() == sorted(torch.nonzero(keep[i]).flatten().tolist())
    # the attention comes back on the whole grid: CLS->kept-token attention at the kept positions, 0 elsewhere
    with torch.no_grad():
        full = explicit_last_block_attention(bb.vit, x, tokens=z)[:, :, 0, 1:].mean(1)  # (3, 12)
    assert out.attention.shape == (3, 49) and (out.attention[~keep] == 0).all()
    assert torch.allclose(out.attention[keep].reshape(3, 12), full, atol=1e-5)


def test_token_helpers_round_trip():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    assert torch.equal(p[1, 4].reshape(4, 4, 3).permute(2, 0, 1), x[1, :, 4:8, 4:8])  # token (1, 1): rows 4-8
    assert torch.equal(unpatchify(p, 4, (2, 3), 3), x)
    keep = torch.tensor([[True, False, True, False], [False, False, True, True]])
    idx = keep_indices(keep)
    assert idx.tolist() == [[0, 2], [2, 3]]
    t = torch.arange(16.0).reshape(2, 4, 2)
    kept = gather_tokens(t, idx)
    assert kept.tolist() == [[[0, 1], [4, 5]], [[12, 13], [14, 15]]]
    back = scatter_tokens(kept, idx, 4, fill=torch.tensor([-1.0, -2.0]))
    assert back[0, 1].tolist() == [-1, -2] and torch.equal(back[keep], t[keep])
    with pytest.raises(ValueError, match="same number of tokens in every image, got 1 to 2"):
        keep_indices(torch.tensor([[True, False], [True, True]]))


def test_mae_decoder_sees_mask_tokens_at_hidden_positions_only():
    torch.manual_seed(0)
    dec = MAEDecoder(embed_dim=24, patch_size=4, out_chans=1, grid=(3, 3), dim=16, depth=1, num_heads=2).eval()
    assert dec.pos_embed.shape == (1, 10, 16) and torch.equal(dec.pos_embed[0, 0], torch.zeros(16))
    assert not any(n.endswith("pos_embed") for n, _ in dec.named_parameters())  # fixed sin-cos
    keep = torch.zeros(2, 9, dtype=torch.bool)
    keep[0, [1, 4]] = keep[1, [0, 8]] = True
    visible = torch.randn(2, 2, 24)
    everything = keep_indices(torch.ones(2, 9, dtype=torch.bool))
    out = dec(torch.randn(2, 24), visible, keep_indices(keep), everything)
    assert out.shape == (2, 9, 16)
    # dropping a position from decode_index (AMT's thrown tokens) removes it from the sequence altogether
    some = keep_indices(torch.tensor([[True] * 8 + [False], [True] * 8 + [False]]))
    assert dec(torch.randn(2, 24), visible, keep_indices(keep), some).shape == (2, 8, 16)


def test_linear_decoder_per_token_equals_pixel_shuffle():
    torch.manual_seed(0)
    dec = LinearPixelDecoder(embed_dim=12, patch_size=4, out_chans=3)
    tokens = torch.randn(2, 6, 12)
    image = dec(tokens, (2, 3))
    assert image.shape == (2, 3, 8, 12)
    assert torch.allclose(dec.patch_pixels(tokens), patchify(image, 4), atol=1e-6)


@pytest.mark.parametrize("name", DECODERS.names())
def test_every_registered_decoder_keeps_its_contract(name):
    section = {"decoder_channels": [8, 8], "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}
    dec = build_decoder(name, section, embed_dim=24, patch_size=4, in_chans=1, grid=(3, 3))
    if DECODERS.get(name).takes == "all_tokens":
        assert dec(torch.randn(2, 9, 24), (3, 3)).shape == (2, 1, 12, 12)
    else:
        idx = keep_indices(torch.ones(2, 9, dtype=torch.bool))
        assert dec(torch.randn(2, 24), torch.randn(2, 9, 24), idx, idx).shape == (2, 9, 16)
