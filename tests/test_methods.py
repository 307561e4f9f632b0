"""The method engine (the contract every method keeps is in test_contracts.py): MAE and SimMIM match hand
computations; a method or strategy registered here is usable by name; the engine imports no method's loss, head or
step."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from mst.config import load_config, register_section, sections
from mst.checkpoint import load_checkpoint
from mst.engine.trainer import Trainer
from mst.masking import MASKS, MaskResult, MaskStrategy, PatchRatioMask
from mst.methods import METHODS, Method, StepOutput, build_method
from mst.models.tokens import gather_tokens, keep_indices, patchify, scatter_tokens
from tests.conftest import TINY, TINY_MAE, TINY_SIMMIM, step, views_for

SRC = Path(__file__).resolve().parents[1] / "src" / "mst"


def test_mae_step_equals_a_hand_computation():
    """Same generator -> the same mask; the loss is MSE over the hidden patches of per-patch normalised pixels, and
    the encoder saw exactly int(N * (1 - r)) tokens per image, with the decoder's output back in image order."""
    cfg = load_config(overrides=TINY_MAE + ["mask.ratio=0.75", "model.drop_path=0.0"])
    torch.manual_seed(0)
    mae = build_method(cfg).eval()
    x = views_for(mae, b=3)[0]
    seen = {}

    def count(module, inputs):  # returns None: the input is only read
        seen.setdefault("n", inputs[0].shape[1])

    hook = mae.encoder.vit.blocks[0].register_forward_pre_hook(count)
    out = step(mae, [x], generator=torch.Generator().manual_seed(5))
    hook.remove()
    assert seen["n"] == 1 + int(49 * 0.25)  # CLS + 12 visible tokens
    mask = PatchRatioMask(0.75)(3, (7, 7), None, torch.Generator().manual_seed(5)).mask
    assert torch.equal(out.mask, mask) and (mask.sum(1) == 37).all()
    with torch.no_grad():
        z = mae.encoder(x, keep=~mask)
        everything = keep_indices(torch.ones_like(mask))
        pred = mae.decoder(z.cls, z.patches, z.keep_index, everything)  # image order: position n at row n
        target = patchify(x, 4)
        # the un-shuffle round trip: visible tokens scattered back land on their own positions
        back = scatter_tokens(gather_tokens(target, z.keep_index), z.keep_index, 49)
        assert torch.equal(back[~mask], target[~mask])
        total = 0.0
        for b in range(3):
            for n in torch.nonzero(mask[b]).flatten().tolist():
                t = target[b, n]
                t = (t - t.mean()) / (t.var() + 1e-6) ** 0.5
                total += ((pred[b, n] - t) ** 2).mean().item()
    assert out.loss.item() == pytest.approx(total / int(mask.sum()), rel=1e-4)


def test_simmim_step_equals_the_reference_l1_on_masked_pixels():
    cfg = load_config(overrides=TINY_SIMMIM + ["model.img_size=32", "model.img_size=32",
                                               "mask.unit=8", "model.drop_path=0.0"])
    torch.manual_seed(0)
    sim = build_method(cfg).eval()
    x = views_for(sim, b=2)[0]
    out = step(sim, [x], generator=torch.Generator().manual_seed(3))
    m = out.mask.reshape(2, 4, 2, 4, 2)
    assert (m == m[:, :, :1, :, :1]).all() and (m[:, :, 0, :, 0].sum((1, 2)) == 10).all()  # ceil(0.6 * 16)
    with torch.no_grad():
        z = sim.encoder(x, mask=out.mask)
        rec = sim.decoder(z.patches, z.grid)
        pix = out.mask.reshape(2, 1, 8, 8).float().repeat_interleave(4, 2).repeat_interleave(4, 3)
        reference = ((x - rec).abs() * pix).sum() / (pix.sum() + 1e-5) / 1
    assert out.loss.item() == pytest.approx(reference.item(), rel=1e-5)


class _ThrowHalf(MaskStrategy):
    """Test strategy: per image, the first quarter of a random order masked, the next half thrown, rest visible."""

    throws = True

    def __call__(self, batch, grid, importance, generator):
        n = grid[0] * grid[1]
        order = torch.argsort(torch.rand(batch, n, generator=generator), dim=1)
        mask = torch.zeros(batch, n, dtype=torch.bool)
        keep = torch.zeros(batch, n, dtype=torch.bool)
        mask.scatter_(1, order[:, : n // 4], True)
        keep.scatter_(1, order[:, n // 4 + n // 2:], True)
        return MaskResult(mask=mask, keep=keep)


@pytest.fixture
def throw_half():
    MASKS.register("throw_half", _ThrowHalf)
    yield
    MASKS.unregister("throw_half")


@pytest.mark.parametrize("tiny", [TINY_MAE, TINY_SIMMIM])
def test_thrown_tokens_leave_the_encoder_and_the_loss(tiny, throw_half):
    cfg = load_config(overrides=tiny + ["mask.strategy=throw_half", "model.drop_path=0.0"])
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    x = views_for(method, b=2)[0]
    seen = []

    def count(module, inputs):  # returns None: the input is only read
        seen.append(inputs[0].shape[1])

    hook = method.encoder.vit.blocks[0].register_forward_pre_hook(count)
    out = step(method, [x], generator=torch.Generator().manual_seed(1))
    hook.remove()
    res = _ThrowHalf()(2, (7, 7), None, torch.Generator().manual_seed(1))
    thrown = res.thrown
    assert int(thrown[0].sum()) == 24
    expect_tokens = 49 - 24 - (12 if cfg["method"] == "mae" else 0)  # MAE: visible only; SimMIM: + [MASK] ones
    assert seen == [1 + expect_tokens]
    # changing the pixels of thrown patches changes nothing: they are neither input nor target
    pixels = torch.nn.functional.interpolate(thrown.reshape(2, 1, 7, 7).float(), scale_factor=4)
    y = x + 10.0 * pixels
    again = step(method, [y], generator=torch.Generator().manual_seed(1))
    assert again.loss.item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_mst_throws_only_without_its_decoder(throw_half):
    """The decoder restores the whole view from every token, so MST throws only with mst.decoder=none (DINO)."""
    from mst.registry import ConfigError

    with pytest.raises(ConfigError, match=r"^mask.strategy='throw_half' throws tokens away, but mst.decoder='cnn' restores "
                                          r"the whole view from every token: set mst.decoder=none to throw$"):
        load_config(overrides=TINY + ["mask.strategy=throw_half"])
    method = build_method(load_config(overrides=TINY + ["mask.strategy=throw_half", "mst.decoder=none"])).train()
    out = step(method, views_for(method, b=2), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out.loss) and out.metrics["thrown_ratio"] == pytest.approx(24 / 49)


class _MeanColour(Method):
    """A test method: predict each image's mean intensity from the encoder's CLS token (a linear probe)."""

    sections = ("probe",)
    defaults = {"probe": {"scale": 1.0}}  # its own section, declared here: no edit elsewhere
    backbones = {"encoder": "encoder"}
    default_backbone = "encoder"

    def __init__(self, cfg):
        super().__init__(cfg)
        from mst.models.backbones import create_backbone

        self.encoder = create_backbone(cfg["model"], int(cfg["data"]["channels"]))
        self.head = torch.nn.Linear(self.encoder.embed_dim, 1)

    def forward(self, batch, ctx):
        x = batch.views[0]
        pred = self.head(self.encoder(x).cls).squeeze(1) * float(self.cfg["probe"]["scale"])
        loss = ((pred - x.mean((1, 2, 3))) ** 2).mean()
        return StepOutput(loss=loss, metrics={"loss": loss.item()})


def test_a_method_registered_here_is_configured_and_trained_by_name(tmp_path):
    METHODS.register("mean_colour", _MeanColour)
    try:
        cfg = load_config(overrides=["method=mean_colour", *TINY_MAE[1:6], "log.progress=false",
                                     "log.tensorboard=false", "log.every=1", "probe.scale=2.0"])
        assert cfg["probe"] == {"scale": 2.0} and "mim" not in cfg
        assert load_config(overrides=["method=mean_colour", *TINY_MAE[1:6]])["probe"] == {"scale": 1.0}
        tr = Trainer(cfg, tmp_path / "run")
        assert tr.fit(max_steps=2) == "max_steps"
        lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in lines] == [1, 2] and all(r["loss"] > 0 for r in lines)
        ck = load_checkpoint(tmp_path / "run")
        assert ck["default_backbone"] == "encoder" and "head.weight" in ck["method"]
    finally:
        METHODS.unregister("mean_colour")


def test_a_section_has_one_owner_and_one_default_per_key(restore_sections):
    """A method declaring a section another owner declared with other defaults is refused when its class is
    defined; re-declaring the same defaults (a subclass) is not; register_section still adds a section by hand."""
    with pytest.raises(ValueError, match=r"config key mst.decoder is declared by mst.methods.mst.MSTSettings and, "
                                         r"with another default, by tests.test_methods.*Clash"):
        class Clash(_MeanColour):
            defaults = {"mst": {"decoder": "linear"}}
    with pytest.raises(ValueError, match="'data', a common config section"):
        class Common(_MeanColour):
            defaults = {"data": {}}

    class Same(_MeanColour):
        defaults = {"probe": {"scale": 1.0}}
    register_section("probe2", {"k": 3})
    assert sections()["probe"] == {"scale": 1.0} and sections()["probe2"] == {"k": 3}


def test_mae_resume_equals_the_uninterrupted_run(tmp_path):
    cfg = load_config(overrides=TINY_MAE)
    Trainer(cfg, tmp_path / "full").fit()
    part = Trainer(cfg, tmp_path / "part")
    assert part.fit(max_steps=5) == "max_steps"
    Trainer(cfg, tmp_path / "part").fit()
    a = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 17))
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    sa, sb = load_checkpoint(tmp_path / "full")["method"], load_checkpoint(tmp_path / "part")["method"]
    assert all(torch.allclose(sa[k], sb[k], atol=1e-5) for k in sa)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_engine_and_evaluation_import_no_method():
    for folder in ("engine", "eval"):
        for path in (SRC / folder).glob("*.py"):
            imported = _imports(path)
            method_files = {f"mst.methods.{p.stem}" for p in (SRC / "methods").glob("*.py")} - {"mst.methods.base"}
            assert not imported & method_files, (path, imported & method_files)
            assert not {i for i in imported if i.startswith(("mst.losses", "mst.models.head", "mst.models.encoder",
                                                             "mst.masking"))}, path
            if folder == "eval":
                assert not any(i.startswith("mst.methods") for i in imported), path


@pytest.mark.parametrize("tiny", [["method=mst", *TINY], TINY_MAE])
def test_bf16_autocast_on_cpu_trains(tiny, tmp_path):
    """optim.amp=bf16 runs the step under CPU autocast: finite losses, float32 weights and optimizer state."""
    cfg = load_config(overrides=tiny + ["optim.amp=bf16"])
    tr = Trainer(cfg, tmp_path / "run", log=lambda *a: None)
    assert tr.fit(max_steps=2) == "max_steps"
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(0 < r["loss"] < float("inf") for r in lines)
    assert all(p.dtype == torch.float32 for p in tr.method.parameters())
