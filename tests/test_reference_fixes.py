"""What the reference code does, checked against our presets and pieces: the evaluation transform's sizes (DINO / MAE
resize to 256 and crop 224), SimMIM's no-decay set, MST's BN head (statistics from the global views only), the AMT
and Beyond Masking presets' schedules. The degradations' formulas are in test_degradations.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mst.config import load_config
from mst.data.multicrop import EvalTransform, eval_resize
from mst.methods import build_method
from mst.methods.mst import student_teacher
from mst.settings import Config
from tests.conftest import make_tiny_cfg

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_eval_transform_resizes_to_256_and_crops_224():
    assert eval_resize(224, 0.875) == 256 and eval_resize(28, 1.0) == 28
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    got = EvalTransform(224, mean, std, 3, crop=0.875)(img)
    # by hand: shorter side 375 -> 256 (500 -> int(341.3) = 341), bicubic; the centre 224 (left round(58.5) = 58)
    ref = np.asarray(img.resize((341, 256), Image.BICUBIC).crop((58, 16, 282, 240)), dtype=np.float32) / 255.0
    ref = (ref - np.array(mean, np.float32)) / np.array(std, np.float32)
    assert got.shape == (3, 224, 224)
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), ref, atol=1e-5)
    whole = EvalTransform(224, mean, std, 3)(img)  # crop 1: the whole shorter side
    ref1 = np.asarray(img.resize((298, 224), Image.BICUBIC).crop((37, 0, 261, 224)), dtype=np.float32) / 255.0
    np.testing.assert_allclose(whole.permute(1, 2, 0).numpy(), (ref1 - mean) / np.array(std), atol=1e-5)


@pytest.mark.parametrize("preset", ["imagenet_deit_small_100ep", "imagenet_deit_small_300ep", "imagenet_mae_vit_base_800ep",
                                    "imagenet_simmim_vit_base_800ep", "imagenet_finetune_vit_base",
                                    "imagenet_swin_tiny_100ep"])
def test_imagenet_presets_evaluate_at_256_to_224(preset):
    assert load_config(CONFIGS / f"{preset}.yaml")["augment"]["eval_crop"] == 0.875


def test_simmim_exempts_position_embedding_and_cls_token_from_weight_decay():
    simmim = build_method(load_config(overrides=["method=simmim", "model.depth=1"]))
    decay, no_decay = ({n for n, p in simmim.named_parameters() if any(p is q for q in g["params"])}
                       for g in simmim.param_groups())
    assert {"encoder.vit.pos_embed", "encoder.vit.cls_token"} <= no_decay
    assert "encoder.mask_token" in decay  # the reference's ViT exempts only these two (its Swin also [MASK])
    assert all(not n.endswith(".weight") or "norm" in n for n in no_decay - {"encoder.vit.pos_embed",
                                                                                 "encoder.vit.cls_token"})
    mae = build_method(load_config(overrides=["method=mae", "model.depth=1"]))
    decay_mae = {n for n, p in mae.named_parameters() if any(p is q for q in mae.param_groups()[0]["params"])}
    assert "encoder.vit.cls_token" in decay_mae  # MAE's reference (add_weight_decay, no skip list) decays it


def test_mst_head_bn_statistics_by_hand():
    """One student pass with BN in the head: the running mean of the first BN moves by momentum 0.1 towards the
    batch mean of the first linear layer's output on the global views' CLS tokens, whatever the local crops hold."""
    cfg = make_tiny_cfg("dino.use_bn=true", "model.drop_path=0.0")
    torch.manual_seed(0)
    student, _ = student_teacher(Config.of(cfg))
    g = torch.randn(8, 1, 28, 28)
    locals_ = torch.randn(8, 1, 12, 12) * 5 + 3
    with torch.no_grad():
        hidden = student.head.mlp[0](student.backbone(g).cls)
    student(g, locals_, n_global=2, n_local=2)
    assert torch.allclose(student.head.mlp[1].running_mean, 0.1 * hidden.mean(0), atol=1e-5)


def test_mst_imagenet_presets_use_the_bn_head():
    for preset in ("imagenet_deit_small_100ep", "imagenet_deit_small_300ep"):
        assert load_config(CONFIGS / f"{preset}.yaml")["dino"]["use_bn"] is True


def test_amt_and_beyond_masking_presets_follow_their_references():
    mae_amt = load_config(CONFIGS / "imagenet_mae_amt_vit_base.yaml")
    assert (mae_amt["optim"]["epochs"], mae_amt["mim"]["norm_pix_loss"], mae_amt["optim"]["warmup_epochs"]) == (400, False, 40)
    simmim_amt = load_config(CONFIGS / "imagenet_simmim_amt_vit_base.yaml")
    o = simmim_amt["optim"]
    assert (o["epochs"], o["warmup_epochs"], o["lr_schedule"], simmim_amt["model"]["pos_embed"]) == (200, 10, "cosine",
                                                                                                  "learned")
    assert simmim_amt["model"]["arch"] == "vit_base"  # AMT's reference: absolute positions, not the BEiT-style ViT
    bm = load_config(CONFIGS / "imagenet_mae_zoom_in_vit_base_300ep.yaml")
    assert (bm["optim"]["batch_size"] * 16, bm["optim"]["warmup_epochs"], bm["optim"]["epochs"]) == (2048, 20, 300)
