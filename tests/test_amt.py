"""AMT: the attention buffer, maps following the crop, the draw (counts, order, weights), throwing inside MAE and
SimMIM, resume across a refresh, refusals."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from mst.config import load_config
from mst.data import ArrayDataset
from mst.checkpoint import load_checkpoint
from mst.engine.trainer import Trainer
from mst.masking import AMTMask, AMTSpec, crop_maps
from mst.masking.amt import normalised_head_mean
from mst.methods import build_method
from mst.methods.mim_common import amt_spec
from mst.registry import ConfigError
from tests.conftest import TINY_MAE, TINY_SIMMIM, step
from tests.test_models import explicit_last_block_attention

AMT = ["amt.enabled=true", "amt.start=1", "amt.interval=1", "amt.batch_size=16"]


def test_buffer_equals_a_direct_recomputation():
    torch.manual_seed(0)
    method = build_method(load_config(overrides=TINY_MAE + AMT + ["model.drop_path=0.0"]))
    rng = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (10, 28, 28), generator=rng, dtype=torch.uint8).numpy()
    data = ArrayDataset(images, torch.zeros(10, dtype=torch.long).numpy())
    maps = method.masking.maps
    maps.bind(len(data))
    stats = maps.refresh(method.encoder, data, 28, [0.286], [0.353], epoch=3, device=torch.device("cpu"),
                         batch_size=4)
    assert maps.refreshed_epoch == 3 and maps.maps.dtype == torch.uint8 and maps.maps.shape == (10, 7, 7)
    assert stats["amt_buffer_mb"] == pytest.approx(10 * 49 / 2**20) and stats["amt_refresh_s"] > 0
    x = (torch.from_numpy(images).float()[:, None] / 255 - 0.286) / 0.353
    with torch.no_grad():
        full = explicit_last_block_attention(method.encoder.vit, x)[:, :, 0, 1:]  # (B, heads, 49)
    lo, hi = full.amin(-1, keepdim=True), full.amax(-1, keepdim=True)
    expect = ((full - lo) / (hi - lo)).mean(1).reshape(10, 7, 7)
    assert (maps.maps.float() / 255 - expect).abs().max() <= 0.5 / 255 + 1e-5  # uint8: within half a step
    assert torch.allclose(normalised_head_mean(full), expect.flatten(1), atol=1e-5)
    assert maps.maps.float().std() > 10  # not a constant map


def test_maps_follow_the_crop_box_and_the_flip():
    # a map whose value is the horizontal position of each cell's centre (a linear gradient)
    w0 = 14
    ramp = (torch.arange(w0, dtype=torch.float32) + 0.5) / w0
    maps = ramp.expand(2, 10, w0).clone()
    boxes = torch.tensor([[0.25, 0.0, 0.75, 1.0], [0.25, 0.0, 0.75, 1.0]])
    out = crop_maps(maps, boxes, torch.tensor([False, True]), (7, 7)).reshape(2, 7, 7)
    expect = 0.25 + (torch.arange(7) + 0.5) / 7 * 0.5  # the box's half of the ramp, at the view's token centres
    assert torch.allclose(out[0], expect.expand(7, 7), atol=1e-5)
    assert torch.allclose(out[1], expect.flip(0).expand(7, 7), atol=1e-5)  # the same flip as the view
    # a vertical box: rows follow the box, columns the whole width
    tall = ((torch.arange(10, dtype=torch.float32) + 0.5) / 10)[:, None].expand(10, w0)[None]
    out = crop_maps(tall, torch.tensor([[0.0, 0.5, 1.0, 1.0]]), None, (5, 5)).reshape(5, 5)
    assert torch.allclose(out[:, 0], 0.5 + (torch.arange(5) + 0.5) / 5 * 0.5, atol=1e-5)


def test_exact_counts_of_masked_thrown_visible():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(5, 196, generator=g)
    r = AMTMask(0.45, 0.40)(5, (14, 14), w, g)  # MAE's reference ratios on ViT-B/16
    assert (r.mask.sum(1) == 88).all() and (r.thrown.sum(1) == 78).all() and (r.keep.sum(1) == 30).all()
    assert not (r.mask & r.keep).any()
    # SimMIM: 2x2-token units, ceil(49 * 0.44) = 22 masked and ceil(49 * 0.70) - 22 = 13 thrown units
    s = AMTMask(0.44, 0.26, unit=2, rounding="ceil")(3, (14, 14), w[:3], g)
    assert (s.mask.sum(1) == 22 * 4).all() and (s.thrown.sum(1) == 13 * 4).all()
    m = s.mask.reshape(3, 7, 2, 7, 2)
    assert (m == m[:, :, :1, :, :1]).all()  # whole units
    for order in ("throw_first", "throw_lowest"):
        o = AMTMask(0.45, 0.40, order=order)(5, (14, 14), w, g)
        assert (o.mask.sum(1) == 88).all() and (o.thrown.sum(1) == 78).all()
    lowest = AMTMask(0.1, 0.5, order="throw_lowest")(5, (14, 14), w, g)
    for i in range(5):  # throw_lowest throws exactly the lowest-weight half
        assert set(torch.nonzero(lowest.thrown[i]).flatten().tolist()) == set(w[i].argsort()[:98].tolist())


def test_zero_weight_tokens_come_after_every_positive_one():
    g = torch.Generator().manual_seed(1)
    w = torch.zeros(200, 10)
    w[:, :4] = torch.rand(200, 4, generator=g) + 0.1  # 4 positive tokens, 6 with zero weight
    r = AMTMask(0.3, 0.3)(200, (2, 5), w, g)  # 3 masked, then 3 thrown
    assert not r.mask[:, 4:].any()  # the 3 masked are all among the 4 positive ones
    assert r.thrown[:, :4].sum(1).eq(1).all()  # the 4th positive one is the first thrown
    assert (r.thrown[:, 4:].sum(1) == 2).all()  # then zero-weight tokens, two of them


def test_draws_follow_proportional_sampling_without_replacement():
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    n = 40000
    r = AMTMask(0.25, 0.25)(n, (1, 4), weights.expand(n, 4), torch.Generator().manual_seed(2))  # 1 masked, 1 thrown
    p_first = weights / weights.sum()
    p_second = torch.zeros(4)
    for i, j in itertools.permutations(range(4), 2):  # P(second = j) = sum_i w_i/S * w_j/(S - w_i)
        p_second[j] += p_first[i] * weights[j] / (weights.sum() - weights[i])
    sd = (0.25 / n) ** 0.5
    assert torch.allclose(r.mask.float().mean(0), p_first, atol=5 * sd)
    assert torch.allclose(r.thrown.float().mean(0), p_second, atol=5 * sd)


@pytest.mark.parametrize("tiny", [TINY_MAE, TINY_SIMMIM])
def test_amt_step_throws_tokens_from_the_encoder(tiny):
    torch.manual_seed(0)
    method = build_method(load_config(overrides=tiny + AMT + ["model.drop_path=0.0"])).eval()
    method.masking.maps.bind(8)
    x = torch.randn(2, 1, 28, 28)
    seen = []

    def count(module, inputs):  # returns None: the input is only read
        seen.append(inputs[0].shape[1])

    hook = method.encoder.vit.blocks[0].register_forward_pre_hook(count)
    before = step(method, [x], epoch=0)  # before amt.start: plain masking, nothing thrown
    after = step(method, [x], epoch=1, generator=torch.Generator().manual_seed(0))
    hook.remove()
    is_mae = method.cfg["method"] == "mae"
    n_mask, n_throw = (22, 19) if is_mae else (22, 13)  # int(49 * .45), int(49 * .85) - 22; ceil(49 * .44), ceil(.7)
    assert seen[0] == 1 + (12 if is_mae else 49)
    assert seen[1] == 1 + 49 - n_throw - (n_mask if is_mae else 0)
    assert (after.mask.sum(1) == n_mask).all() and "visible_ratio" in after.metrics
    assert torch.isfinite(before.loss) and torch.isfinite(after.loss)


def test_resume_across_a_refresh_equals_the_uninterrupted_run(tmp_path):
    cfg = load_config(overrides=TINY_MAE + AMT)  # 2 epochs of 8 steps; maps refreshed at the start of epoch 1
    full = Trainer(cfg, tmp_path / "full", log=lambda *a: None)
    full.fit()
    lines = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    refresh = [r for r in lines if "amt_refresh_s" in r]
    assert len(refresh) == 1 and refresh[0]["epoch"] == 1
    for stop in (5, 11):  # before the refresh, and after it (mid-epoch 1)
        run = tmp_path / f"part{stop}"
        assert Trainer(cfg, run, log=lambda *a: None).fit(max_steps=stop) == "max_steps"
        Trainer(cfg, run, log=lambda *a: None).fit()
        part = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        losses = lambda rs: [r["loss"] for r in rs if "loss" in r]  # noqa: E731
        assert losses(part) == pytest.approx(losses(lines), rel=1e-5), stop
        a, b = load_checkpoint(tmp_path / "full")["method"], load_checkpoint(run)["method"]
        extra = "masking.maps._extra_state"
        assert torch.equal(a[extra]["maps"], b[extra]["maps"]) and b[extra]["refreshed_epoch"] == 1


def test_amt_refusals(tmp_path):
    with pytest.raises(ConfigError, match=r"amt.mask_ratio=0.6 and amt.throw_ratio=0.4 .* sum to less than 1"):
        load_config(overrides=TINY_MAE + AMT + ["amt.mask_ratio=0.6", "amt.throw_ratio=0.4"])
    with pytest.raises(ConfigError, match=r"amt.mask_ratio=1.2"):
        load_config(overrides=TINY_MAE + AMT + ["amt.mask_ratio=1.2"])
    with pytest.raises(ConfigError, match=r"model.arch='swin_tiny' can do neither"):
        load_config(overrides=TINY_SIMMIM + AMT + ["model.arch=swin_tiny", "model.depth=null", "model.img_size=64",
                                                   "model.img_size=64"])
    with pytest.raises(ConfigError, match="set amt.enabled=true"):
        load_config(overrides=TINY_MAE + ["mask.strategy=amt"])
    with pytest.raises(ConfigError, match="amt.order='middle' is not one of"):
        load_config(overrides=TINY_MAE + AMT + ["amt.order=middle"])
    # a buffer from a run on other data
    cfg = load_config(overrides=TINY_MAE + AMT)
    Trainer(cfg, tmp_path / "run", log=lambda *a: None).fit(max_steps=9)  # past the refresh
    other = load_config(overrides=TINY_MAE + AMT + ["data.subset=72"])
    tr = Trainer(other, tmp_path / "run", log=lambda *a: None)
    tr.cfg = cfg  # the same settings but 72 images: only the buffer can tell
    with pytest.raises(ConfigError, match="holds maps of 64 images but the training set has 72"):
        tr.fit()


@pytest.mark.parametrize("tiny", [TINY_MAE, TINY_SIMMIM])
def test_amt_figure_panels(tiny):
    torch.manual_seed(0)
    method = build_method(load_config(overrides=tiny + AMT)).eval()
    rows = method.panels(torch.randn(2, 1, 28, 28), torch.Generator().manual_seed(0))
    titles = [p.title for p in rows[0]]
    assert titles[0] == "attention map (whole image)" and titles[1].startswith("map of the crop")
    assert titles[2].startswith("masked ") and ", thrown " in titles[2] and titles[3] == "reconstruction"
    assert all(p.image.shape[:2] == (28, 28) for p in rows[0])
    n_thrown = int(titles[2].split("thrown ")[1])
    black = (rows[0][2].image == 0).all(-1).reshape(7, 4, 7, 4).all(axis=(1, 3))  # tokens drawn all black
    assert n_thrown in (19, 13) and black.sum() == n_thrown


@pytest.mark.parametrize("backend", ["pil", "tensor"])
def test_the_reported_box_and_flip_reproduce_the_view(backend):
    """Both augmentation backends report the crop box and flip of each view: cropping the image's own content (a
    horizontal gradient, as a map would be) with them gives back the view, so AMT's maps land on the right tokens."""
    from PIL import Image

    from mst.data import GPUSingleView, SingleViewTransform

    w0, h0 = 40, 30
    ramp = ((torch.arange(w0, dtype=torch.float32) + 0.5) / w0).expand(h0, w0)
    mean, std = [0.0], [1.0]
    if backend == "pil":
        t = SingleViewTransform(28, (0.3, 1.0), 0.5, mean, std, 1)
        img = Image.fromarray((ramp * 255).round().to(torch.uint8).numpy())
        outs = []
        for i in range(6):
            torch.manual_seed(i)
            outs.append(t(img))
        views = torch.stack([v for v, _, _ in outs])
        boxes = torch.stack([b for _, b, _ in outs])
        flips = torch.stack([f for _, _, f in outs])
        tol = 2.5 / 255 + 0.02  # uint8 rounding and bicubic resampling
    else:
        t = GPUSingleView(28, (0.3, 1.0), 0.5, mean, std, 1)
        views, boxes, flips = t(ramp.expand(6, 1, h0, w0).clone(), generator=torch.Generator().manual_seed(0))
        tol = 1e-4
    assert flips.any() and not flips.all()
    expect = crop_maps(ramp.expand(6, h0, w0), boxes, flips, (28, 28)).reshape(6, 28, 28)
    assert (views[:, 0] - expect).abs().max() < tol


@pytest.mark.parametrize("fields, message", [
    ((1.2, 0.1), r"^amt.mask_ratio=1.2 must lie in \[0, 1\)$"),
    ((0.4, -0.1), r"^amt.throw_ratio=-0.1 must lie in \[0, 1\)$"),
    ((0.6, 0.4), r"^amt.mask_ratio=0.6 and amt.throw_ratio=0.4 must sum to less than 1"),
    ((0.4, 0.4, 1, "middle"), r"^amt.order='middle' is not one of mask_first, throw_first, throw_lowest$"),
    ((0.4, 0.4, 1, "mask_first", "round"), r"^AMT rounding='round' is not one of floor, ceil$"),
    ((0.4, 0.4, 0), r"^AMT mask unit=0 tokens must be a whole number >= 1"),
])
def test_spec_checks_each_value_once(fields, message):
    """The spec is where AMT's settings are checked: a bad one is a one-line ConfigError naming it, also when
    AMTMask is built directly."""
    with pytest.raises(ConfigError, match=message):
        AMTSpec(*fields)
    with pytest.raises(ConfigError, match=message):
        AMTMask(*fields)


def test_null_ratios_are_the_methods_reference():
    from mst.methods import MAE, SimMIM

    assert MAE.amt_reference == (0.45, 0.40) and SimMIM.amt_reference == (0.44, 0.26)
    assert amt_spec(load_config(overrides=TINY_MAE + AMT)) == AMTSpec(0.45, 0.40, 1, "mask_first", "floor")
    simmim = load_config(overrides=TINY_SIMMIM + AMT + ["model.img_size=32", "model.img_size=32",
                                                     "mask.unit=8", "amt.order=throw_lowest"])
    assert amt_spec(simmim) == AMTSpec(0.44, 0.26, 2, "throw_lowest", "ceil")  # blocks: SimMIM's ceil
    half = load_config(overrides=TINY_MAE + AMT + ["amt.throw_ratio=0.1"])  # only the null one is filled in
    assert amt_spec(half) == AMTSpec(0.45, 0.1, 1, "mask_first", "floor")


def test_a_method_without_reference_ratios_must_set_them():
    cfg = load_config(overrides=TINY_MAE + AMT)
    for method in ("mst", "not_registered"):  # mst: registered, no amt_reference
        with pytest.raises(ConfigError, match=rf"^amt.mask_ratio and amt.throw_ratio null: method='{method}' has no "
                                              r"reference AMT ratios"):
            amt_spec({**cfg, "method": method})
    half = {**cfg, "method": "mst", "amt": {**cfg["amt"], "mask_ratio": 0.3}}
    with pytest.raises(ConfigError, match=r"^amt.throw_ratio null: method='mst'"):
        amt_spec(half)
    both = {**cfg, "method": "mst", "amt": {**cfg["amt"], "mask_ratio": 0.3, "throw_ratio": 0.2}}
    assert amt_spec(both) == AMTSpec(0.3, 0.2)


@pytest.mark.parametrize("tiny", [TINY_MAE, TINY_SIMMIM])
def test_the_validator_and_the_step_resolve_the_same_spec(tiny, monkeypatch):
    """Config validation and MIMMasking both go through AMTSpec.from_config (via amt_spec), and the step draws with its result."""
    seen = []
    resolve = AMTSpec.from_config.__func__

    def recording(cls, *args, **kwargs):
        seen.append(resolve(cls, *args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(AMTSpec, "from_config", classmethod(recording))
    cfg = load_config(overrides=tiny + AMT + ["amt.order=throw_first"])
    validated = len(seen)
    method = build_method(cfg)
    assert validated >= 1 and len(seen) > validated
    assert all(s == method.masking.amt.spec for s in seen)
    mask_ratio, throw_ratio = method.amt_reference
    assert method.masking.amt.spec == AMTSpec(mask_ratio, throw_ratio, 1, "throw_first",
                                              "ceil" if tiny is TINY_SIMMIM else "floor")


def test_a_mim_method_without_amt_reference_works_while_amt_is_off(restore_sections):
    """AMT's values are checked while AMT is off too, but a method with no reference ratios (a new MIM method)
    needs them only when AMT is on."""
    from mst.methods import METHODS, MAE

    class NoReference(MAE):
        amt_reference = None

    METHODS.register("mae_noref", NoReference)
    try:
        base = ["method=mae_noref", *TINY_MAE[1:]]
        assert load_config(overrides=base)["amt"]["mask_ratio"] is None
        with pytest.raises(ConfigError, match=r"^amt.mask_ratio=1.5 must lie in \[0, 1\)$"):
            load_config(overrides=base + ["amt.mask_ratio=1.5"])
        with pytest.raises(ConfigError, match="method='mae_noref' has no reference AMT ratios"):
            load_config(overrides=base + AMT)
    finally:
        METHODS.unregister("mae_noref")
