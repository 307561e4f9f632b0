"""The contracts every registry entry keeps, in the style of timm's model tests: each test runs over every name
registered when the tests are collected, so a new entry is tested without editing this file. An entry that cannot
keep a contract is a named exclusion with its reason, and an exclusion naming no registered entry fails."""
from __future__ import annotations

import functools

import pytest
import timm
import torch

from mst.checkpoint import load_backbone
from mst.config import COMMON, ConfigError, load_config
from mst.config_doc import describe
from mst.config import sections as method_sections
from mst.degradations import DEGRADATIONS, build_degradation
from mst.masking import MASKS, MaskResult, MaskStrategy, build_mask_strategy
from mst.methods import METHODS, StepOutput, build_method
from mst.models.backbones import BACKBONES, create_backbone, timm_spec
from mst.models.decoders import DECODERS, build_decoder, decoder_kind
from mst.models.tokens import gather_tokens, keep_indices
from mst.settings import RATIO, make_spec
from tests.conftest import save_method, step, tiny_overrides, views_for

# -- named exclusions (and named settings), each checked against its registry below ---------------------------------
HIDES_NOTHING = {"none": "plain DINO: the student sees every token"}  # masks: "hides some token"
KEEPS_EVERY_TOKEN = {"swin_tiny": "its shifted windows need the whole token grid"}  # backbones: the keep contract
LEAVES_RANGE = {"decolorize": "a sum of the channels each weighted U(0, 2/3): up to twice the brightest pixel"}
DRAWS_NOTHING = {"none": "the identity", "zoom_in": "a fixed centre crop of the wider view"}  # "varies with the seed"
MODEL_SIZE = {"swin_tiny": {"img_size": 64, "depth": None, "embed_dim": None, "num_heads": None}}  # per stage: fixed
DEGRADE_CHANNELS = {"decolorize": 3}  # refuses grey data

NAMED = {"HIDES_NOTHING": (MASKS, HIDES_NOTHING), "KEEPS_EVERY_TOKEN": (BACKBONES, KEEPS_EVERY_TOKEN),
         "LEAVES_RANGE": (DEGRADATIONS, LEAVES_RANGE), "DRAWS_NOTHING": (DEGRADATIONS, DRAWS_NOTHING),
         "MODEL_SIZE": (BACKBONES, MODEL_SIZE),
         "DEGRADE_CHANNELS": (DEGRADATIONS, DEGRADE_CHANNELS)}


@pytest.mark.parametrize("what", sorted(NAMED))
def test_exclusions_name_registered_entries(what):
    registry, names = NAMED[what]
    assert set(names) <= set(registry.names()), f"{what} names unregistered {registry.what}s"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pixels(tokens: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, N) token flags on a square grid -> (B, 1, H, W) pixel flags."""
    side = int(tokens.shape[1] ** 0.5)
    grid = tokens.reshape(-1, 1, side, side).float()
    return grid.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def random_keep(b: int, n: int, k: int, seed: int) -> torch.Tensor:
    keep = torch.zeros(b, n, dtype=torch.bool)
    keep.scatter_(1, torch.argsort(torch.rand(b, n, generator=gen(seed)), dim=1)[:, :k], True)
    return keep


# -- mask strategies ------------------------------------------------------------------------------------------------
# one section with every key a built-in strategy reads; 4 px patches, 8 px mask units (2x2 tokens) on 8x8 tokens
MASK_SECTION = {"ratio": 0.5, "p": 0.5, "num": 2, "unit": 8, "throw_ratio": 0.25}
GRID, B = (8, 8), 3


@pytest.mark.parametrize("name", MASKS.names())
def test_mask_strategy_contract(name):
    """Shapes and dtypes, mask and keep disjoint, ``throws`` iff some token is neither, the same count kept per
    image, masks among the candidates, the same draw from the same generator (not torch's global one), and an
    importance-needing strategy refusing to draw without one."""
    strategy = build_mask_strategy(name, MASK_SECTION, 4)
    assert isinstance(strategy, MaskStrategy)
    n = GRID[0] * GRID[1]
    importance = torch.rand(B, n, generator=gen(7)) if strategy.needs_importance else None
    if strategy.needs_importance:
        with pytest.raises(ValueError, match="importance|attention") as e:
            strategy(B, GRID, None, gen(0))
        assert "\n" not in str(e.value)
    torch.manual_seed(1)
    r = strategy(B, GRID, importance, gen(0))
    torch.manual_seed(2)
    again = strategy(B, GRID, importance, gen(0))
    if r is None:  # "no masking"
        assert again is None and name in HIDES_NOTHING and not strategy.throws
        return
    assert isinstance(r, MaskResult) and r.mask.dtype == torch.bool and r.mask.shape == (B, n)
    for extra in (r.keep, r.candidates):
        assert extra is None or (extra.dtype == torch.bool and extra.shape == (B, n))
    assert bool(r.mask.any()) == (name not in HIDES_NOTHING)
    if r.keep is not None:
        assert not (r.mask & r.keep).any()
        keep_indices(r.keep)  # the same count in every image, or a clear error
    assert strategy.throws == bool(r.thrown.any())
    if r.candidates is not None:
        assert not (r.mask & ~r.candidates).any()
    assert torch.equal(again.mask, r.mask)
    assert (again.keep is None) == (r.keep is None) and (r.keep is None or torch.equal(again.keep, r.keep))


# -- backbones ------------------------------------------------------------------------------------------------------
TINY_MODEL = {"patch_size": 4, "img_size": 28, "depth": 1, "embed_dim": 32, "num_heads": 2, "drop_path": 0.0}


@functools.lru_cache(maxsize=None)
def tiny_backbone(name: str):
    """(backbone with a [MASK] embedding in eval mode, its model section, a batch of 2 grey images); built once for
    both backbone tests, which only read it."""
    model = {**COMMON["model"], **TINY_MODEL, **MODEL_SIZE.get(name, {}), "arch": name}
    torch.manual_seed(0)
    bb = create_backbone(model, 1, mask_token=True).eval()
    size = int(model["img_size"])
    return bb, model, torch.randn(2, 1, size, size, generator=gen(3))


@pytest.mark.parametrize("name", BACKBONES.names())
@torch.no_grad()
def test_backbone_token_contract(name):
    """CLS and patch shapes; the CLS attention over the N patch tokens sums to at most 1 (per head too); [MASK]
    replaces the masked tokens' inputs, so their pixels no longer matter and an empty mask changes nothing; the
    weights reload in plain timm with the same features."""
    bb, model, x = tiny_backbone(name)
    out = bb(x, return_attention=True)
    n, d = out.mask_grid[0] * out.mask_grid[1], bb.embed_dim
    patch = x.shape[-1] // out.mask_grid[1]
    assert out.cls.shape == (2, d) and out.patches.shape == (2, out.grid[0] * out.grid[1], d)
    assert out.attention.shape == (2, n) and (out.attention >= 0).all()
    assert (out.attention.sum(1) <= 1 + 1e-5).all()
    heads = bb(x, return_attention=True, per_head=True).attention
    assert heads.shape[::2] == (2, n) and torch.allclose(heads.mean(1), out.attention, atol=1e-6)
    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[:, ::3] = True
    noise = 5 * pixels(mask, patch) * torch.randn(x.shape, generator=gen(4))
    a, b = bb(x, mask=mask), bb(x + noise, mask=mask)
    assert torch.allclose(a.cls, b.cls, atol=1e-5) and torch.allclose(a.patches, b.patches, atol=1e-5)
    assert not torch.allclose(bb(x).cls, bb(x + noise).cls, atol=1e-4)  # unmasked, those pixels matter
    assert torch.allclose(bb(x, mask=torch.zeros_like(mask)).cls, out.cls, atol=1e-6)
    timm_name, kwargs = timm_spec(model, 1)
    plain = timm.create_model(timm_name, **kwargs).eval()
    plain.load_state_dict(bb.timm_state_dict(), strict=True)
    assert (plain(x) - out.cls).abs().max() < 1e-5


@pytest.mark.parametrize("name", BACKBONES.names())
@torch.no_grad()
def test_backbone_keep_contract(name):
    """With a keep set only the kept tokens enter (the others' pixels do not matter), in keep_index order, and
    the attention is 0 elsewhere. A backbone that cannot drop tokens says so (drops_tokens) and refuses a keep set."""
    bb, _, x = tiny_backbone(name)
    grid = bb(x).mask_grid
    n, patch = grid[0] * grid[1], x.shape[-1] // grid[1]
    keep = random_keep(2, n, n // 2, seed=5)
    if name in KEEPS_EVERY_TOKEN:
        assert not BACKBONES.get(name).drops_tokens
        with pytest.raises(ValueError, match="cannot drop tokens"):
            bb(x, keep=keep)
        return
    assert BACKBONES.get(name).drops_tokens
    out = bb(x, keep=keep, return_attention=True)
    assert out.patches.shape == (2, n // 2, bb.embed_dim) and torch.equal(out.keep_index, keep_indices(keep))
    assert (out.attention[~keep] == 0).all() and (out.attention.sum(1) <= 1 + 1e-5).all()
    other = bb(x + 5 * pixels(~keep, patch) * torch.randn(x.shape, generator=gen(6)), keep=keep)
    assert torch.allclose(other.cls, out.cls, atol=1e-5) and torch.allclose(other.patches, out.patches, atol=1e-5)


# -- decoders -------------------------------------------------------------------------------------------------------
DECODER_SECTION = {"decoder_channels": [16, 8], "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}


@pytest.mark.parametrize("name", DECODERS.names())
def test_decoder_contract(name):
    """An image decoder maps every token to the image; a visible-token decoder maps the kept tokens to a pixel
    prediction at each position asked for. Every parameter gets a gradient."""
    torch.manual_seed(0)
    decoder = build_decoder(name, DECODER_SECTION, 32, 4, 1, (7, 7))
    tokens = torch.randn(2, 49, 32, generator=gen(1))
    kind = decoder_kind(name)
    if kind == "all_tokens":
        out = decoder(tokens, (7, 7))
        assert out.shape == (2, 1, 28, 28)
    else:
        assert kind == "visible_tokens"
        idx = keep_indices(random_keep(2, 49, 12, seed=2))
        everything = keep_indices(torch.ones(2, 49, dtype=torch.bool))
        out = decoder(tokens[:, 0], gather_tokens(tokens, idx), idx, everything)
        assert out.shape == (2, 49, 16)
    assert torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in decoder.parameters() if p.requires_grad)


# -- degradations ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DEGRADATIONS.names())
def test_degradation_contract(name):
    """From a clean view (view_size of the input size): the input at the input size with input_channels, the target
    the clean view; values within the clean range (resampling, crops and zero padding only); the same degradation
    from the same generator, another from another."""
    d = build_degradation(name, method_sections()["degrade"])
    c, size = DEGRADE_CHANNELS.get(name, 1), 28
    d.check(c, size, 4)
    view = d.view_size(size)
    images = torch.rand(3, c, view, view, generator=gen(0))
    torch.manual_seed(1)
    out = d(images, gen(0))
    assert out.input.shape == (3, d.input_channels(c), size, size) and torch.isfinite(out.input).all()
    assert torch.equal(out.target, images)
    if out.to_input_frame is not None:
        assert out.to_input_frame(out.target).shape == (3, c, size, size)
    if name not in LEAVES_RANGE:
        assert out.input.min() >= -1e-5 and out.input.max() <= 1 + 1e-5
    torch.manual_seed(2)
    assert torch.equal(d(images, gen(0)).input, out.input)
    assert torch.equal(d(images, gen(9)).input, out.input) == (name in DRAWS_NOTHING)


@pytest.mark.parametrize("name", DEGRADATIONS.names())
def test_every_degradation_trains_with_every_method_that_takes_one(name):
    methods = [m for m in METHODS.names() if "degrade" in METHODS.get(m).sections]  # the section they all read
    assert methods
    for method_name in methods:
        channels = [f"data.channels={DEGRADE_CHANNELS[name]}"] if name in DEGRADE_CHANNELS else []
        cfg = load_config(overrides=tiny_overrides(method_name) + channels + [f"{DEGRADATIONS.key}={name}"])
        torch.manual_seed(0)
        method = build_method(cfg).train()
        size = getattr(method, "view_size", None) or int(cfg["model"]["img_size"])
        out = step(method, [torch.randn(2, int(cfg["data"]["channels"]), size, size, generator=gen(0))])
        assert torch.isfinite(out.loss), (method_name, name)


# -- methods --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name, tmp_path):
    """One training step on the tiny config: a finite scalar loss reported as metrics["loss"], a gradient for
    every trainable parameter; the evaluation backbone round-trips through a checkpoint and the figures draw."""
    cfg = load_config(overrides=tiny_overrides(name))
    torch.manual_seed(0)
    method = build_method(cfg).train()
    assert set(method.sections) <= set(cfg) and method.views in ("multicrop", "single")
    out = step(method, views_for(method))
    assert isinstance(out, StepOutput) and out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.metrics["loss"] == pytest.approx(out.loss.item())
    out.loss.backward()
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing and any(p.requires_grad for p in method.parameters()), missing
    x = views_for(method, b=2)[0]
    with torch.no_grad():
        feats = method.eval_backbone().eval()(x).cls
    save_method(method, tmp_path / "checkpoint.pt")
    loaded, _ = load_backbone(tmp_path, None)
    assert loaded.which == method.default_backbone
    with torch.no_grad():
        assert torch.allclose(loaded(x).cls, feats, atol=1e-6)
    panels = method.eval().panels(x, gen(0))
    assert len(panels) == 2 and all(p.image.shape[:2] == x.shape[-2:] for row in panels for p in row)


# -- a strategy registered here, trained by every method that takes a strategy -------------------------------------
class RandomQuarter(MaskStrategy):
    """A quarter of the tokens of each image at random (an exact count, so MAE can batch the rest)."""

    def __call__(self, batch, grid, importance, generator):
        n = grid[0] * grid[1]
        mask = torch.zeros(batch, n, dtype=torch.bool)
        mask.scatter_(1, torch.argsort(torch.rand(batch, n, generator=generator), dim=1)[:, : n // 4], True)
        return MaskResult(mask=mask)


class LowestQuarter(MaskStrategy):
    """The quarter of each image's tokens with the lowest importance."""

    needs_importance = True

    def __call__(self, batch, grid, importance, generator):
        if importance is None:
            raise ValueError("the lowest-importance mask needs a per-token importance")
        n = grid[0] * grid[1]
        mask = torch.zeros(batch, n, dtype=torch.bool, device=importance.device)
        return MaskResult(mask=mask.scatter_(1, importance.argsort(dim=1)[:, : n // 4], True))


def strategy_keys(method: str) -> list[str]:
    """The config key that selects ``method``'s mask strategy (``mask.strategy``), if it reads the mask section."""
    return ["mask.strategy"] if "mask" in METHODS.get(method).sections else []


def importance_keys(method: str) -> list[str]:
    """``mask.importance=`` the method's first importance source."""
    return [f"mask.importance={METHODS.get(method).importance_sources[0]}"]


@pytest.mark.parametrize("strategy", [RandomQuarter, LowestQuarter])
def test_a_strategy_registered_here_trains_with_every_method_that_takes_one(strategy):
    """Registration is the only edit: every method with a strategy key trains one step with it, an importance-
    needing one with the importance from the method's first source (MST: the teacher; MAE / SimMIM: the encoder)."""
    name = f"test_{strategy.__name__.lower()}"
    MASKS.register(name, strategy)
    try:
        methods = [m for m in METHODS.names() if strategy_keys(m)]
        assert {"mst", "mae", "simmim"} <= set(methods)
        for method_name in methods:
            overrides = [f"{key}={name}" for key in strategy_keys(method_name)]
            if strategy.needs_importance:
                overrides += importance_keys(method_name)
            method = build_method(load_config(overrides=tiny_overrides(method_name) + overrides)).train()
            out = step(method, views_for(method, b=2), generator=gen(0))
            assert torch.isfinite(out.loss) and out.mask is not None, method_name
            grid_n = out.mask.shape[1]
            assert (out.mask.sum(1) == grid_n // 4).all(), method_name
            out.loss.backward()
    finally:
        MASKS.unregister(name)


def test_a_strategy_with_a_setting_of_its_own_is_one_class():
    """A strategy declaring a key of its own (``mask.share``) on its class is configured by it in MST and MAE like a
    built-in one: its default, type and range come from the declaration, ``mst config`` lists it, and nothing
    else is edited."""

    class RandomShare(MaskStrategy):
        settings = {"share": make_spec(0.25, "share of the tokens masked at random", range=RATIO)}

        def __init__(self, share: float) -> None:
            self.share = share

        @classmethod
        def from_config(cls, section, patch_size):
            return cls(section["share"])

        def __call__(self, batch, grid, importance, generator):
            n = grid[0] * grid[1]
            order = torch.argsort(torch.rand(batch, n, generator=generator), dim=1)[:, : int(n * self.share)]
            return MaskResult(mask=torch.zeros(batch, n, dtype=torch.bool).scatter_(1, order, True))

    MASKS.register("test_share", RandomShare)
    try:
        assert load_config()["mask"]["share"] == 0.25
        for method_name in ("mst", "mae"):
            cfg = load_config(overrides=tiny_overrides(method_name) + ["mask.strategy=test_share", "mask.share=0.5"])
            method = build_method(cfg).train()
            out = step(method, views_for(method, b=2), generator=gen(0))
            n = out.mask.shape[1]
            assert (out.mask.sum(1) == int(n * 0.5)).all(), method_name
            out.loss.backward()
        with pytest.raises(ConfigError, match=r"^mask.share=1.5 must lie in \[0, 1\)"):
            load_config(overrides=["mask.strategy=test_share", "mask.share=1.5"])
        assert "share of the tokens masked at random" in describe("mae")
    finally:
        MASKS.unregister("test_share")
