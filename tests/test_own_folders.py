"""Your own folders, second pass: what a new user hit on folders the package had never seen. Chunk folders are no
classes and lose no image; a TIFF's every sample can be kept; a dozen images train with the defaults; tiny images
and odd sizes are said out loud. Each test failed on the code before its fix."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mst.autoconfig import summary
from mst.cli import CONFIGS, main
from mst.config import load_config
from mst.data import build_dataset
from mst.data.inspect import detect_kind

tifffile = pytest.importorskip("tifffile")
OWN = CONFIGS / "own_images_cpu.yaml"  # what `mst pretrain --data DIR` takes on a CPU with no --config

FAST = ["log.progress=false", "log.tensorboard=false", "log.every=1", "model.depth=1", "optim.epochs=1",
        "optim.warmup_epochs=0"]


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def chunked(root, chunks: int = 5, per_chunk: int = 8, side: int = 24):
    """root/d0000 .. d000K/ of images (the usual way to store a large folder), every other chunk with a deeper
    subfolder holding more images."""
    rng = np.random.default_rng(0)
    for c in range(chunks):
        d = root / f"d{c:04d}"
        d.mkdir(parents=True)
        for i in range(per_chunk):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(d / f"{i}.png")
        if c % 2 == 0:
            (d / "more").mkdir()
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(d / "more" / "x.png")
    return root


# ---------------------------------------------------------------------------------- chunk folders are no classes


def test_chunk_folders_pretrain_on_every_image(tmp_path):
    root = chunked(tmp_path / "data")
    n = 5 * 8 + 3
    assert detect_kind(root)[0] == "image_folder"  # evaluation asks for labels: subfolders are classes
    name, why = detect_kind(root, labels=False)  # pretraining does not guess labels
    assert name == "folder" and "every image pretrains" in why and "--set data.name=image_folder" in why
    notes: list = []
    cfg = load_config(OWN, [f"data.root={root}", "data.name=auto"], notes=notes)
    assert cfg["data"]["name"] == "folder"
    assert len(build_dataset(cfg["data"], "train")) == n  # nothing held out
    text = summary(notes, cfg)
    assert f"images: {n}" in text and f"over {n} images" in text and "kept out" not in text


def test_pinned_classes_say_how_many_images_stay_out_of_pretraining(tmp_path):
    root = chunked(tmp_path / "data", chunks=4, per_chunk=10)
    notes: list = []
    cfg = load_config(OWN, [f"data.root={root}", "data.name=image_folder", "data.holdout=0.2"], notes=notes)
    train, test = build_dataset(cfg["data"], "train"), build_dataset(cfg["data"], "test")
    held = len(test)
    assert held == 8 and len(train) == 42 - 8  # 0.2 of each class of 10 or 11 images (deeper subfolders count)
    text = summary(notes, cfg)
    line = next(l for l in text.splitlines() if "kept out of pretraining" in l)
    assert f"{held} of {len(train) + held} images" in line and "data.holdout=0.2" in line
    assert f"over {len(train)} images" in text


def test_split_layout_keeps_its_classes_when_pretraining(tmp_path):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("L", (16, 16), 3).save(tmp_path / split / c / "a.png")
    assert detect_kind(tmp_path, labels=False)[0] == "image_folder"  # a test split of its own: nothing is lost


# ------------------------------------------------------------------------- every sample of a TIFF can be kept


def test_a_four_sample_tiff_keeps_its_fourth_band(tmp_path, capsys):
    """`tifffile.imwrite(path, array)` tags the 4th sample of an (H, W, 4) array as alpha: a 16-bit one is four bands
    (transparency is for 8-bit photos), an 8-bit one keeps all four with data.channels=4 or data.alpha=keep."""
    from mst.data.folders import load_image

    rng = np.random.default_rng(0)
    deep, eight = tmp_path / "deep", tmp_path / "eight"
    deep.mkdir(), eight.mkdir()
    a16 = rng.integers(0, 65536, (20, 20, 4), dtype=np.uint16)
    a8 = rng.integers(0, 256, (20, 20, 4), dtype=np.uint8)
    for i in range(3):
        tifffile.imwrite(deep / f"{i}.tif", a16)
        tifffile.imwrite(eight / f"{i}.tif", a8)
    cfg = load_config(overrides=[f"data.root={deep}"])
    assert cfg["data"]["channels"] == 4
    np.testing.assert_array_equal(load_image(deep / "0.tif", 4).numpy(),
                                  (a16.astype(np.float32) / 65535.0).transpose(2, 0, 1))
    notes: list = []
    cfg = load_config(overrides=[f"data.root={eight}"], notes=notes)  # 8-bit RGBA: a photo's transparency
    assert cfg["data"]["channels"] == 3
    assert "are TIFFs" in summary(notes, cfg) and "--set data.alpha=keep" in summary(notes, cfg)
    for extra in (["data.channels=4"], ["data.alpha=keep"]):
        notes = []
        cfg = load_config(overrides=[f"data.root={eight}", *extra], notes=notes)
        assert cfg["data"]["channels"] == 4 and "kept as a band" in summary(notes, cfg)
        assert len(build_dataset(cfg["data"], "train")) == 3
        got = load_image(eight / "0.tif", 4, alpha=cfg["data"]["alpha"])
        np.testing.assert_array_equal(got.numpy(), (a8.astype(np.float32) / 255.0).transpose(2, 0, 1))
    # the whole path: pretrain on the 8-bit RGB + NIR folder with all four bands
    assert main(["pretrain", "--data", str(eight), "--out", str(tmp_path / "run"), "--max-steps", "1",
                 *sets(*FAST, "optim.batch_size=2", "data.channels=4")]) == 0
    assert "kept as a band (data.channels=4)" in capsys.readouterr().out


def test_rgba_png_with_four_channels_keeps_alpha_as_data(tmp_path):
    from mst.data.folders import load_image

    rgba = np.random.default_rng(1).integers(0, 256, (12, 14, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = load_image(tmp_path / "a.png", 4)
    np.testing.assert_array_equal(got.numpy(), (rgba.astype(np.float32) / 255.0).transpose(2, 0, 1))
    with pytest.raises(Exception, match=r"a.png has 4 bands but data.channels=3"):
        load_image(tmp_path / "a.png", 3, alpha="keep")


def test_an_invalid_alpha_policy_is_named(tmp_path, capsys):
    Image.new("RGBA", (20, 20)).save(tmp_path / "a.png")
    err = one_line_error(capsys, ["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                                  "--set", "data.alpha=transparent"])
    assert "data.alpha='transparent' is not one of black, white, drop, keep" in err


# ------------------------------------------------------------------------ a dozen images train with the defaults


def photos_from(root, n: int, side: int = 40, seed: int = 0):
    import skimage.data

    src = skimage.data.astronaut()
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        t, l = int(rng.integers(0, 512 - side)), int(rng.integers(0, 512 - side))
        Image.fromarray(src[t:t + side, l:l + side]).save(root / f"{i}.png")
    return root


def test_a_dozen_images_pretrain_fine_tune_and_evaluate_with_the_defaults(tmp_path, capsys):
    import json

    data = photos_from(tmp_path / "twelve", 12)
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--out", str(run), "--max-steps", "2",
                 *sets("log.progress=false", "log.tensorboard=false")]) == 0
    out = capsys.readouterr().out
    assert "optim.batch_size = 12    (32 per process on a CPU, lowered to the 12 training images" in out
    assert "about 1500 steps of 12 over 12 images" in out
    labelled = tmp_path / "labelled"
    for k, cls in enumerate(("a", "b")):
        photos_from(labelled / "train" / cls, 24, seed=k + 1)
        photos_from(labelled / "val" / cls, 4, seed=k + 11)
    ft = tmp_path / "ft"
    assert main(["finetune", "--ckpt", str(run), "--data", str(labelled), "--out", str(ft), "--epochs", "1",
                 *sets("log.progress=false", "log.tensorboard=false")]) == 0
    out = capsys.readouterr().out
    assert "optim.batch_size = 48    (the recipe's 64 is more than the 48 training images" in out
    assert json.loads((ft / "finetune.json").read_text())["train_images"] == 48
    for cmd in (["knn", "--k", "20"], ["linear", "--epochs", "1"]):
        assert main([cmd[0], "--ckpt", str(run), "--data", str(labelled), *cmd[1:]]) == 0


# ----------------------------------------------------------------------------- sizes that are said out loud


def test_tiny_images_get_a_4x4_grid_and_a_word(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    notes: list = []
    cfg = load_config(OWN, [f"data.root={tmp_path}"], notes=notes)
    assert (cfg["model"]["img_size"], cfg["model"]["patch_size"]) == (8, 2)  # 4x4 tokens, not 2x2
    text = summary(notes, cfg)
    assert "small images: 8 px" in text and "4x4" in text and "--set model.img_size=32" in text


def test_a_pinned_size_says_why_its_patch_is_smaller():
    notes: list = []
    cfg = load_config(overrides=["model.img_size=30"], notes=notes)
    assert cfg["model"]["patch_size"] == 2
    assert "4 px does not divide 30 px" in summary(notes, cfg)
