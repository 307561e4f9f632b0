"""Beyond Masking's degradations: each one's geometry on a known image, the combined loss by hand, determinism,
the registry (a degradation registered here trains by name), de-colourisation's 1 -> C adaptation."""
from __future__ import annotations

import pytest

from mst.settings import make_spec
import torch

from mst.config import load_config
from mst.degradations import DEGRADATIONS, Decolorize, Degradation, Degraded, Distort, ZoomIn, ZoomOut, fisheye_grid
from mst.degradations.blur import Blur
from mst.losses import normalize_patches
from mst.methods import build_method
from mst.methods.mae import degraded_loss
from mst.models.tokens import patchify, unpatchify
from mst.registry import ConfigError
from tests.conftest import TINY_MAE, step

RAMP = (torch.arange(28, dtype=torch.float32) + 0.5) / 28  # value = the pixel centre's x position in [0, 1]


def gradient(b=2, c=1) -> torch.Tensor:
    return RAMP.expand(b, c, 28, 28).clone()


def test_zoom_in_feeds_the_native_centre_of_a_wider_view():
    z = ZoomIn()  # 9/7: the reference's 288 px view for a 224 px input
    assert (z.view_size(224), z.border(224), z.view_size(28), z.view_size(64)) == (288, 32, 36, 82)
    ramp = ((torch.arange(36, dtype=torch.float32) + 0.5) / 36).expand(2, 1, 36, 36).clone()
    d = z(ramp, None)
    assert d.input.shape == (2, 1, 28, 28) and torch.equal(d.target, ramp)
    assert torch.equal(d.input, ramp[..., 4:32, 4:32])  # the pixels themselves, not resampled
    with pytest.raises(ValueError, match="a 31 px view is not a zoom-in view"):
        z(torch.zeros(1, 1, 31, 31), None)


def test_zoom_out_places_a_shrunk_view_with_mirrored_borders():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(28 * 28, dtype=torch.float32).reshape(1, 1, 28, 28).repeat(3, 1, 1, 1)
    d = ZoomOut(zoom=1.4)(x, g)  # 20 px in a 28 px canvas
    small = torch.nn.functional.interpolate(x[:1], size=(20, 20), mode="bilinear", align_corners=False, antialias=True)
    for i in range(3):
        canvas = d.input[i, 0]
        # find the placement: the shrunk view sits somewhere in the canvas, exactly
        hits = [(t, l) for t in range(9) for l in range(9) if torch.allclose(canvas[t:t + 20, l:l + 20], small[0, 0])]
        assert len(hits) == 1
        t, l = hits[0]
        if t > 0:  # mirrored: the row above the image repeats its first row (symmetric padding)
            assert torch.allclose(canvas[t - 1, l:l + 20], small[0, 0, 0])
        if l + 20 < 28:
            assert torch.allclose(canvas[t:t + 20, l + 20], small[0, 0, :, 19])
    assert torch.allclose(d.to_input_frame(d.target), d.input)  # prediction and target get the same placement
    again = ZoomOut(zoom=1.4)(x, torch.Generator().manual_seed(0))
    assert torch.equal(again.input, d.input)  # determinism per seed


def test_fisheye_keeps_the_centre_and_stays_inside():
    centres = torch.tensor([[0.0, 0.0], [0.5, -0.5], [-1.0, 1.0]])
    grid = fisheye_grid(centres, torch.tensor([0.2, 0.25, 0.15]), 9, 9)
    assert grid.abs().max() <= 1.0 + 1e-6  # the image only
    assert torch.allclose(grid[0, 4, 4], torch.zeros(2))  # a centre on a grid point does not move
    ident = fisheye_grid(centres, torch.zeros(3), 9, 9)
    moved = (grid - ident).norm(dim=-1)
    towards = ((centres[:, None, None] - ident) * (grid - ident)).sum(-1)
    assert (towards >= -1e-6).all() and (moved <= (centres[:, None, None] - ident).norm(dim=-1) + 1e-6).all()
    d = Distort()(gradient(), torch.Generator().manual_seed(1))
    assert d.input.shape == (2, 1, 28, 28) and not torch.allclose(d.input, d.target)


def test_fisheye_is_radial_as_the_reference():
    """get_of_fisheye: g' = g + m * sqrt(sum((c - g)^2)) * (c - g), written out for one grid point by hand."""
    c, m = (0.3, -0.6), 0.2
    grid = fisheye_grid(torch.tensor([c]), torch.tensor([m]), 5, 5)
    gx, gy = -1.0, 0.5  # column 0, row 3 of a 5-point linspace(-1, 1)
    dx, dy = c[0] - gx, c[1] - gy
    r = (dx * dx + dy * dy) ** 0.5
    assert torch.allclose(grid[0, 3, 0], torch.tensor([gx + m * r * dx, gy + m * r * dy]))
    # the per-axis |d| of the old version differs wherever both offsets are non-zero (here by ~0.2 of the image)
    per_axis = torch.tensor([gx + m * abs(dx) * dx, gy + m * abs(dy) * dy])
    assert (grid[0, 3, 0] - per_axis).abs().max() > 0.05


def test_blur_keeps_a_constant_image_and_smooths_edges():
    flat = torch.full((3, 2, 28, 28), 0.7)
    d = Blur(kernel=7, sigma=(0.5, 2.0))(flat, torch.Generator().manual_seed(0))
    assert torch.allclose(d.input, flat, atol=1e-6)
    edge = torch.zeros(1, 1, 28, 28)
    edge[..., 14:] = 1.0
    out = Blur(kernel=5, sigma=(1.0, 1.0))(edge, None).input
    assert 0 < out[0, 0, 0, 13] < 0.5 < out[0, 0, 0, 14] < 1 and torch.allclose(out.mean(), edge.mean(), atol=1e-6)


def test_decolorize_weights_in_range_and_one_channel_refused():
    dec = Decolorize(high=2 / 3)
    w = dec.mix(1000, 3, torch.Generator().manual_seed(0), "cpu")
    assert w.min() >= 0 and w.max() < 2 / 3 and abs(w.mean().item() - 1 / 3) < 0.02
    x = torch.rand(4, 3, 28, 28)
    d = dec(x, torch.Generator().manual_seed(0))
    mix = dec.mix(4, 3, torch.Generator().manual_seed(0), "cpu")
    assert d.input.shape == (4, 1, 28, 28) and torch.allclose(d.input[:, 0], (x * mix[:, :, None, None]).sum(1))
    with pytest.raises(ConfigError, match="de-colourising grey images does nothing"):
        load_config(overrides=TINY_MAE + ["mim.degradation=decolorize"])


def test_zoom_in_loss_equals_the_reference_formula():
    """0.8 x masked-token MSE of the prediction's centre (area-resized to the 36 px view) against the input's
    normalised patches + 0.2 x the SUM of the four strip MSEs (top, bottom, left, right; 4 px wide) against the whole
    view area-resized to 28, normalised per patch, area-resized back (the reference's forward_loss)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 36, 36, generator=g)
    d = ZoomIn(ring_weight=0.2)(x, None)
    pred = torch.randn(2, 49, 16, generator=g)
    mask = torch.rand(2, 49, generator=g) < 0.75
    got = degraded_loss(pred, d, mask, 4, norm_pix=True)

    wide = F.interpolate(unpatchify(pred, 4, (7, 7), 1), size=(36, 36), mode="area")
    p_c, t_c = patchify(wide[..., 4:32, 4:32], 4), normalize_patches(patchify(x[..., 4:32, 4:32], 4))
    main = sum(((p_c[b, n] - t_c[b, n]) ** 2).mean() for b in range(2) for n in range(49) if mask[b, n]) / mask.sum()
    whole = unpatchify(normalize_patches(patchify(F.interpolate(x, size=(28, 28), mode="area"), 4)), 4, (7, 7), 1)
    whole = F.interpolate(whole, size=(36, 36), mode="area")
    top = ((wide[..., :4, :] - whole[..., :4, :]) ** 2).mean()
    bottom = ((wide[..., 32:, :] - whole[..., 32:, :]) ** 2).mean()
    left = ((wide[..., 4:32, :4] - whole[..., 4:32, :4]) ** 2).mean()
    right = ((wide[..., 4:32, 32:] - whole[..., 4:32, 32:]) ** 2).mean()
    assert got.item() == pytest.approx((0.8 * main + 0.2 * (top + bottom + left + right)).item(), rel=1e-5)
    ring = torch.ones(36, 36, dtype=torch.bool)
    ring[4:32, 4:32] = False
    ring_mean = ((wide - whole) ** 2)[..., ring].mean()  # the old all-ring-pixels mean weighs the ring ~4x less
    assert (top + bottom + left + right) / ring_mean > 3
    # nothing hidden (the degradation alone): every token counts
    alone = degraded_loss(pred, Degraded(input=x[..., :28, :28], target=x[..., :28, :28]), torch.zeros_like(mask), 4,
                          norm_pix=False)
    assert alone.item() == pytest.approx(((pred - patchify(x[..., :28, :28], 4)) ** 2).mean().item(), rel=1e-5)


@pytest.mark.parametrize("n_in, n_out", [(28, 36), (36, 28), (7, 10), (10, 7), (12, 12)])
def test_area_resize_is_torchs_area_interpolation(n_in, n_out):
    """The zoom-in loss's fast resize: the values and the gradient of F.interpolate(mode="area")."""
    import torch.nn.functional as F

    from mst.degradations.zoom import area_resize

    x = torch.randn(3, 2, n_in, n_in, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w = torch.randn(3, 2, n_out, n_out, generator=torch.Generator().manual_seed(1))
    ours = area_resize(x, n_out)
    ref = F.interpolate(x, size=(n_out, n_out), mode="area")
    assert torch.allclose(ours, ref, atol=1e-6)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under AMP the averaging stays fp32
        low = area_resize(x.detach().bfloat16(), n_out)
    assert low.dtype == torch.float32
    assert torch.allclose(low, F.interpolate(x.detach().bfloat16().float(), size=(n_out, n_out), mode="area"),
                          atol=1e-6)


def test_zoom_out_normalises_the_target_in_the_clean_frame_then_places_it():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 28, 28, generator=g)
    d = ZoomOut(zoom=1.4)(x, torch.Generator().manual_seed(0))
    pred = torch.randn(2, 49, 16, generator=g)
    mask = torch.rand(2, 49, generator=g) < 0.75
    got = degraded_loss(pred, d, mask, 4, norm_pix=True)
    target = d.to_input_frame(unpatchify(normalize_patches(patchify(x, 4)), 4, (7, 7), 1))
    p_in = patchify(d.to_input_frame(unpatchify(pred, 4, (7, 7), 1)), 4)
    t_in = patchify(target, 4)  # not normalised again after the placement
    want = sum(((p_in[b, n] - t_in[b, n]) ** 2).mean() for b in range(2) for n in range(49) if mask[b, n]) / mask.sum()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("name", DEGRADATIONS.names())
def test_every_degradation_trains_in_mae_alone_and_with_masking(name, tmp_path):
    channels = 3 if name == "decolorize" else 1  # de-colourising refuses grey data
    for mask in ([["mask.strategy=none"]] if name != "none" else []) + [["mask.ratio=0.75"]]:
        cfg = load_config(overrides=TINY_MAE + [f"mim.degradation={name}", "degrade.blur_kernel=5",
                                                f"data.channels={channels}"] + mask)
        torch.manual_seed(0)
        mae = build_method(cfg)
        v = mae.view_size  # zoom-in crops a wider view (36 px for a 28 px input)
        out = step(mae, [torch.randn(4, channels, v, v)], generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert mae.encoder.vit.blocks[0].attn.qkv.weight.grad is not None


def test_decolorize_trains_on_colour_and_exports_with_three_channels(tmp_path):
    from mst.checkpoint import load_backbone
    from tests.conftest import save_method

    cfg = load_config(overrides=TINY_MAE + ["mim.degradation=decolorize", "data.channels=3",
                                            "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"])
    torch.manual_seed(0)
    mae = build_method(cfg)
    assert mae.encoder.vit.patch_embed.proj.weight.shape[1] == 1  # one channel in ...
    x = torch.randn(2, 3, 28, 28)
    out = step(mae, [x], generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and mae.decoder.pred.out_features == 16 * 3  # ... three reconstructed
    save_method(mae, tmp_path / "checkpoint.pt")
    bb, _ = load_backbone(tmp_path)
    w1 = mae.encoder.vit.patch_embed.proj.weight
    assert torch.allclose(bb.vit.patch_embed.proj.weight, w1.repeat(1, 3, 1, 1) / 3)  # timm's adapt_input_conv
    grey = x.mean(1, keepdim=True)
    with torch.no_grad():
        assert torch.allclose(bb(x).cls, mae.encoder.eval()(grey).cls, atol=1e-5)


def test_a_degradation_registered_here_trains_by_name(restore_sections):
    class _Invert(Degradation):
        """A degradation registered by the test: the encoder sees the negative of the view, times its own setting."""

        settings = {"invert_gain": make_spec(1.0, "invert: the negative's gain")}  # a degrade key, declared here only

        def __init__(self, gain: float = 1.0) -> None:
            self.gain = gain

        @classmethod
        def from_config(cls, section):
            return cls(section["invert_gain"])

        def __call__(self, images, generator):
            return Degraded(input=-self.gain * images, target=images)

    DEGRADATIONS.register("invert", _Invert)
    try:
        cfg = load_config(overrides=TINY_MAE + ["mim.degradation=invert", "degrade.invert_gain=2.5"])
        assert cfg["degrade"]["invert_gain"] == 2.5 and cfg["degrade"]["zoom_in"] == 9 / 7
        mae = build_method(cfg)
        x = torch.randn(4, 1, 28, 28)
        assert torch.equal(mae.degradation(x, None).input, -2.5 * x)
        out = step(mae, [x])
        assert torch.isfinite(out.loss)
        with pytest.raises(ConfigError, match="degrade.invert_gain"):
            load_config(overrides=TINY_MAE + ["mim.degradation=invert", "degrade.invert_gain=strong"])
        with pytest.raises(ValueError, match=r"config key degrade.zoom_in is declared by mst.degradations.zoom.ZoomIn"):
            class Twice(_Invert):
                settings = {"zoom_in": make_spec(2.0, "a clash")}
        with pytest.raises(ConfigError, match=r"mim.degradation='inverted' is not a registered degradation"):
            load_config(overrides=TINY_MAE + ["mim.degradation=inverted"])
        with pytest.raises(ConfigError, match="built on MAE"):
            load_config(overrides=["method=simmim", "mim.degradation=invert"])
    finally:
        DEGRADATIONS.unregister("invert")


def test_degradations_are_deterministic_per_seed():
    x = torch.randn(3, 1, 28, 28)
    for cls in (ZoomOut, Distort, Blur):
        a = cls()(x, torch.Generator().manual_seed(5)).input
        b = cls()(x, torch.Generator().manual_seed(5)).input
        c = cls()(x, torch.Generator().manual_seed(6)).input
        assert torch.equal(a, b) and not torch.equal(a, c), cls.__name__


@pytest.mark.parametrize("name", ["zoom_in", "zoom_out", "distort", "blur", "decolorize"])
def test_figure_shows_the_clean_view_the_degraded_input_and_the_reconstruction(name):
    """`mst visualize` on a Beyond Masking run: clean view | degraded input (masked tokens grey) | reconstruction."""
    from mst.figures import to_display

    colour = ["data.channels=3", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]"] if name == "decolorize" else []
    cfg = load_config(overrides=TINY_MAE + [f"mim.degradation={name}", "degrade.blur_kernel=5"] + colour)
    torch.manual_seed(0)
    mae = build_method(cfg).eval()
    x = torch.rand(2, cfg["data"]["channels"], 28, 28)
    rows = mae.panels(x, torch.Generator().manual_seed(0))
    assert [[p.title.split(",")[0] for p in r] for r in rows] == [["clean view", "degraded input", "reconstruction"]] * 2
    c = cfg["data"]
    for i, (clean, degraded, _) in enumerate(rows):
        assert degraded.title == f"degraded input, masked {49 - int(49 * 0.25)}"
        if name != "zoom_in":  # zoom-in's clean view is the wider view (the eval image resized to 36 px)
            assert torch.allclose(torch.as_tensor(clean.image), torch.as_tensor(to_display(x[i], c["mean"], c["std"])))
        shown = torch.as_tensor(degraded.image)
        grey = (shown == 0.5).all(-1)[::4, ::4]
        assert grey.sum() == 49 - int(49 * 0.25)  # the masked tokens, grey
        # the visible tokens show the degraded input, not the clean view
        visible = torch.kron(~grey, torch.ones(4, 4, dtype=torch.bool))
        clean_rgb = torch.as_tensor(clean.image)
        if name == "zoom_in":  # the input is the clean view's centre, at its own pixels
            assert clean_rgb.shape[:2] == (36, 36)
            clean_rgb = clean_rgb[4:32, 4:32]
        clean_rgb = clean_rgb[..., None].expand_as(shown) if clean_rgb.dim() == 2 else clean_rgb
        if name == "zoom_in":
            assert torch.allclose(shown[visible], clean_rgb[visible], atol=1e-3)  # native pixels: not resampled
        else:
            assert not torch.allclose(shown[visible], clean_rgb[visible], atol=1e-3)
