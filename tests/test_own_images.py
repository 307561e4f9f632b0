"""Your own images, end to end: what --data DIR holds, the defaults that come from the data, multiband and small
images, and evaluation on a labelled folder after pretraining on an unlabelled one. Real photos (crops of
scikit-image's bundled photos, cut at test time) and multiband TIFFs written with tifffile."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mst.autoconfig import decoder_widths, local_for, patch_for, summary
from mst.cli import main
from mst.config import RenamedKeyNotice, load_config
from mst.data import DataError, build_dataset
from mst.data.folders import BandMismatchError, load_image
from mst.data.inspect import detect_kind, measure_stats
from mst.registry import ConfigError

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("skimage.data")

_spec = importlib.util.spec_from_file_location("photo_folder", Path(__file__).parents[1] / "scripts" / "photo_folder.py")
photo_folder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(photo_folder)

FAST = ["optim.batch_size=8", "log.progress=false", "log.tensorboard=false", "log.every=1", "model.depth=1",
        "optim.epochs=1", "optim.warmup_epochs=0"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """4 photos x 8 crops (64-160 px; JPEG, PNG, WebP, TIFF, some RGBA, some grey), unlabelled and labelled."""
    out = tmp_path_factory.mktemp("photos")
    return photo_folder.make_photo_folders(out, per_class=8, photos=photo_folder.PHOTOS[:4], val_share=0.5)


@pytest.fixture(scope="module")
def bands4(tmp_path_factory) -> Path:
    return photo_folder.make_multiband_folder(tmp_path_factory.mktemp("b4"), 4, per_class=6, photos=("coffee", "rocket"))


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------------------------ detection


def test_detect_kind(tmp_path, photos):
    assert detect_kind(photos["unlabelled"])[0] == "folder"  # nested batchN/a/ folders are not classes
    name, why = detect_kind(photos["labelled"])
    assert name == "image_folder" and "4 class subfolders" in why and "splits: train, val" in why
    flat = tmp_path / "flat"
    for c in ("cat", "dog"):
        (flat / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(flat / c / "a.png")
    assert detect_kind(flat)[0] == "image_folder"
    Image.new("RGB", (8, 8)).save(flat / "loose.png")
    assert detect_kind(flat)[0] == "folder"  # loose images beside the subfolders: not a class layout
    idx = tmp_path / "idx"
    idx.mkdir()
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (idx / f).write_bytes(b"")
    assert detect_kind(idx)[0] == "fashion_mnist"
    with pytest.raises(DataError, match="does not exist"):
        detect_kind(tmp_path / "missing")


# ------------------------------------------------------------------------------------------- inferred values


def test_defaults_come_from_the_data(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (s, s + 10, 3), dtype=np.uint8) for s in (70, 90, 110)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    notes: list = []
    cfg = load_config(overrides=[f"data.root={tmp_path}"], notes=notes)
    pixels = np.concatenate([a.reshape(-1, 3) / 255.0 for a in arrays])  # every pixel of every image, as read
    assert cfg["data"]["name"] == "folder" and cfg["data"]["channels"] == 3
    np.testing.assert_allclose(cfg["data"]["mean"], pixels.mean(0), rtol=1e-3)
    np.testing.assert_allclose(cfg["data"]["std"], pixels.std(0), rtol=1e-3)
    # median shorter side 90, capped at 64 on a CPU -> patch 8, 64 px; local crops 3/7 of it; MST decoder log2(8)
    assert (cfg["model"]["img_size"], cfg["model"]["img_size"], cfg["model"]["patch_size"]) == (64, 64, 8)
    assert cfg["augment"]["local_size"] == 24 and cfg["mst"]["decoder_channels"] == [256, 128, 64]
    text = summary(notes, cfg)
    assert "data.channels = 3" in text and "--set data.channels=" in text and "median shorter side 90 px" in text


def test_one_key_for_the_image_size():
    cfg = load_config(overrides=["model.img_size=64"])
    assert cfg["model"]["img_size"] == 64 and cfg["model"]["patch_size"] == 8 and cfg["augment"]["local_size"] == 24
    with pytest.raises(ConfigError, match=r"^augment.global_size=28 and model.img_size=64 in --set: "
                                          r"augment.global_size is the old name of model.img_size; set only "
                                          r"model.img_size$"):
        load_config(overrides=["model.img_size=64", "augment.global_size=28"])
    with pytest.warns(RenamedKeyNotice, match="'augment.global_size' in --set is now 'model.img_size'"):
        assert load_config(overrides=["augment.global_size=32"])["model"]["img_size"] == 32  # the old name alone
    assert [patch_for(s) for s in (28, 30, 64, 96, 224, 200)] == [4, 2, 8, 8, 16, 8]
    assert local_for(224, 16) == 96 and local_for(28, 4) == 12
    assert decoder_widths(4) == [256, 128] and decoder_widths(16) == [256, 128, 64, 32]


def test_mst_at_patch_8_builds_its_decoder():
    from mst.methods import build_method

    cfg = load_config(overrides=["model.img_size=64", "model.patch_size=8", "model.depth=1", "dino.out_dim=64",
                                 "dino.hidden_dim=32", "dino.bottleneck_dim=16"])
    method = build_method(cfg)
    x = torch.randn(2, 1, 64, 64)
    assert method.student.decoder(method.student.backbone(x).patches, (8, 8)).shape == (2, 1, 64, 64)


# ----------------------------------------------------------------------------------------- multiband images


def test_multiband_tiffs_keep_every_band(tmp_path):
    data = np.random.default_rng(1).integers(0, 65536, (40, 50, 4), dtype=np.uint16)  # RGB + NIR, 16-bit
    tifffile.imwrite(tmp_path / "rgbn.tif", data, photometric="rgb", extrasamples=[0])  # NIR: unspecified
    x = load_image(tmp_path / "rgbn.tif", 4)
    np.testing.assert_allclose(x.numpy(), data.transpose(2, 0, 1) / 65535.0, rtol=1e-6)
    with pytest.raises(BandMismatchError, match=r"rgbn.tif has 4 bands but data.channels=3"):
        load_image(tmp_path / "rgbn.tif", 3)  # never read as RGBA and composited
    pages = np.random.default_rng(2).random((13, 32, 36)).astype(np.float32)  # 13 pages, one band each
    tifffile.imwrite(tmp_path / "pages.tif", pages, photometric="minisblack")
    np.testing.assert_array_equal(load_image(tmp_path / "pages.tif", 13).numpy(), pages)
    contig = np.random.default_rng(3).integers(0, 4096, (32, 36, 13), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "contig.tif", contig, photometric="minisblack", planarconfig="contig")
    np.testing.assert_allclose(load_image(tmp_path / "contig.tif", 13).numpy(), contig.transpose(2, 0, 1) / 65535.0)


def test_alpha_policy(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:4, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    black, white, drop = (np.asarray(load_image(tmp_path / "a.png", 3, alpha=a)) for a in ("black", "white", "drop"))
    assert (black[:4] == 200).all() and (black[4:] == 0).all()
    assert (white[:4] == 200).all() and (white[4:] == 255).all()
    assert (drop == 200).all()


def test_band_mismatch_in_a_folder_is_one_line_naming_the_file(tmp_path, capsys, bands4):
    odd = bands4 / "train" / "coffee" / "odd.tif"
    tifffile.imwrite(odd, np.zeros((64, 64, 5), np.uint16), photometric="minisblack", planarconfig="contig")
    try:
        err = one_line_error(capsys, ["pretrain", "--data", str(bands4), "--out", str(tmp_path / "r"),
                                      "--set", "data.channels=4", *sum((["--set", o] for o in FAST), [])])
        assert f"image {odd} has 5 bands but data.channels=4" in err
        err = one_line_error(capsys, ["pretrain", "--data", str(bands4), "--out", str(tmp_path / "r")])
        assert "different band counts (4 bands: 8 files" in err and "5 bands: 1 files" in err
    finally:
        odd.unlink()


def test_measured_stats_of_multiband_data(bands4):
    files = sorted((bands4 / "train").rglob("*.tif"))
    mean, std, n = measure_stats(files, 4)
    ref = np.concatenate([tifffile.imread(f).reshape(-1, 4) / 65535.0 for f in files])
    assert n == len(files)
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-3)
    np.testing.assert_allclose(std, ref.std(0), rtol=1e-3)


def test_multiband_pretrain_export_and_timm(tmp_path, bands4):
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    from mst.checkpoint import load_backbone

    run = tmp_path / "mb"
    assert main(["pretrain", "--data", str(bands4), "--out", str(run), "--max-steps", "2",
                 *sum((["--set", o] for o in FAST), [])]) == 0
    cfg = json.loads(json.dumps(load_config_of(run)))
    assert cfg["data"]["channels"] == 4 and len(cfg["data"]["mean"]) == 4
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "vit.safetensors")]) == 0
    meta = json.loads((tmp_path / "vit.json").read_text())
    assert meta["model_kwargs"]["in_chans"] == 4
    model = timm.create_model(meta["model_name"], **meta["model_kwargs"])
    model.load_state_dict(load_file(tmp_path / "vit.safetensors"))
    ours, _ = load_backbone(run)
    x = torch.randn(2, 4, cfg["model"]["img_size"], cfg["model"]["img_size"])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ours.eval()(x).cls, rtol=1e-4, atol=1e-5)
    assert main(["knn", "--ckpt", str(run), "--data", str(bands4), "--k", "3"]) == 0


def load_config_of(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


# --------------------------------------------------------------------------------------------- small images


def test_small_images_policy(tmp_path, capsys):
    for i, side in enumerate((20, 40, 80, 90)):
        Image.fromarray(np.full((side, side + 5, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    base = {"name": "folder", "root": str(tmp_path), "channels": 3}
    up = build_dataset({**base, "small_images": "upscale"}, min_size=64)
    assert len(up) == 4 and min(up[0][0].size) == 64  # the 20 px image, upscaled (aspect kept)
    with pytest.warns(UserWarning, match="skipped 2 of 4 files"):
        assert len(build_dataset({**base, "small_images": "skip"}, min_size=64)) == 2
    with pytest.raises(DataError, match=r"0.png is 25x20, smaller than the global crop 64 px.*data.small_images"):
        build_dataset({**base, "small_images": "error"}, min_size=64)
    notes: list = []
    cfg = load_config(overrides=[f"data.root={tmp_path}", "model.img_size=64"], notes=notes)
    assert "2 of 4 images are smaller than 64 px and are upscaled" in summary(notes, cfg)


# ---------------------------------------------------------------------------- own photos, end to end (CLI)


def test_pretrain_on_photos_then_score_on_labels(tmp_path, photos, capsys):
    run = tmp_path / "mine"
    assert main(["pretrain", "--data", str(photos["unlabelled"]), "--out", str(run), "--max-steps", "2",
                 *sum((["--set", o] for o in FAST), [])]) == 0
    out = capsys.readouterr().out
    assert "--config = configs/own_images_cpu.yaml" in out and "data.name = folder" in out
    assert "data.channels = 3" in out and "grey images repeated to 3 channels" in out
    cfg = load_config_of(run)
    assert cfg["data"]["channels"] == 3 and cfg["model"]["img_size"] == 64 and cfg["method"] == "mae"
    res = tmp_path / "knn.json"
    assert main(["knn", "--ckpt", str(run), "--data", str(photos["labelled"]), "--k", "5", "--json", str(res)]) == 0
    assert 0 <= json.loads(res.read_text())["encoder"]["5"] <= 100
    linear = tmp_path / "linear.json"
    assert main(["linear", "--ckpt", str(run), "--data", str(photos["labelled"]), "--epochs", "2",
                 "--json", str(linear)]) == 0
    assert "top1" in json.loads(linear.read_text())
    ft = tmp_path / "ft"
    assert main(["finetune", "--ckpt", str(run), "--data", str(photos["labelled"]), "--out", str(ft), "--epochs", "1",
                 "--set", "log.progress=false", "--set", "log.tensorboard=false", "--set", "optim.batch_size=8"]) == 0
    summary_ = json.loads((ft / "finetune.json").read_text())
    assert summary_["num_classes"] == 4 if "num_classes" in summary_ else True
    assert main(["export", "--ckpt", str(ft), "--out", str(tmp_path / "clf.safetensors")]) == 0
    assert json.loads((tmp_path / "clf.json").read_text())["class_names"] == sorted(photo_folder.PHOTOS[:4])


def test_eval_set_takes_data_keys_only(tmp_path, photos, capsys):
    run = tmp_path / "r"
    assert main(["pretrain", "--data", str(photos["unlabelled"]), "--out", str(run), "--max-steps", "1",
                 *sum((["--set", o] for o in FAST), [])]) == 0
    err = one_line_error(capsys, ["knn", "--ckpt", str(run), "--data", str(photos["labelled"]), "--set",
                                  "optim.base_lr=1"])
    assert "reads data.KEY=VALUE only" in err
    err = one_line_error(capsys, ["knn", "--ckpt", str(run), "--data", str(photos["unlabelled"])])
    assert "have no labels to evaluate on" in err


def test_labelled_folder_without_splits_holds_out_a_share_of_each_class(tmp_path):
    for c in ("a", "b"):
        for i in range(10):
            (tmp_path / c).mkdir(exist_ok=True)
            Image.new("L", (16, 16), i).save(tmp_path / c / f"{i}.png")
    data = {"name": "image_folder", "root": str(tmp_path), "channels": 1, "holdout": 0.2}
    train, test = build_dataset(data, "train"), build_dataset(data, "test")
    assert len(train) == 16 and len(test) == 4 and sorted(np.bincount(test.targets)) == [2, 2]
    assert not set(train.indices) & set(test.indices)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("args,expected", [
    (["--set", "optim.epochs=two"], "optim.epochs='two' must be an integer"),
    (["--set", "data.mean=[0.5,"], "--set data.mean=[0.5,: the value is not valid YAML"),
    (["--set", "optim.base_lr=-1"], "optim.base_lr=-1.0 must be > 0"),
    (["--set", "dino.teacher_temp=-1", "--set", "method=mst"], "dino.teacher_temp=-1.0 must be > 0"),
    (["--set", "augment.n_local=-1", "--set", "method=mst"], "augment.n_local=-1 must be >= 0"),
    (["--set", "data.subset=100000"], "data.subset=100000 is larger than the 32 images"),
    (["--set", "data.channels=4"], "but data.channels=4; use files with 4 bands"),
    (["--set", "data.small_images=maybe"], "data.small_images='maybe' is not one of upscale, skip, error"),
])
def test_bad_input_is_one_line(tmp_path, photos, capsys, args, expected):
    err = one_line_error(capsys, ["pretrain", "--data", str(photos["unlabelled"]), "--out", str(tmp_path / "r"),
                                  *sum((["--set", o] for o in FAST), []), *args])  # the bad value comes last
    assert expected in err, err


def write_dicom(path: Path, pixels: np.ndarray, slope: float = 2.0, intercept: float = -1024.0) -> Path:
    """A minimal single-frame MONOCHROME2 DICOM (uint16 stored values) written with pydicom."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def test_dicom_is_read_in_modality_units(tmp_path):
    stored = np.random.default_rng(4).integers(0, 3000, (40, 48)).astype(np.uint16)
    for i in range(3):
        write_dicom(tmp_path / f"slice{i}.dcm", stored + i)
    x = load_image(tmp_path / "slice0.dcm", 1)
    np.testing.assert_allclose(x[0].numpy(), stored * 2.0 - 1024.0)  # HU = slope * stored + intercept, no windowing
    notes: list = []
    cfg = load_config(overrides=[f"data.root={tmp_path}"], notes=notes)
    assert cfg["data"]["channels"] == 1 and cfg["data"]["name"] == "folder"
    hu = np.concatenate([(stored + i) * 2.0 - 1024.0 for i in range(3)])
    np.testing.assert_allclose(cfg["data"]["mean"], [hu.mean()], rtol=1e-3)
    np.testing.assert_allclose(cfg["data"]["std"], [hu.std()], rtol=1e-3)


# --------------------------------------------------------------------------------- layouts, resume, edge cases


def test_inferred_size_is_a_multiple_of_the_preferred_patch(tmp_path, monkeypatch):
    import mst.autoconfig as ac

    monkeypatch.setattr(ac, "_device_cap", lambda: (ac.GPU_MAX_SIZE, "GPU"))
    for i, side in enumerate((140, 150, 160)):
        Image.new("RGB", (side + 7, side), (i, i, i)).save(tmp_path / f"{i}.png")
    cfg = load_config(overrides=[f"data.root={tmp_path}"])
    assert (cfg["model"]["img_size"], cfg["model"]["patch_size"]) == (144, 8)  # not 150 at patch 2


def test_swin_gets_its_patch_and_a_decoder_for_stride_32():
    cfg = load_config(overrides=["model.arch=swin_tiny", "model.img_size=64", "model.depth=null"])
    assert cfg["model"]["patch_size"] == 4 and len(cfg["mst"]["decoder_channels"]) == 5


def test_auto_epochs_keep_warm_up_a_tenth_of_the_run():
    cfg = load_config(overrides=["optim.epochs=auto", "optim.batch_size=32", "optim.warmup_epochs=10"])
    assert cfg["optim"]["epochs"] == 1 and cfg["optim"]["warmup_epochs"] == 0  # 60000 images: one epoch, no warm-up


def test_a_resume_keeps_what_the_first_launch_resolved(tmp_path, photos, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(photos["unlabelled"], data)
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(data), "--out", str(run), *sum((["--set", o] for o in FAST), [])]
    assert main(args + ["--max-steps", "1"]) == 0
    first = load_config_of(run)
    for i in range(6):  # new, larger and brighter images arrive before the relaunch
        Image.new("RGB", (300, 300), (250, 250, 250)).save(data / f"new{i}.png")
    capsys.readouterr()
    assert main(args + ["--max-steps", "2"]) == 0
    assert "as the run's config.yaml resolved it" in capsys.readouterr().out
    again = load_config_of(run)
    assert again["data"]["mean"] == first["data"]["mean"] and again["model"] == first["model"]


def test_test_folder_beside_the_class_folders_is_not_a_class(tmp_path):
    for split, n in (("", 4), ("test", 2)):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("L", (16, 16), i).save(d / f"{i}.png")
    assert detect_kind(tmp_path)[0] == "image_folder"
    data = {"name": "image_folder", "root": str(tmp_path), "channels": 1}
    train, test = build_dataset(data, "train"), build_dataset(data, "test")
    assert train.classes == ["cat", "dog"] and len(train) == 8 and len(test) == 4
    assert all("test" not in p.parts[-3:-1] for p, _ in train.samples)


def test_a_train_folder_alone_holds_out_its_test_split(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (16, 16), i).save(tmp_path / "train" / c / f"{i}.png")
    data = {"name": "image_folder", "root": str(tmp_path), "channels": 1}
    assert len(build_dataset(data, "train")) == 8 and len(build_dataset(data, "test")) == 2


def test_held_out_split_does_not_move_with_the_crop_size(tmp_path):
    """Training (which skips images smaller than its crop) and evaluation (no crop) hold out the same images."""
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i, side in enumerate((10, 40, 40, 12, 40, 40, 40, 11, 40, 40)):
            Image.new("L", (side, side), i).save(tmp_path / c / f"{i}.png")
    data = {"name": "image_folder", "root": str(tmp_path), "channels": 1, "small_images": "skip"}
    with pytest.warns(UserWarning, match="smaller than 32 px"):
        train = build_dataset(data, "train", min_size=32)
    test = build_dataset(data, "test")
    train_files = {p for p, _ in (train.dataset.samples[i] for i in train.indices)}
    test_files = {p for p, _ in (test.dataset.samples[i] for i in test.indices)}
    assert not train_files & test_files and len(test_files) == 4


def test_tensor_backend_keeps_each_image_on_its_own_scale():
    from mst.data.tensor_multicrop import GPUMultiCrop, collate_raw

    from tests.conftest import aug

    byte = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    floats = torch.full((3, 32, 32), 7.0)  # e.g. a 16-bit or DICOM image in its own units
    images, _ = collate_raw([(byte, 0), (floats, 1)])
    assert isinstance(images, list)  # not stacked into one dtype (200 would read as 200.0, not 200/255)
    t = GPUMultiCrop(aug(global_size=16, local_size=8, n_local=0, color_jitter_p=0.0, solarize_p=0.0, grayscale_p=0.0,
                         blur_p=[0.0, 0.0, 0.0]), [0.0] * 3, [1.0] * 3, 3)
    g1 = t(images, generator=torch.Generator().manual_seed(0))[0]
    assert torch.allclose(g1[0], torch.full_like(g1[0], 200 / 255), atol=1e-5)
    assert torch.allclose(g1[1], torch.full_like(g1[1], 7.0), atol=1e-4)  # not clipped to 1


def test_auto_base_lr_is_each_methods_small_budget_lr():
    from mst.methods import METHODS

    preset = Path(__file__).resolve().parents[1] / "configs" / "own_images_cpu.yaml"
    for method, lr in (("mae", 1.5e-3), ("simmim", 1e-3), ("mst", 8e-3)):
        notes: list = []
        cfg = load_config(preset, [f"method={method}", "data.name=fashion_mnist"], notes=notes)
        assert cfg["optim"]["base_lr"] == lr == METHODS.get(method).small_budget_base_lr
        assert any(c.key == "optim.base_lr" and c.value == lr for c in notes)
    pinned = load_config(preset, ["method=mst", "data.name=fashion_mnist", "optim.base_lr=2e-3"])
    assert pinned["optim"]["base_lr"] == 2e-3
