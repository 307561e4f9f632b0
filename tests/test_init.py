"""Starting from weights that exist (`--init SOURCE` / `model.init`): real timm architectures saved offline
(`timm.create_model(name, pretrained=False)` + safetensors) load through `timm:NAME=FILE`, every tensor equals the
file's or timm's own resample / adaptation of it (computed here independently), each method trains a step from
them, an mst run and its export are sources too, and every bad source is one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models import adapt_input_conv

from mst.cli import main
from mst.config import load_config
from mst.methods import build_method
from mst.sources import load_source, parse_source
from mst.registry import ConfigError

SIZE = 56  # 4x4 tokens of 14 px, 7x7 of 8 px: small enough for a ViT-S step on a CPU
FAST = ["log.progress=false", "log.tensorboard=false", "log.every=1", "optim.warmup_epochs=0", "optim.epochs=1",
        "optim.batch_size=2", "augment.n_local=1"]
DINO = ["dino.out_dim=64", "dino.hidden_dim=64", "dino.bottleneck_dim=32", "mst.decoder_channels=[16,8,8,8]"]
SMALL = {"mst": DINO, "dino": DINO, "simmim": ["mask.strategy=patches"],
         "mae": ["mae.decoder_dim=32", "mae.decoder_depth=1", "mae.decoder_heads=2"]}


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (file, the model's state) for real timm architectures with random weights, saved as safetensors."""
    out = tmp_path_factory.mktemp("timm")
    files = {}
    for name in ("vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2", "deit_small_patch16_224"):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=0)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        path = out / f"{name}.safetensors"
        save_file(state, str(path))
        files[name] = (path, state)
    return files


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    src = skimage.data.coffee()
    rng = np.random.default_rng(0)
    for i in range(8):
        t, l = int(rng.integers(0, 300)), int(rng.integers(0, 500))
        Image.fromarray(src[t:t + 64, l:l + 64]).save(root / f"{i}.png")
    return root


def test_sources_parse():
    assert parse_source("timm:vit_base_patch16_224.mae").kind == "hub"
    s = parse_source("timm:deit_small_patch16_224=/w/x.pth")
    assert (s.kind, s.name, str(s.path)) == ("file", "deit_small_patch16_224", "/w/x.pth")
    assert parse_source("runs/mine").kind == "mst"


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2",
                                  "deit_small_patch16_224"])
def test_every_tensor_is_the_files_or_timms_adaptation_of_it(saved, photos, name):
    path, state = saved[name]
    notes: list = []
    cfg = load_config(None, [f"data.root={photos}", "method=mae", f"model.img_size={SIZE}", "data.channels=1",
                             "model.patch_size=8", f"model.init=timm:{name}={path}", *FAST, *SMALL["mae"]], notes=notes)
    assert cfg["model"]["arch"] == name and cfg["model"]["embed_dim"] == 384 and cfg["model"]["depth"] == 12
    text = "\n".join(c.line() for c in notes)
    assert "resample_patch_embed" in text and "adapt_input_conv" in text and "resample_abs_pos_embed" in text
    method = build_method(cfg)
    from mst.engine.continued import init_backbones

    record = init_backbones(method, cfg["model"]["init"])
    got = method.encoder.vit.state_dict()
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    w = resample_patch_embed(state["patch_embed.proj.weight"], [8, 8])
    w = adapt_input_conv(1, w)
    torch.testing.assert_close(got["patch_embed.proj.weight"], w, rtol=0, atol=0)
    model = timm.create_model(name, pretrained=False)
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    grid = model.patch_embed.grid_size
    pos = resample_abs_pos_embed(state["pos_embed"], [SIZE // 8, SIZE // 8], list(grid), num_prefix_tokens=prefix)
    torch.testing.assert_close(got["pos_embed"], pos, rtol=0, atol=0)
    for k, v in state.items():
        if k not in ("patch_embed.proj.weight", "pos_embed"):
            assert torch.equal(got[k], v), k
    assert record["source"] == cfg["model"]["init"] and len(record["sha256"]) == 64 and patch in (14, 16)


@pytest.mark.parametrize("method", ["mst", "dino", "mae", "simmim"])
def test_each_method_pretrains_from_a_timm_file(saved, photos, tmp_path, capsys, method):
    path, state = saved["vit_small_patch14_reg4_dinov2"]
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(photos), "--out", str(run), "--init",
            f"timm:vit_small_patch14_reg4_dinov2={path}", "--max-steps", "1",
            *sets(f"method={method}", f"model.img_size={SIZE}", *FAST, *SMALL[method])]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "model.arch = vit_small_patch14_reg4_dinov2" in out and "4 register tokens kept" in out
    assert "--config = configs/continue_cpu.yaml" in out  # no --config and --init: the continuing preset
    from mst.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run)
    assert ckpt["init"]["source"].endswith(str(path)) and ckpt["init"]["sha256"]
    # student and teacher (MST / DINO) or the encoder (MAE / SimMIM) started from the file: blocks equal before
    # the step moved them; the teacher of MST / DINO moves by EMA only, so after one step it is nearly the file's
    for which, prefix in ckpt["backbones"].items():
        w = ckpt["method"][prefix + "blocks.11.mlp.fc2.weight"]
        assert torch.allclose(w, state["blocks.11.mlp.fc2.weight"], atol=5e-2), which
    from mst import sources as init_module

    init_module._LOADED.clear()  # as a new process: nothing of the source is cached
    path.rename(path.with_suffix(".moved"))  # a resume does not read the source again
    try:
        assert main(args[:-1] + [args[-1]] + ["--max-steps", "2"]) == 0
    finally:
        path.with_suffix(".moved").rename(path)
    assert load_checkpoint(run)["global_step"] == 2


def test_an_mst_run_and_its_export_are_sources(photos, tmp_path, capsys):
    run = tmp_path / "mine"
    assert main(["pretrain", "--data", str(photos), "--out", str(run), "--max-steps", "1",
                 *sets("method=mae", "model.depth=2", "model.embed_dim=48", "model.num_heads=3", "model.img_size=32",
                       *FAST, *SMALL["mae"])]) == 0
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "vit.safetensors")]) == 0
    from mst.checkpoint import backbone_state, load_checkpoint

    want = backbone_state(load_checkpoint(run))
    for text in (str(run), str(tmp_path / "vit.safetensors")):
        source = load_source(text)
        assert source.arch()["embed_dim"] == 48 and source.arch()["depth"] == 2
        for k, v in want.items():
            assert torch.equal(source.state[k], v), (text, k)
    # fitted to 1-channel data: timm's adapt_input_conv sums the RGB filters; back to 3 channels, a grey source
    # would repeat its filter over the channels at a third of its weight
    from mst.models.backbones import create_backbone
    from mst.sources import fit_state

    grey = create_backbone({**load_checkpoint(run)["config"]["model"]}, in_chans=1)
    state, notes = fit_state(load_source(str(run)), grey.vit)
    w = want["patch_embed.proj.weight"]
    torch.testing.assert_close(state["patch_embed.proj.weight"], w.sum(1, keepdim=True), rtol=0, atol=1e-6)
    assert notes == ["input channels 3 -> 1 (timm's adapt_input_conv)"]
    grey.vit.load_state_dict(state)
    from mst.sources import Source

    grey_source = Source("grey", "vit_tiny_patch16_224", grey.vit, "0" * 64)
    rgb = create_backbone({**load_checkpoint(run)["config"]["model"]}, in_chans=3)
    state, _ = fit_state(grey_source, rgb.vit)
    torch.testing.assert_close(state["patch_embed.proj.weight"], w.sum(1, keepdim=True).repeat(1, 3, 1, 1) / 3,
                               rtol=0, atol=1e-6)


def one_line(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bad_sources_are_one_line(saved, photos, tmp_path, capsys):
    base = ["pretrain", "--data", str(photos), "--out", str(tmp_path / "r"), "--max-steps", "1",
            *sets("method=mae", f"model.img_size={SIZE}", *FAST, *SMALL["mae"])]
    err = one_line(capsys, base + ["--init", "timm:vit_small_patch14_dinov2=" + str(tmp_path / "missing.pth")])
    assert "no file" in err and "missing.pth" in err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    assert "cannot be read as weights" in one_line(capsys, base + ["--init", f"timm:deit_small_patch16_224={junk}"])
    assert "timm has no model 'vit_smal_patch99'" in one_line(capsys, base + ["--init", "timm:vit_smal_patch99"])
    small_file = saved["deit_small_patch16_224"][0]  # 384 wide, asked to be a 192-wide DeiT-Ti
    err = one_line(capsys, base + ["--init", f"timm:deit_tiny_patch16_224={small_file}"])
    assert "does not fit timm's deit_tiny_patch16_224" in err and "384" in err and "192" in err
    err = one_line(capsys, base + ["--init", "timm:beit_base_patch16_224=" + str(small_file)])
    assert "is a timm Beit; --init starts from timm ViTs" in err
    err = one_line(capsys, base + ["--init", str(tmp_path / "nothing_here")])
    assert "neither timm:NAME, timm:NAME=FILE nor an mst run" in err


def test_offline_hub_is_one_line_with_the_way_out(photos, tmp_path):
    """timm's real hub loader with no hub (HF_HUB_OFFLINE, read when huggingface_hub is imported: a new process)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mst", "pretrain", "--data", str(photos), "--out", str(tmp_path / "r"),
                           "--init", "timm:vit_small_patch14_dinov2.lvd142m", *sets("method=mae", *FAST, *SMALL["mae"])],
                          capture_output=True, text=True, env=env, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "--init timm:vit_small_patch14_dinov2.lvd142m=FILE" in err


def test_an_mae_vit_base_file_with_its_tag_loads_and_fits(tmp_path):
    """`timm:vit_base_patch16_224.mae=FILE`: the tag names timm's MAE config, the file a ViT-B/16; fitted to 32 px
    grey images: patch 16 kept, pos_embed 14x14 -> 2x2, input channels 3 -> 1, every block tensor the file's."""
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224.mae", pretrained=False, num_classes=0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "mae_vitb.safetensors"
    save_file(state, str(path))
    cfg = load_config(None, ["method=mae", "model.img_size=32", "data.channels=1", "data.mean=[0.5]",
                             "data.std=[0.25]", f"model.init=timm:vit_base_patch16_224.mae={path}",
                             *SMALL["mae"]])
    assert (cfg["model"]["arch"], cfg["model"]["patch_size"], cfg["model"]["embed_dim"]) == ("vit_base_patch16_224",
                                                                                             16, 768)
    from mst.engine.continued import init_backbones

    method = build_method(cfg)
    init_backbones(method, cfg["model"]["init"])
    got = method.encoder.vit.state_dict()
    torch.testing.assert_close(got["patch_embed.proj.weight"], adapt_input_conv(1, state["patch_embed.proj.weight"]),
                               rtol=0, atol=0)
    pos = resample_abs_pos_embed(state["pos_embed"], [2, 2], [14, 14], num_prefix_tokens=1)
    torch.testing.assert_close(got["pos_embed"], pos, rtol=0, atol=0)
    assert all(torch.equal(got[k], v) for k, v in state.items() if k.startswith("blocks."))
