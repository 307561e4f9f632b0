"""The BEiT-style backbone (SimMIM's reference ViT): timm's Beit outputs, [MASK] after the projection, CLS attention
with the shared relative position bias, kept tokens, reference init and weight decay, export to timm, the preset."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mst.checkpoint import load_backbone
from mst.config import load_config
from mst.eval.export import export_backbone, load_exported
from mst.methods import build_method
from mst.models.backbones import BACKBONES, create_backbone, timm_spec
from mst.models.beit import BeitArch, BeitBackbone
from tests.conftest import TINY, TINY_MIM, TINY_SIMMIM, save_method, step

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BEIT = ["model.arch=beit_base", "model.embed_dim=64", "model.num_heads=4", "model.drop_path=0.0"]


def tiny_beit(mask_token: bool = True, seed: int = 0) -> BeitBackbone:
    """A 2-block, 64-wide BEiT on 28 px (7x7 tokens) with every weight perturbed, so that the relative position
    bias table and layer scales (zero / 0.1 at init) matter."""
    cfg = load_config(overrides=TINY_SIMMIM + BEIT)
    torch.manual_seed(seed)
    bb = create_backbone(cfg["model"], in_chans=1, mask_token=mask_token).eval()
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(0.1 * torch.randn_like(p))
        bb.vit.rel_pos_bias.relative_position_bias_table.normal_()  # a bias as large as the logits
    return bb


def run_blocks(vit, z: torch.Tensor, bias: torch.Tensor, upto: int | None = None) -> torch.Tensor:
    for blk in vit.blocks[:upto]:
        z = blk(z, shared_rel_pos_bias=bias)
    return z


def explicit_cls_attention(vit, z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(B, heads, N): softmax(q k^T * scale + bias) of the last block, row of the CLS query, patch columns."""
    z = run_blocks(vit, z, bias, upto=-1)
    blk = vit.blocks[-1]
    a, y = blk.attn, blk.norm1(z)
    b, n, _ = y.shape
    qkv = F.linear(y, a.qkv.weight, torch.cat([a.q_bias, torch.zeros_like(a.v_bias), a.v_bias]))
    q, k = qkv.reshape(b, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)[:2]
    return (q @ k.transpose(-2, -1) * a.scale + bias).softmax(-1)[:, :, 0, 1:]


def test_registered_with_the_reference_settings():
    arch = BACKBONES.get("beit_base")
    assert isinstance(arch, BeitArch) and arch.drops_tokens
    model = load_config(overrides=TINY_SIMMIM + BEIT)["model"]
    name, kwargs = timm_spec(model, 1)
    assert name == "beit_base_patch16_224"
    assert kwargs == {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 0, "depth": 2, "embed_dim": 64,
                      "num_heads": 4, "global_pool": "token", "init_values": 0.1, "use_abs_pos_emb": False,
                      "use_rel_pos_bias": False, "use_shared_rel_pos_bias": True}
    with pytest.raises(ValueError, match="model.pos_embed=sincos"):
        create_backbone(dict(model, pos_embed="sincos"), 1)


def test_outputs_equal_timm_forward_features():
    bb = tiny_beit()
    x = torch.randn(2, 1, 28, 28)
    name, kwargs = timm_spec(load_config(overrides=TINY_SIMMIM + BEIT)["model"], 1)
    fresh = timm.create_model(name, **kwargs).eval()
    fresh.load_state_dict(bb.timm_state_dict(), strict=True)
    with torch.no_grad():
        out = bb(x)
        ref = fresh.forward_features(x)
    assert out.grid == out.mask_grid == (7, 7) and out.patches.shape == (2, 49, 64)
    assert (out.cls - ref[:, 0]).abs().max() < 1e-5 and (out.patches - ref[:, 1:]).abs().max() < 1e-5
    assert (out.cls - fresh(x)).abs().max() < 1e-5  # timm's own pooling: the normed CLS token


def test_mask_token_replaces_patch_embeddings():
    bb = tiny_beit()
    x = torch.randn(2, 1, 28, 28)
    mask = torch.rand(2, 49, generator=torch.Generator().manual_seed(1)) < 0.5
    seen = {}
    hook = bb.vit.blocks[0].register_forward_pre_hook(lambda m, inputs: seen.setdefault("z", inputs[0]))
    with torch.no_grad():
        out = bb(x, mask=mask)
        hook.remove()
        emb = bb.vit.patch_embed(x)  # timm's projection, (B, N, D)
        manual = torch.where(mask[..., None], bb.mask_token.expand_as(emb), emb)
        z = torch.cat([bb.vit.cls_token.expand(2, -1, -1), manual], dim=1)
        ref = bb.vit.norm(run_blocks(bb.vit, z, bb.vit.rel_pos_bias()))
    first = seen["z"][:, 1:]  # no absolute position embedding: the blocks see [MASK] itself
    assert torch.equal(first[mask], bb.mask_token[0].expand(int(mask.sum()), -1))
    assert torch.allclose(first[~mask], emb[~mask])
    assert (out.patches - ref[:, 1:]).abs().max() < 1e-5 and (out.cls - ref[:, 0]).abs().max() < 1e-5


def test_cls_attention_equals_hand_computation_with_relative_bias():
    bb = tiny_beit()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        out = bb(x, return_attention=True, per_head=True)
        mean = bb(x, return_attention=True).attention
        z = torch.cat([bb.vit.cls_token.expand(2, -1, -1), bb.vit.patch_embed(x)], dim=1)
        bias = bb.vit.rel_pos_bias()
        ref = explicit_cls_attention(bb.vit, z, bias)
        wrong = [explicit_cls_attention(bb.vit, z, b) for b in (torch.zeros_like(bias), bias.transpose(-1, -2))]
    assert out.attention.shape == (2, 4, 49)
    assert (out.attention - ref).abs().max() < 1e-5
    assert (mean - ref.mean(1)).abs().max() < 1e-5
    assert all((ref - r).abs().max() > 1e-3 for r in wrong)  # the bias, read the right way round, matters


def test_kept_tokens_equal_a_masked_out_full_sequence():
    """Throwing tokens = attention to them masked out: the relative bias of the kept ones is gathered exactly."""
    bb = tiny_beit()
    x = torch.randn(2, 1, 28, 28)
    order = torch.argsort(torch.rand(2, 49, generator=torch.Generator().manual_seed(2)), dim=1)
    keep = torch.zeros(2, 49, dtype=torch.bool).scatter_(1, order[:, :20], True)
    with torch.no_grad():
        out = bb(x, keep=keep, return_attention=True, per_head=True)
        z = torch.cat([bb.vit.cls_token.expand(2, -1, -1), bb.vit.patch_embed(x)], dim=1)
        thrown = F.pad(~keep, (1, 0))[:, None, None, :]  # columns of thrown tokens, (B, 1, 1, L)
        bias = bb.vit.rel_pos_bias()[None].masked_fill(thrown, float("-inf"))
        full = bb.vit.norm(run_blocks(bb.vit, z, bias))[:, 1:]
        ref_att = explicit_cls_attention(bb.vit, z, bias)
    assert out.patches.shape == (2, 20, 64)
    kept = torch.gather(full, 1, out.keep_index[..., None].expand(-1, -1, 64))
    assert (out.patches - kept).abs().max() < 1e-5
    assert (out.attention - ref_att).abs().max() < 1e-5
    assert (out.attention[~keep[:, None].expand_as(ref_att)] == 0).all()  # thrown: no attention


def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    bb = tiny_beit()
    x = torch.randn(2, 1, 28, 28)
    mask = torch.rand(2, 49, generator=torch.Generator().manual_seed(3)) < 0.5
    grads = []
    for on in (False, True):
        bb.zero_grad()
        bb.vit.set_grad_checkpointing(on)
        out = bb.train()(x, mask=mask)
        (out.patches.square().mean() + out.cls.sum()).backward()
        grads.append((out.patches.detach(), [p.grad.clone() for p in bb.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1]))


def test_smaller_grid_reads_the_bias_by_offset_and_larger_is_refused():
    bb = tiny_beit()
    table = bb.vit.rel_pos_bias.relative_position_bias_table
    n, (gh, gw) = table.shape[0], (7, 7)
    h, w = 3, 2
    cells = [(r, c) for r in range(h) for c in range(w)]
    expect = torch.empty(1 + h * w, 1 + h * w, table.shape[1])
    expect[0, 1:], expect[1:, 0], expect[0, 0] = table[n - 3], table[n - 2], table[n - 1]  # BEiT's CLS entries
    for i, (r1, c1) in enumerate(cells, 1):
        for j, (r2, c2) in enumerate(cells, 1):
            expect[i, j] = table[(r1 - r2 + gh - 1) * (2 * gw - 1) + (c1 - c2 + gw - 1)]
    assert torch.equal(bb.relative_bias((h, w))[0], expect.permute(2, 0, 1))
    assert bb(torch.randn(1, 1, 12, 8)).grid == (3, 2)
    with pytest.raises(ValueError, match="larger than the 7x7 grid"):
        bb(torch.randn(1, 1, 32, 28))


def test_reference_init():
    """SimMIM's ViT (BEiT's): N(0, .02) cut at +-.02, zero biases and relative bias, layer scale 0.1, output
    projections of block i divided by sqrt(2 (i + 1)), the same cut normal for [MASK]."""
    cfg = load_config(overrides=TINY_SIMMIM + BEIT + ["model.depth=3"])
    torch.manual_seed(0)
    bb = create_backbone(cfg["model"], 1, mask_token=True)
    vit = bb.vit
    assert bb.mask_token.abs().max() <= 0.02 and bb.mask_token.std() > 0.005
    assert vit.cls_token.abs().max() <= 0.02 and vit.patch_embed.proj.weight.abs().max() <= 0.02
    assert not vit.patch_embed.proj.bias.any() and not vit.rel_pos_bias.relative_position_bias_table.any()
    for i, blk in enumerate(vit.blocks):
        assert blk.attn.qkv.weight.abs().max() <= 0.02 and not blk.attn.q_bias.any()
        for w in (blk.attn.proj.weight, blk.mlp.fc2.weight):
            assert w.abs().max() <= 0.02 / (2 * (i + 1)) ** 0.5 + 1e-9
        assert torch.all(blk.gamma_1 == 0.1) and torch.all(blk.gamma_2 == 0.1)


def test_weight_decay_exemptions_are_the_references():
    """microsoft/SimMIM: decay off for 1-d parameters, biases and its ViT's no_weight_decay() = {pos_embed,
    cls_token}; the relative position bias table and the ViT's [MASK] token are decayed (only its Swin exempts
    [MASK])."""
    sim = build_method(load_config(overrides=TINY_SIMMIM + BEIT))
    decay, no_decay = ({n for n, p in sim.named_parameters() if any(p is q for q in g["params"])}
                       for g in sim.param_groups())
    skip = {"encoder.pos_embed", "encoder.cls_token"}  # the reference's names: no ``vit.`` level
    reference = {n for n, p in sim.named_parameters()
                 if p.ndim == 1 or n.endswith(".bias") or n.replace("encoder.vit.", "encoder.") in skip}
    assert no_decay == reference and decay == {n for n, _ in sim.named_parameters()} - reference
    assert {"encoder.vit.rel_pos_bias.relative_position_bias_table", "encoder.mask_token"} <= decay
    assert {"encoder.vit.cls_token", "encoder.vit.blocks.0.gamma_1", "encoder.vit.blocks.0.attn.q_bias"} <= no_decay


def test_simmim_step_and_export_load_in_timm(tmp_path):
    cfg = load_config(overrides=TINY_SIMMIM + BEIT)
    torch.manual_seed(0)
    sim = build_method(cfg).train()
    x = torch.randn(4, 1, 28, 28)
    out = step(sim, [x], generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.mask.float().mean() > 0.5
    out.loss.backward()
    missing = [n for n, p in sim.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert sim.encoder.vit.rel_pos_bias.relative_position_bias_table.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(step(sim, [x], generator=torch.Generator().manual_seed(0)).loss)
    with torch.no_grad():  # trained-looking weights: a non-zero relative bias, layer scales away from 0.1
        for p in sim.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_method(sim, tmp_path / "checkpoint.pt")
    loaded_bb, _ = load_backbone(tmp_path)  # the checkpoint round trip of the method contract test
    with torch.no_grad():
        assert torch.allclose(loaded_bb(x).cls, sim.encoder.eval()(x).cls, atol=1e-6)
    panels = sim.eval().panels(x[:2], torch.Generator().manual_seed(0))
    assert len(panels) == 2 and all(p.image.shape[:2] == (28, 28) for row in panels for p in row)
    weights, meta_path = export_backbone(tmp_path, tmp_path / "beit.safetensors", log=lambda s: None)
    meta = json.loads(meta_path.read_text())
    name, kwargs = meta["model_name"], meta["model_kwargs"]
    assert name == "beit_base_patch16_224" and kwargs["use_shared_rel_pos_bias"] and kwargs["init_values"] == 0.1
    sd = load_file(str(weights))
    assert "rel_pos_bias.relative_position_bias_table" in sd and not any("mask_token" in k for k in sd)
    plain = timm.create_model(name, **kwargs).eval()
    plain.load_state_dict(sd, strict=True)
    loaded = load_exported(weights)
    enc = sim.encoder.eval()
    with torch.no_grad():
        ours = enc(x)
        ours = torch.cat([ours.cls[:, None], ours.patches], dim=1)
        for model in (plain, loaded):
            assert (model.forward_features(x) - ours).abs().max() < 1e-5
            assert (model(x) - ours[:, 0]).abs().max() < 1e-5


def test_mst_trains_with_local_crops_and_amt_is_accepted():
    """MST runs 12 px local crops (3x3 tokens) through the 7x7 relative bias; AMT (throwing) validates."""
    cfg = load_config(overrides=["method=mst", *TINY, *BEIT])
    torch.manual_seed(0)
    method = build_method(cfg).train()
    views = [torch.randn(2, 1, 28, 28) for _ in range(2)] + [torch.randn(2, 1, 12, 12) for _ in range(2)]
    out = step(method, views)
    out.loss.backward()
    assert torch.isfinite(out.loss) and method.student.backbone.mask_token.grad is not None
    assert load_config(overrides=TINY_SIMMIM + BEIT + ["amt.enabled=true"])["model"]["arch"] == "beit_base"


def test_simmim_imagenet_preset_is_the_references_beit():
    cfg = load_config(CONFIGS / "imagenet_simmim_vit_base_800ep.yaml")
    m = cfg["model"]
    assert (m["arch"], m["img_size"], m["patch_size"], m["drop_path"]) == ("beit_base", 224, 16, 0.1)
    name, kwargs = timm_spec(m, 3)
    assert name == "beit_base_patch16_224" and not any(kwargs.get(k) for k in ("depth", "embed_dim", "num_heads"))
    assert (kwargs["init_values"], kwargs["use_abs_pos_emb"], kwargs["use_rel_pos_bias"],
            kwargs["use_shared_rel_pos_bias"]) == (0.1, False, False, True)
    model = timm.create_model(name, **kwargs)  # the reference's ViT-B shape: 768 wide, 12 blocks of 12 heads
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (768, 12, 12)


def test_finetunes_from_a_simmim_checkpoint(tmp_path):
    """A BEiT is a ViTArch to fine-tuning: timm's Beit classifier (fc_norm, avg pool) starts from the pretrained
    weights, with timm's layer-decay groups (Beit's group_matcher) and Beit's no_weight_decay list."""
    torch.manual_seed(0)
    sim = build_method(load_config(overrides=TINY_SIMMIM + BEIT))
    ckpt = save_method(sim, tmp_path / "checkpoint.pt")
    ft = build_method(load_config(overrides=["method=finetune", *TINY_MIM, *BEIT, "finetune.pool=avg"]))
    ft.init_from(str(ckpt))
    got, want = ft.backbone.vit.state_dict(), sim.encoder.vit.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items() if not k.startswith("norm."))
    assert sum(len(g["params"]) for g in ft.param_groups()) == len(list(ft.parameters()))
    out = step(ft, [torch.randn(4, 1, 28, 28)])
    out.loss.backward()
    assert torch.isfinite(out.loss) and ft.backbone.vit.head.weight.grad is not None
