"""A frozen pretrained teacher as the guide of the mask (``mask.importance=frozen``, ``teacher.init``): its attention
is resampled to the student's grid as written out here, the mask MST and MAE draw is the strategy's on that
attention, the teacher stays frozen and runs once per step, and what cannot work is one line."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from mst.cli import main
from mst.config import ConfigError, RenamedKeyNotice, load_config
from mst.masking import AttentionGuidedMask, top_attended
from mst.methods import build_method
from mst.methods.frozen import FrozenTeacher, resample_importance
from tests.conftest import TINY_MAE, TINY_TEACHER, save_tiny_teacher, step, tiny_overrides, views_for

FINE_TEACHER = save_tiny_teacher(patch_size=2, seed=2)  # a 14 x 14 grid: twice as fine as the students' 7 x 7


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- resampling the teacher's attention to the student's grid ------------------------------------------------------
def test_resampling_to_a_coarser_grid_is_the_mean_over_the_covered_cells():
    att = torch.rand(3, 14 * 14)
    blocks = att.reshape(3, 7, 2, 7, 2).mean((2, 4)).reshape(3, 49)  # each 2 x 2 block of cells
    torch.testing.assert_close(resample_importance(att, (14, 14), (7, 7)), blocks)
    # a non-integer factor: cell i of 4 covers the cells floor(7 i / 4) .. ceil(7 (i + 1) / 4) - 1 of 7 (area)
    att = torch.rand(2, 49)
    grid = att.reshape(2, 7, 7)
    spans = [range(math.floor(7 * i / 4), math.ceil(7 * (i + 1) / 4)) for i in range(4)]
    want = torch.stack([torch.stack([grid[:, list(r)][:, :, list(c)].mean((1, 2)) for c in spans]) for r in spans])
    torch.testing.assert_close(resample_importance(att, (7, 7), (4, 4)), want.permute(2, 0, 1).reshape(2, 16))
    assert resample_importance(att, (7, 7), (7, 7)) is att


def test_resampling_to_a_finer_grid_is_bilinear_at_the_cell_centres():
    att = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # a 2 x 2 map
    out = resample_importance(att, (2, 2), (4, 4)).reshape(4, 4)
    g = att.reshape(2, 2)

    def at(i: int, j: int) -> float:  # align_corners=False: output centre (i + 0.5) / 2 - 0.5 in input cells, clamped
        y, x = min(max((i + 0.5) / 2 - 0.5, 0.0), 1.0), min(max((j + 0.5) / 2 - 0.5, 0.0), 1.0)
        return float((1 - y) * (1 - x) * g[0, 0] + (1 - y) * x * g[0, 1] + y * (1 - x) * g[1, 0] + y * x * g[1, 1])

    torch.testing.assert_close(out, torch.tensor([[at(i, j) for j in range(4)] for i in range(4)]))


# -- the teacher guides the mask ----------------------------------------------------------------------------------
def test_mst_masks_by_the_frozen_teachers_attention_on_its_grid():
    cfg = load_config(overrides=tiny_overrides("mst") + ["mask.importance=frozen", f"teacher.init={FINE_TEACHER}",
                                                         "model.drop_path=0.0"])
    method = build_method(cfg).train()
    assert isinstance(method.frozen, FrozenTeacher) and not method.frozen.training
    views = views_for(method, b=2)
    out = step(method, views, generator=gen(0))
    global_views = torch.cat(views[:2])
    t = method.frozen(global_views, attention=True)
    assert t.grid == (14, 14)
    importance = t.attention.reshape(4, 7, 2, 7, 2).mean((2, 4)).reshape(4, 49)
    want = AttentionGuidedMask(cfg["mask"]["num"], cfg["mask"]["p"])(4, (7, 7), importance, gen(0))
    assert torch.equal(out.mask.cpu(), want.mask) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in method.frozen.parameters())


def test_mae_attmask_hides_the_frozen_teachers_most_attended_patches():
    cfg = load_config(overrides=TINY_MAE + ["mask.strategy=attmask", "mask.ratio=0.5", "mask.importance=frozen",
                                            f"teacher.init={TINY_TEACHER}"])
    method = build_method(cfg).train()
    x = views_for(method, b=3)[0]
    out = step(method, [x], generator=gen(0))
    want = top_attended(method.frozen(x, attention=True).attention, int(49 * 0.5))  # same 7 x 7 grid
    assert torch.equal(out.mask.cpu(), want)


def test_the_frozen_teacher_stays_frozen_and_runs_once_per_step(tmp_path):
    from mst.engine.trainer import Trainer

    cfg = load_config(overrides=TINY_MAE + ["mask.strategy=attmask", "mask.importance=frozen",
                                            f"teacher.init={FINE_TEACHER}"])
    trainer = Trainer(cfg, tmp_path / "r", log=lambda *a: None)
    frozen = trainer.method.frozen
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    calls = []
    frozen.register_forward_hook(lambda m, i, o: calls.append(m.training))
    trainer.fit(max_steps=3)
    assert calls == [False, False, False]  # once per step, in eval mode
    assert all(not p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(v, before[k]) for k, v in frozen.state_dict().items())
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in frozen.parameters())


# -- settings and refusals -----------------------------------------------------------------------------------------
def test_what_cannot_work_is_one_line_and_an_unused_teacher_is_named():
    with pytest.raises(ConfigError, match=r"^mask.importance='frozen' reads a frozen pretrained teacher: "
                                          r"set teacher.init=SOURCE \(--teacher SOURCE: .*\)$"):
        load_config(overrides=tiny_overrides("mst") + ["mask.importance=frozen"])
    with pytest.raises(ConfigError, match=r"^mim.target='both' reads a frozen pretrained teacher: set teacher.init="):
        load_config(overrides=TINY_MAE + ["mim.target=both"])
    with pytest.warns(UserWarning, match=r"^teacher.init is set but method=mst reads it only with "
                                         r"mask.importance=frozen or mst.frozen_weight > 0: the teacher is not used$"):
        load_config(overrides=tiny_overrides("mst") + [f"teacher.init={TINY_TEACHER}"])
    with pytest.warns(UserWarning, match=r"^teacher.init is set but method=mae reads it only with "
                                         r"mask.importance=frozen or mim.target=teacher\|both: the teacher is not "
                                         r"used$"):
        load_config(overrides=TINY_MAE + [f"teacher.init={TINY_TEACHER}"])
    with pytest.raises(ConfigError, match=r"^mim.target='teacher' and mim.degradation='blur' do not combine"):
        load_config(overrides=TINY_MAE + ["mim.target=teacher", "mim.degradation=blur", f"teacher.init={TINY_TEACHER}"])
    with pytest.raises(ConfigError, match=r"^teacher.init='timm:beit_base_patch16_224=/nowhere.pth'"):
        build_method(load_config(overrides=TINY_MAE + ["mask.strategy=attmask", "mask.importance=frozen",
                                                       "teacher.init=timm:beit_base_patch16_224=/nowhere.pth"]))
    with pytest.warns(RenamedKeyNotice, match="'distill.teacher' in --set is now 'teacher.init'"):
        cfg = load_config(overrides=["method=distill", f"distill.teacher={TINY_TEACHER}"])
    assert cfg["teacher"]["init"] == TINY_TEACHER and "teacher" not in cfg["distill"]


def test_the_cli_teacher_guides_a_pinned_method(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = ["method=mae", "mask.strategy=attmask", "mask.importance=frozen", *TINY_MAE[1:]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the teacher is read: no "not used" warning
        code = main(["pretrain", "--out", str(tmp_path / "r"), "--teacher", FINE_TEACHER, "--max-steps", "2",
                     *sum((["--set", s] for s in sets), [])])
    assert code == 0
    import yaml

    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (cfg["method"], cfg["teacher"]["init"], cfg["mask"]["importance"]) == ("mae", FINE_TEACHER, "frozen")


# -- the teacher's features as the reconstruction target (mim.target) ----------------------------------------------
def _normalised(t: torch.Tensor) -> torch.Tensor:
    """Each token minus its mean over features, over sqrt(unbiased variance + 1e-6) (MAE's norm_pix, per token)."""
    return (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5


def _resized(patches: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    b, _, d = patches.shape
    fmap = patches.transpose(1, 2).reshape(b, d, *grid)
    out = torch.nn.functional.interpolate(fmap, size=target, mode="bilinear", align_corners=False)
    return out.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("method_name", ["mae", "simmim"])
def test_target_teacher_regresses_the_teachers_normalised_features_of_the_masked_tokens(method_name):
    cfg = load_config(overrides=tiny_overrides(method_name) + ["mim.target=teacher", f"teacher.init={FINE_TEACHER}",
                                                               "model.drop_path=0.0"])
    method = build_method(cfg).train()
    x = views_for(method, b=3)[0]
    out = step(method, [x], generator=gen(0))
    mask = out.mask.cpu()
    with torch.no_grad():
        if method_name == "mae":
            z = method.encoder(x, keep=~mask)
            everything = torch.arange(49).expand(3, 49)
            tokens = method.decoder.features(z.cls, z.patches, z.keep_index, everything)
        else:
            tokens = method.encoder(x, mask=mask).patches
        pred = method.teacher_head(tokens)
        t = method.frozen(x)
        want = _normalised(_resized(t.patches, t.grid, (7, 7)))
        per_token = ((pred - want) ** 2).mean(-1)
    assert out.metrics["loss_teacher"] == pytest.approx(per_token[mask].mean().item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(out.metrics["loss_teacher"], rel=1e-6)
    out.loss.backward()  # no pixel head left: every trained weight gets a gradient (as DDP requires)
    trained = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trained), [n for n, p in trained if p.grad is None]
    assert method.panels(x[:2], gen(1))  # figures: the masked input, no reconstruction


def test_target_both_adds_the_weighted_teacher_term_to_the_pixel_loss():
    base = TINY_MAE + ["model.drop_path=0.0"]
    torch.manual_seed(0)
    pixels = build_method(load_config(overrides=base)).train()
    torch.manual_seed(0)
    both = build_method(load_config(overrides=base + ["mim.target=both", "mim.teacher_weight=0.5",
                                                      f"teacher.init={FINE_TEACHER}"])).train()
    x = views_for(pixels, b=3)[0]
    a, b = step(pixels, [x], generator=gen(0)), step(both, [x], generator=gen(0))
    assert torch.equal(a.mask, b.mask)  # the same student and mask: the teacher is attached after both
    assert b.loss.item() == pytest.approx(a.loss.item() + 0.5 * b.metrics["loss_teacher"], rel=1e-6)


# -- MST / DINO: a feature-distillation term towards the frozen teacher (GFM) --------------------------------------
def test_mst_frozen_weight_adds_the_cosine_distance_to_the_teachers_features():
    base = tiny_overrides("dino") + ["model.drop_path=0.0", "dino.koleo_weight=0"]
    torch.manual_seed(0)
    plain = build_method(load_config(overrides=base)).train()
    torch.manual_seed(0)
    guided = build_method(load_config(overrides=base + ["mst.frozen_weight=0.5", f"teacher.init={FINE_TEACHER}"]))
    guided.train()
    views = views_for(plain, b=2)
    a, b = step(plain, views, generator=gen(0)), step(guided, views, generator=gen(0))
    assert b.loss.item() == pytest.approx(a.loss.item() + 0.5 * b.metrics["loss_frozen"], rel=1e-5)
    with torch.no_grad():  # the term written out: 1 - cos on the CLS and on each patch token (teacher resized)
        g = torch.cat(views[:2])
        s = guided.student(g, torch.cat(views[2:]), mask=None, keep=None, replacement="learned", n_global=2,
                           n_local=len(views) - 2)
        t = guided.frozen(g)

        def dist(u, v):
            return (1 - (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))).mean()

        want = (dist(guided.frozen_cls(s.global_cls), t.cls)
                + dist(guided.frozen_patch(s.global_patches), _resized(t.patches, t.grid, (7, 7))))
    assert b.metrics["loss_frozen"] == pytest.approx(want.item(), rel=1e-5)
    b.loss.backward()
    assert guided.frozen_patch.weight.grad is not None and all(p.grad is None for p in guided.frozen.parameters())
    with pytest.raises(ConfigError, match=r"^mst.frozen_weight=0.5 compares every patch token .* mask.strategy='amt' "
                                          r"throws some away"):
        load_config(overrides=base + ["mst.frozen_weight=0.5", f"teacher.init={FINE_TEACHER}", "mask.strategy=amt",
                                      "mst.decoder=none"])
