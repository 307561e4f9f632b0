"""Evaluating on your own labels: a tiny model pretrained on a labelled RGB folder (crops of scikit-image's photos,
one photo per class, train/ and val/), then k-NN (a k beyond the bank is clipped with a warning and recorded, a
subset beyond its split is refused), a fine-tune whose finetune.json counts the images and names the classes, its
exported classifier carrying the class names, and the dense probe on the folder's own images."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from mst.config import load_config
from mst.data import DataError
from tests.conftest import MEAN3, STD3

CLASSES = ["astronaut", "chelsea", "coffee", "rocket"]
N_TRAIN, N_VAL = 15, 5  # per class: a 60-image train split (the k-NN bank) and a 20-image val split
SIZE = 32

DATA = ["data.name=image_folder", "data.channels=3", f"data.mean={json.dumps(MEAN3)}", f"data.std={json.dumps(STD3)}"]
PRETRAIN = ["method=mae", "model.depth=2", f"model.img_size={SIZE}", "model.patch_size=8", "mae.decoder_dim=32",
            "mae.decoder_depth=1", "mae.decoder_heads=2", "optim.batch_size=8", "optim.epochs=1",
            "optim.warmup_epochs=0", "log.progress=false", "log.tensorboard=false", "log.every=1", "log.knn_every=0"]
FT = ["optim.epochs=2", "optim.batch_size=8", "optim.warmup_epochs=1", "log.progress=false", "log.tensorboard=false",
      "log.every=1", "log.knn_every=1", "log.knn_test_subset=null", "augment.backend=pil"]


def quiet(*_a, **_k) -> None:
    pass


def make_folder(root) -> None:
    """root/{train,val}/<photo>/<i>.png: random square crops (40..120 px, odd sizes kept) of one photo per class."""
    from PIL import Image
    import skimage.data

    rng = np.random.default_rng(0)
    for name in CLASSES:
        photo = getattr(skimage.data, name)()
        h, w = photo.shape[:2]
        for split, n in (("train", N_TRAIN), ("val", N_VAL)):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                side = int(rng.integers(40, 121))
                t, l = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
                Image.fromarray(photo[t : t + side, l : l + side + int(rng.integers(0, 9))]).save(d / f"{i}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    make_folder(root)
    return root


@pytest.fixture(scope="module")
def pretrained(folder, tmp_path_factory):
    """A tiny MAE pretrained for one epoch on the folder's train images: its run directory."""
    from mst.engine.trainer import Trainer

    torch.manual_seed(0)
    cfg = load_config(overrides=PRETRAIN + DATA + [f"data.root={folder}"])
    assert cfg["data"]["name"] == "image_folder" and cfg["model"]["img_size"] == SIZE
    run = tmp_path_factory.mktemp("pre") / "run"
    assert Trainer(cfg, run, log=quiet).fit() == "done"
    return run


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    from mst.finetune import run_finetune

    out = tmp_path_factory.mktemp("ft") / "finetune"
    res = run_finetune(pretrained, out, overrides=FT, train_subset=20, log=quiet)
    return out, res


# ------------------------------------------------------------------------------------------------------------ k-NN


def test_knn_warns_and_records_a_k_beyond_the_bank(pretrained):
    from mst.eval.knn import run_knn

    with pytest.warns(UserWarning, match=r"k=100, 200 exceed the training bank \(60 images\) and were clipped to k=60"):
        res = run_knn(pretrained, ks=(5, 100, 200), device="cpu", log=quiet)
    assert res["n_train"] == 60 and res["n_test"] == 20
    assert res["clipped_k"] == [100, 200]
    assert res["top1"][100] == res["top1"][200]  # both are the whole-bank vote
    assert all(0.0 <= v <= 100.0 for v in res["top1"].values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no k beyond the bank: no warning
        assert run_knn(pretrained, ks=(5, 60), device="cpu", log=quiet)["clipped_k"] == []


def test_subsets_beyond_the_split_are_refused(pretrained):
    from mst.eval.knn import raw_pixel_knn, run_knn
    from mst.eval.linear import run_linear

    with pytest.raises(DataError, match=r"--train-subset 1000 asks for more images than the train split.*\(60 "):
        run_knn(pretrained, ks=(5,), train_subset=1000, device="cpu", log=quiet)
    with pytest.raises(DataError, match=r"--test-subset 21 asks for more images than the test split.*\(20 images\)"):
        run_knn(pretrained, ks=(5,), test_subset=21, device="cpu", log=quiet)
    with pytest.raises(DataError, match=r"--train-subset 1000 \(balanced\).*only 60"):
        run_knn(pretrained, ks=(5,), train_subset=1000, balanced=True, device="cpu", log=quiet)
    with pytest.raises(DataError, match=r"--train-subset 1000 asks for more images.*\(60 images\)"):
        run_linear(pretrained, epochs=1, train_subset=1000, device="cpu", log=quiet)
    with pytest.raises(DataError, match=r"--train-subset 1000 asks for more images.*\(60 images\)"):
        raw_pixel_knn(pretrained, ks=(5,), train_subset=1000, log=quiet)
    with pytest.raises(DataError, match="--train-subset 0: must be a positive number"):
        run_knn(pretrained, ks=(5,), train_subset=0, device="cpu", log=quiet)
    # the whole split asked for exactly is fine
    res = run_knn(pretrained, ks=(5,), train_subset=60, test_subset=20, device="cpu", log=quiet)
    assert res["n_train"] == 60 and res["n_test"] == 20


# -------------------------------------------------------------------------------------------- fine-tune and export


def test_finetune_json_counts_images_and_names_classes(finetuned):
    out, res = finetuned
    saved = json.loads((out / "finetune.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert saved["train_images"] == 20 and saved["test_images"] == 20 and saved["val_images"] is None
    assert saved["test_split"] == "val"  # train/ + val/: val/ is what the fine-tune is scored on
    assert saved["num_classes"] == 4 and saved["class_names"] == CLASSES
    for key in ("train_images", "test_images", "num_classes"):
        assert type(saved[key]) is int
    from mst.checkpoint import load_checkpoint

    assert load_checkpoint(out)["classifier"]["class_names"] == CLASSES


def test_exported_classifier_names_its_classes(finetuned, tmp_path):
    from mst.eval.export import export_backbone, load_exported

    out, _ = finetuned
    weights, meta = export_backbone(out, tmp_path / "clf.safetensors", log=quiet)
    info = json.loads(meta.read_text())
    assert info["class_names"] == CLASSES and info["model_kwargs"]["num_classes"] == 4
    model = load_exported(weights)
    assert list(model.pretrained_cfg["label_names"]) == CLASSES
    with torch.no_grad():
        assert model(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 4)


def test_printed_timm_call_reproduces_the_classifier_verbatim(finetuned, tmp_path, capsys, monkeypatch):
    """The line `mst export` prints, run as it is, gives the package's own logits (a 1000-class pretrained config
    made timm drop the saved head: a random classifier), and timm's data config reads the data's statistics."""
    import timm

    from mst.checkpoint import load_checkpoint
    from mst.cli import main
    from mst.methods import load_method

    out, _ = finetuned
    monkeypatch.chdir(tmp_path)  # the printed path is the one given: run the call from where export ran
    assert main(["export", "--ckpt", str(out), "--out", "clf.safetensors"]) == 0
    printed = capsys.readouterr().out.splitlines()
    call = next(line.strip() for line in printed if line.strip().startswith("model = timm.create_model("))
    assert json.loads((tmp_path / "clf.json").read_text())["timm_call"] == call[len("model = "):]
    scope: dict = {}
    exec(f"import timm\n{call}", scope)  # verbatim
    model = scope["model"].eval()
    ours = load_method(out)
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = ours.eval().predict(x)
        assert torch.allclose(model(x), expected, atol=1e-5)
    head = load_checkpoint(out)["method"]
    saved_head = next(v for k, v in head.items() if k.endswith("head.weight"))
    assert torch.equal(model.head.weight, saved_head)  # the saved head, not a fresh one
    data_cfg = timm.data.resolve_model_data_config(model)
    cfg = load_checkpoint(out)["config"]["data"]
    assert data_cfg["input_size"] == (3, SIZE, SIZE)
    assert data_cfg["mean"] == pytest.approx(tuple(cfg["mean"])) and data_cfg["std"] == pytest.approx(tuple(cfg["std"]))
    assert data_cfg["crop_pct"] == load_checkpoint(out)["config"]["augment"]["eval_crop"]
    assert list(model.pretrained_cfg["label_names"]) == CLASSES


def test_export_finds_class_names_of_an_older_checkpoint(folder):
    from mst.eval.export import classifier_names

    data = {"name": "image_folder", "root": str(folder), "channels": 3, "subset": None}
    state = {"classifier": {"num_classes": 4}, "config": {"data": data}}
    assert classifier_names(state) == CLASSES  # read from the folder's class subfolders
    fm = {"classifier": {"num_classes": 10}, "config": {"data": {"name": "fashion_mnist", "root": None}}}
    assert classifier_names(fm)[0] == "T-shirt/top"
    gone = {"classifier": {"num_classes": 4}, "config": {"data": dict(data, root=str(folder / "nowhere"))}}
    assert classifier_names(gone) is None


# ---------------------------------------------------------------------------------------------------------- dense


def test_dense_set_pastes_whole_colour_items():
    from mst.eval.dense import make_dense_set

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    imgs[:, 0, 0] = 0  # black pixels of a photo still belong to it
    labels = np.arange(5)
    canv, maps, placed = make_dense_set(imgs, labels, 4, canvas=16, items_per_canvas=(1, 2), seed=0,
                                        threshold=None, return_items=True)
    assert canv.shape == (4, 16, 16, 3) and maps.shape == (4, 16, 16)
    for i in range(4):
        want = np.zeros((16, 16), np.int64)
        for j, t, l in placed[i]:
            want[t : t + 8, l : l + 8] = labels[j] + 1
        np.testing.assert_array_equal(maps[i], want)
        j, t, l = placed[i][-1]
        np.testing.assert_array_equal(canv[i, t : t + 8, l : l + 8], imgs[j])  # the last item lies on top


def test_dense_on_the_labelled_folder(pretrained, folder):
    from mst.eval.dense import run_dense

    data = {"name": "image_folder", "root": str(folder), "channels": 3, "mean": MEAN3, "std": STD3}
    kw = dict(n_train=16, n_test=8, epochs=2, batch_size=8, device="cpu", log=quiet)
    res = run_dense(pretrained, data=data, **kw)
    assert res["classes"] == ["background", *CLASSES] and len(res["per_class_iou"]) == 5
    assert res["canvas"] == SIZE and res["item_size"] == SIZE // 2  # the checkpoint's image size
    assert res["train_items"] == 60 and res["test_items"] == 20
    assert 0.0 <= res["miou"] <= 100.0 and 0.0 <= res["pixel_acc"] <= 100.0 and not math.isnan(res["miou"])
    # the checkpoint's own data section (it pretrained on the folder) gives the same seeded probe
    again = run_dense(pretrained, **kw)
    assert again["miou"] == pytest.approx(res["miou"]) and again["classes"] == res["classes"]
    # a folder without test/ or val/: disjoint halves of its images train and test the probe
    halves = run_dense(pretrained, data=dict(data, root=str(folder / "train")), **kw)
    assert halves["train_items"] + halves["test_items"] == 60 and halves["classes"] == res["classes"]
    with pytest.raises(ValueError, match="divisible"):
        run_dense(pretrained, data=data, canvas=36, **kw)
