"""Fair fine-tuning comparisons: the small-image shift augmentation (zero padding + random crop), training labels
held out to choose a recipe (never the test split), and the recipe search every backbone gets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mst.config import load_config
from mst.data import build_dataset
from mst.data.dataset import absolute_indices
from mst.data.single_view import GPUSingleView, SingleViewTransform
from mst.eval.features import load_eval_split
from mst.experiments.ftsearch import GRID, recipe_overrides, recipes, search
from mst.methods import build_method
from mst.registry import ConfigError
from tests.conftest import TINY_MAE, save_method

ROOT = Path(__file__).resolve().parents[1]
FT = ["optim.batch_size=8", "optim.warmup_epochs=1", "log.knn_test_subset=40", "augment.backend=tensor"]


def _padded_crop(arr: np.ndarray, top: int, left: int, pad: int, size: int) -> np.ndarray:
    """By hand: zero padding of ``pad`` px around (H, W), then rows top.., cols left.. of the padded image."""
    padded = np.zeros((arr.shape[0] + 2 * pad, arr.shape[1] + 2 * pad), arr.dtype)
    padded[pad:pad + arr.shape[0], pad:pad + arr.shape[1]] = arr
    return padded[top:top + size, left:left + size]


def test_pad_crop_is_a_shift_of_the_zero_padded_image():
    arr = np.arange(28 * 28, dtype=np.float64).reshape(28, 28) % 251
    img = Image.fromarray(arr.astype(np.uint8))
    t = SingleViewTransform(28, (0.5, 1.0), 0.0, [0.0], [1.0], 1, crop="pad", pad=2)
    seen = set()
    for s in range(40):
        torch.manual_seed(s)
        view, box, flip = t(img)
        left, top = int(round(float(box[0]) * 28)) + 2, int(round(float(box[1]) * 28)) + 2  # padded-frame offsets
        seen.add((top, left))
        assert 0 <= top <= 4 and 0 <= left <= 4 and not bool(flip)
        np.testing.assert_allclose(view[0].numpy() * 255, _padded_crop(arr, top, left, 2, 28), atol=1e-3)
    assert len(seen) > 10  # the shift varies


def test_tensor_pad_crop_matches_the_hand_computation():
    x = (torch.arange(3 * 28 * 28) % 251).reshape(3, 1, 28, 28).to(torch.uint8)
    t = GPUSingleView(28, (0.5, 1.0), 0.0, [0.0], [1.0], 1, crop="pad", pad=2)
    views, boxes, flips = t(x, generator=torch.Generator().manual_seed(0))
    for i in range(3):
        left, top = int(round(float(boxes[i, 0]) * 28)) + 2, int(round(float(boxes[i, 1]) * 28)) + 2
        ref = _padded_crop(x[i, 0].numpy().astype(np.float64), top, left, 2, 28) / 255
        np.testing.assert_allclose(views[i, 0].numpy(), ref, atol=1e-6)
    with pytest.raises(ConfigError, match="augment.crop=pad is a single-view crop"):
        load_config(overrides=["method=mst", "augment.crop=pad"])


def test_val_share_carves_held_out_training_labels():
    data = {"name": "fashion_mnist", "root": None, "channels": 1, "subset": 1000, "balanced": True, "val_share": 0.2}
    train, val = build_dataset(data, "train"), build_dataset(data, "train_val")
    whole = build_dataset(dict(data, val_share=0.0), "train")
    assert len(train) == 800 and len(val) == 200 and np.bincount(val.targets).tolist() == [20] * 10
    a, b, w = (set(absolute_indices(d).tolist()) for d in (train, val, whole))
    assert not a & b and a | b == w  # the 1000 labels, split; the test split is not involved
    cfg = load_config(overrides=["method=finetune", "data.subset=1000", "data.balanced=true", "data.val_share=0.2"])
    images, labels = load_eval_split(cfg, "train_val")
    assert len(images) == 200 and torch.equal(labels, torch.as_tensor(val.targets))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    return save_method(build_method(load_config(overrides=TINY_MAE)), tmp_path_factory.mktemp("p") / "checkpoint.pt")


def test_search_chooses_on_validation_and_reports_test(tmp_path, pretrained):
    grid = {"optim.base_lr": [1e-4, 4e-3], "finetune.layer_decay": [1.0], "augmentation": ["shift"]}
    assert len(recipes(grid)) == 2 and "augment.crop=pad" in recipe_overrides(recipes(grid)[0])
    res = search(pretrained, tmp_path, train_subset=50, epochs=2, val_share=0.2, seeds=2, overrides=FT, grid=grid,
                 log=lambda s: None)
    vals = {r["optim.base_lr"]: r["val_top1"] for r in res["search"]}
    assert res["chosen"]["optim.base_lr"] == max(vals, key=vals.get)  # by validation top-1 only
    assert len(res["final"]["top1"]) == 2 and res["final"]["mean"] == pytest.approx(np.mean(res["final"]["top1"]))
    one = json.loads(next((tmp_path / "search").glob("*/finetune.json")).read_text())
    assert one["train_images"] == 40 and "val_top1" in one  # 50 labels: 40 to train, 10 to choose
    final = json.loads((tmp_path / "final" / "seed0" / "finetune.json").read_text())
    assert final["train_images"] == 50 and "val_top1" not in final  # the chosen recipe on all of them
    assert json.loads((tmp_path / "search.json").read_text())["chosen"] == res["chosen"]


@pytest.mark.parametrize("best_lr, extend, lrs, chosen", [
    (1.6e-2, 2, [2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2], 1.6e-2),  # one step past the edge wins, the next loses
    (1e-1, 2, [2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2], 3.2e-2),    # at most two doublings
    (1e-1, 0, [2e-3, 4e-3, 8e-3], 8e-3),
    (4e-3, 2, [2e-3, 4e-3, 8e-3], 4e-3),                      # inside the grid: nothing added
])
def test_lr_axis_grows_while_the_best_recipe_sits_on_its_edge(tmp_path, monkeypatch, best_lr, extend, lrs, chosen):
    import math

    import mst.experiments.ftsearch as ftsearch

    def fake_run(ckpt, out, overrides, *args):  # validation top-1 peaks at best_lr, rrc_erase 1 point lower
        lr = float(next(o for o in overrides if o.startswith("optim.base_lr=")).split("=")[1])
        return {"val_top1": 80 - 10 * abs(math.log2(lr / best_lr)) - ("augment.crop=rrc" in overrides), "top1": 70.0}

    monkeypatch.setattr(ftsearch, "_run", fake_run)
    res = ftsearch.search("ckpt", tmp_path, seeds=1, extend_lr=extend, log=lambda s: None)
    tried = sorted({r["optim.base_lr"] for r in res["search"]})
    assert tried == pytest.approx(lrs) and len(res["search"]) == 4 * len(lrs)  # every layer decay x augmentation
    assert res["chosen"]["optim.base_lr"] == pytest.approx(chosen) and res["chosen"]["augmentation"] == "shift"


def test_a_stopped_fine_tune_is_not_taken_for_a_result(tmp_path, monkeypatch):
    import mst.finetune
    from mst.experiments.ftsearch import SearchStopped, search

    grid = {"optim.base_lr": [4e-3], "finetune.layer_decay": [1.0], "augmentation": ["shift"]}
    monkeypatch.setattr(mst.finetune, "run_finetune", lambda *a, **k: {"status": "preempted"})
    with pytest.raises(SearchStopped, match="rerun the same command"):
        search("ckpt", tmp_path, seeds=1, grid=grid, log=lambda s: None)
    assert not list(tmp_path.rglob("finetune.json"))  # nothing recorded: the rerun trains it

    def fine_tune(ckpt, out, **kwargs):  # a finished run (the real one makes its directory)
        Path(out).mkdir(parents=True, exist_ok=True)
        return {"val_top1": 61.0, "top1": 60.0}

    monkeypatch.setattr(mst.finetune, "run_finetune", fine_tune)
    res = search("ckpt", tmp_path, seeds=1, grid=grid, log=lambda s: None)
    assert res["search"][0]["val_top1"] == 61.0 and res["final"]["top1"] == [60.0]


def test_each_kind_of_backbone_gets_the_recipe_the_search_chose_for_it(pretrained):
    from mst.finetune import CHOSEN_PRESETS, DEFAULT_PRESET, finetune_config

    mae = finetune_config(pretrained, overrides=FT)
    scratch = finetune_config(pretrained, overrides=FT, random_init=True)
    mim = load_config(DEFAULT_PRESET)
    assert (mae["optim"]["base_lr"], mae["finetune"]["layer_decay"], mae["augment"]["crop"]) == (
        mim["optim"]["base_lr"], mim["finetune"]["layer_decay"], mim["augment"]["crop"])
    chosen = load_config(CHOSEN_PRESETS["scratch"])
    assert (scratch["optim"]["base_lr"], scratch["finetune"]["layer_decay"], scratch["augment"]["crop"]) == (
        chosen["optim"]["base_lr"], chosen["finetune"]["layer_decay"], chosen["augment"]["crop"])
    # the MST / DINO and SimMIM presets are the recipes their recorded searches chose (the lr edge included)
    for kind in ("mst", "simmim"):
        record = json.loads((ROOT / "docs" / "results" / f"ftsearch_{kind}_2026-12-02.json").read_text())
        best = max(record["search"], key=lambda r: r["val_top1"])
        assert recipe_of(load_config(CHOSEN_PRESETS[kind])) == record["chosen"] == {k: best[k] for k in GRID}, kind


def recipe_of(cfg: dict) -> dict:
    """The search's recipe a resolved fine-tuning config holds (its augmentation named by its keys)."""
    from mst.experiments.ftsearch import AUGMENTATIONS

    def holds(item: str) -> bool:
        key, value = item.split("=")
        section, leaf = key.split(".")
        return str(cfg[section][leaf]).replace(" ", "") == value.replace(" ", "")

    augmentation = next(name for name, items in AUGMENTATIONS.items() if all(map(holds, items)))
    return {"augmentation": augmentation, "finetune.layer_decay": cfg["finetune"]["layer_decay"],
            "optim.base_lr": cfg["optim"]["base_lr"]}


def test_tensor_pad_crop_takes_images_of_different_sizes():
    images = [torch.full((3, 40, 56), 100, dtype=torch.uint8), torch.full((3, 28, 28), 200, dtype=torch.uint8)]
    t = GPUSingleView(28, (0.5, 1.0), 0.0, [0.0] * 3, [1.0] * 3, 3, crop="pad", pad=2)
    views, boxes, _ = t(images, generator=torch.Generator().manual_seed(0))
    assert views.shape == (2, 3, 28, 28)
    inside = views[0, :, 2:-2, 2:-2]  # away from the padding: the (resized) image's own value
    assert torch.allclose(inside, torch.full_like(inside, 100 / 255), atol=1e-5)
    assert float(boxes[0, 2] - boxes[0, 0]) * 56 == pytest.approx(40.0)  # a 28 px crop of the 28-high resize: 40 source px
