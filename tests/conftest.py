"""Shared fixtures: tiny configs so every test runs in seconds on a 2-core CPU."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from mst.config import COMMON, load_config

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# a short run on 64 images that logs every step and writes nothing it does not need
TINY_RUN = [
    "optim.batch_size=8",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "data.subset=64",
    "log.progress=false",
    "log.tensorboard=false",
    "log.every=1",
    "log.knn_every=0",
]
TINY = [
    "model.depth=2",
    "dino.out_dim=64",
    "dino.hidden_dim=64",
    "dino.bottleneck_dim=32",
    "augment.n_local=2",
    *TINY_RUN,
    "mst.decoder_channels=[16,8]",
]

# the same tiny model for the MIM methods (no DINO head, a 1-block 32-wide MAE decoder)
TINY_MIM = ["model.depth=2", "model.img_size=28", *TINY_RUN]
TINY_MAE = ["method=mae", *TINY_MIM, "mae.decoder_dim=32", "mae.decoder_depth=1", "mae.decoder_heads=2"]
TINY_SIMMIM = ["method=simmim", *TINY_MIM, "mask.strategy=blocks", "mask.ratio=0.6", "mim.norm_pix_loss=false"]
TINY_FINETUNE = ["method=finetune", *TINY_MIM]
def save_tiny_teacher(patch_size: int = 4, seed: int = 1) -> str:
    """A 1-block, 32-wide ViT on Fashion-MNIST's 28 px grey images (random weights), saved as ``mst export`` saves
    one (safetensors + JSON): the SOURCE of the distillation teacher in the tiny configs (patch 4: the tiny
    students' 7 x 7 grid; patch 2: a 14 x 14 grid, twice as fine)."""
    import json
    import tempfile
    from pathlib import Path

    import timm
    from safetensors.torch import save_file

    kwargs = dict(img_size=28, patch_size=patch_size, in_chans=1, num_classes=0, dynamic_img_size=True, depth=1,
                  embed_dim=32, num_heads=2)
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    path = Path(tempfile.mkdtemp(prefix="mst_tiny_teacher_")) / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"model_name": "vit_tiny_patch16_224", "model_kwargs": kwargs}))
    return f"timm:vit_tiny_patch16_224={path}"


TINY_TEACHER = save_tiny_teacher()
TINY_DISTILL = ["method=distill", *TINY_MIM, f"teacher.init={TINY_TEACHER}"]
# every registered method's tiny config: tests over all methods read it through tiny_overrides, which fails for a
# method without one (a new method must add its entry here rather than be left out of those tests)
TINY_BY_METHOD = {"mst": ["method=mst", *TINY], "dino": ["method=dino", *TINY], "mae": TINY_MAE, "simmim": TINY_SIMMIM,
                  "distill": TINY_DISTILL,
                  "finetune": TINY_FINETUNE}


def tiny_overrides(method: str) -> list[str]:
    """The overrides of ``method``'s tiny config; an error (not a skip) for a method that has none."""
    if method not in TINY_BY_METHOD:
        raise KeyError(f"method {method!r} has no tiny config: add one to TINY_BY_METHOD in tests/conftest.py")
    return list(TINY_BY_METHOD[method])


@pytest.fixture
def tiny_cfg():
    return load_config(overrides=TINY)


def make_tiny_cfg(*extra: str) -> dict:
    return load_config(overrides=TINY + list(extra))


# normalisation statistics and an augment-section builder shared by the augmentation tests
MEAN1, STD1 = [0.2860], [0.3530]
MEAN3, STD3 = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def aug(**kw) -> dict:
    a = copy.deepcopy(COMMON["augment"])
    a.update(global_size=28, local_size=12)  # the defaults are "auto" (resolved from the data by load_config)
    a.update(kw)
    return a


def step(method, views, epoch: int = 0, generator=None):
    """One forward of a method's step on ready views (no optimizer): its StepOutput."""
    from mst.data import Batch
    from mst.methods import StepContext

    b = views[0].shape[0]
    batch = Batch(list(views), torch.zeros(b, dtype=torch.long), torch.arange(b))
    return method(batch, StepContext(epoch=epoch, step=0, generator=generator))


def views_for(method, b=4, seed=0):
    """Random views of the shapes ``method`` trains on (its global and local crops, or one view)."""
    g = torch.Generator().manual_seed(seed)
    c = int(method.cfg["data"]["channels"])
    size = int(method.cfg["model"]["img_size"])
    if method.views == "multicrop":
        local = int(method.cfg["augment"]["local_size"])
        return [torch.randn(b, c, size, size, generator=g) for _ in range(2)] + \
               [torch.randn(b, c, local, local, generator=g) for _ in range(int(method.cfg["augment"]["n_local"]))]
    return [torch.randn(b, c, size, size, generator=g)]


def save_method(method, path, epoch: int = 0):
    """A checkpoint file (the trainer's format, no optimizer) holding ``method``."""
    from mst.checkpoint import method_checkpoint

    torch.save(method_checkpoint(method, epoch=epoch), path)
    return path


@pytest.fixture(autouse=True)
def restore_sections():
    """Config sections and keys a test declares (a method or degradation class defined in the test) are gone after
    it, so no other test sees them (every test: a class registered in a test module's body declares on first use)."""
    import mst.settings as settings
    from mst.config import sections

    sections()  # the built-in ones first
    saved, classes = copy.deepcopy(settings._KEYS), dict(settings._CLASSES)
    yield
    settings._KEYS.clear()
    settings._KEYS.update(saved)
    settings._CLASSES.clear()
    settings._CLASSES.update(classes)
