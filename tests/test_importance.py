"""Importance sources x mask strategies x methods: AttMask-High's top-k, the encoder's no-grad importance in MIM,
throwing in DINO's student, the default steps unchanged, and every combination from the registries either training
one step or refused with a one-line reason."""
from __future__ import annotations

import re

import pytest
import torch

from mst.config import load_config
from mst.masking import MASKS, AttMaskHigh, build_mask_strategy
from mst.methods import build_method
from mst.methods.importance import IMPORTANCE, encoder_importance
from mst.registry import ConfigError
from tests.conftest import step, tiny_overrides, views_for
from tests.test_models import explicit_last_block_attention

AMT = ["amt.enabled=true", "amt.start=0", "amt.interval=1"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_attmask_high_masks_exactly_the_most_attended_tokens():
    importance = torch.rand(4, 49, generator=gen(0))
    importance[0, :10] = 0.5  # ties: the earlier position first
    r = AttMaskHigh(0.3)(4, (7, 7), importance, gen(1))
    k = int(49 * 0.3)  # 14
    for i in range(4):
        ranked = sorted(range(49), key=lambda j: (-importance[i, j].item(), j))  # by hand
        assert set(torch.nonzero(r.mask[i]).flatten().tolist()) == set(ranked[:k])
    assert r.keep is None and (r.mask.sum(1) == k).all()
    assert torch.equal(AttMaskHigh(0.3)(4, (7, 7), importance, gen(2)).mask, r.mask)  # no randomness
    with pytest.raises(ValueError, match="needs a per-token attention"):
        AttMaskHigh(0.3)(4, (7, 7), None, gen(1))
    assert isinstance(build_mask_strategy("attmask", {"ratio": 0.5}, 4), AttMaskHigh)


@pytest.mark.parametrize("method_name", ["mae", "simmim"])
def test_mim_draws_attmask_with_the_encoders_attention(method_name):
    """mask.importance=encoder: the masked tokens are the top-k of the encoder's CLS attention computed by hand
    (eval mode, on the view before masking); the step's gradients are untouched by the no-grad pass."""
    cfg = load_config(overrides=tiny_overrides(method_name) + ["mask.strategy=attmask", "mask.importance=encoder",
                                                               "mask.ratio=0.5"])
    torch.manual_seed(0)
    method = build_method(cfg).train()
    x = views_for(method, b=3)[0]
    out = step(method, [x], generator=gen(0))
    assert method.training and method.encoder.training  # the eval pass restored the mode
    with torch.no_grad():
        att = explicit_last_block_attention(method.encoder.vit, x)[:, :, 0, 1:].mean(1)
    assert torch.allclose(encoder_importance(method.encoder, x), att, atol=1e-5)
    top = att.argsort(dim=1, descending=True)[:, :24]  # int(49 * 0.5)
    expect = torch.zeros(3, 49, dtype=torch.bool).scatter_(1, top, True)
    assert torch.equal(out.mask, expect)
    out.loss.backward()
    assert all(p.grad is not None for n, p in method.named_parameters() if p.requires_grad), "a parameter lost grad"


def test_dino_throws_tokens_from_the_students_global_views():
    """mask.strategy=amt, mst.decoder=none: the teacher's CLS attention draws AMT's mask + throw; the student's global
    views carry exactly the kept tokens ([MASK] ones included), its local crops and the teacher every token."""
    cfg = load_config(overrides=tiny_overrides("mst") + ["mask.strategy=amt", "mst.decoder=none", "model.drop_path=0.0"])
    torch.manual_seed(0)
    method = build_method(cfg).train()
    views = views_for(method, b=2)
    lens = {"student": [], "teacher": []}
    hooks = [getattr(method, who).backbone.vit.blocks[0].register_forward_pre_hook(
        lambda mod, inp, who=who: lens[who].append(inp[0].shape[1])) for who in lens]
    out = step(method, views, generator=gen(0))
    for h in hooks:
        h.remove()
    n = 49  # 28 px / 4 px patches
    n_mask, n_throw = int(n * 0.45), int(n * 0.85) - int(n * 0.45)  # mask.ratio, mask.throw_ratio (floor)
    assert (out.mask.sum(1) == n_mask).all() and out.mask.shape == (4, n)
    assert lens["teacher"] == [1 + n]
    local = (int(cfg["augment"]["local_size"]) // 4) ** 2
    assert lens["student"] == [1 + n - n_throw, 1 + local]  # global: kept count; locals untouched
    assert out.metrics["thrown_ratio"] == pytest.approx(n_throw / n)
    # the draw is AMT's on the teacher's attention of the same pass
    with torch.no_grad():
        att = method.teacher.backbone(torch.cat(views[:2]), return_attention=True).attention
    expect = build_mask_strategy("amt", cfg["mask"], 4)(4, (7, 7), att, gen(0))
    assert torch.equal(out.mask, expect.mask)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    student = [p for p in method.student.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in student) and any(p.grad.abs().sum() > 0 for p in student)
    assert all(p.grad is None for p in method.teacher.parameters())


# A refactoring guard: one step's loss of each default (seed 0, generator 0) as commit 36e5646, before importance
# sources existed, computed it on CPU. rel 1e-4 leaves room for another thread count's summation order; a change of
# behaviour (another mask, another token order) moves these by far more.
RECORDED = {"mst": 3.7142748832702637, "dino": 3.0971243381500244, "mae": 2.149582624435425,
            "simmim": 0.9347935318946838, "mae_amt": 2.231602430343628, "simmim_amt": 0.9383745789527893}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_default_steps_are_unchanged(name):
    method_name = {"dino": "mst", "mae_amt": "mae", "simmim_amt": "simmim"}.get(name, name)
    extra = {"dino": ["mask.strategy=none", "mst.decoder=none"],
             "mae_amt": [*AMT[:1], "amt.start=1", "amt.interval=1", "amt.batch_size=16"]}.get(name, [])
    if name == "simmim_amt":
        extra = ["amt.enabled=true", "amt.start=1", "amt.interval=1", "amt.batch_size=16"]
    torch.manual_seed(0)
    m = build_method(load_config(overrides=tiny_overrides(method_name) + extra)).train()
    epoch = 0
    if name.endswith("_amt"):
        m.masking.maps.bind(4)
        m.masking.maps.maps = torch.randint(0, 256, m.masking.maps.maps.shape, generator=gen(3), dtype=torch.uint8)
        epoch = 1
    out = step(m, views_for(m), epoch=epoch, generator=gen(0))
    assert out.loss.item() == pytest.approx(RECORDED[name], rel=1e-4, abs=0)


# -- every (method, strategy, importance source) from the registries --------------------------------------------
BASES = {  # (method, extra overrides)
    "mst": ("mst", []),
    "dino": ("mst", ["mst.decoder=none"]),  # plain DINO's head: the student may throw
    "mae": ("mae", []),
    "simmim": ("simmim", []),
}
KEY = re.compile(r"\b(mst|mim|mask|amt|model)\.[a-z_]+")


def combinations():
    for base in BASES:
        for strategy in MASKS.names():
            for source in IMPORTANCE.names():
                yield base, strategy, source
    for base in ("mae", "simmim"):  # AMT in MIM: its own section (from the first step here), with each source
        for source in IMPORTANCE.names():
            yield base, "amt.enabled", source


def overrides(base: str, strategy: str, source: str) -> list[str]:
    method, extra = BASES[base]
    out = tiny_overrides(method) + extra + [f"mask.importance={source}"]
    out += AMT if strategy == "amt.enabled" else [f"mask.strategy={strategy}"]
    if source == "maps" and method in ("mae", "simmim") and strategy != "amt.enabled":
        out += ["amt.enabled=true", "amt.start=1"]  # the maps exist with AMT; mask.strategy draws by them before amt.start
    return out


def test_every_combination_trains_or_is_refused_with_a_reason():
    trained, refused = set(), {}
    for base, strategy, source in combinations():
        try:
            cfg = load_config(overrides=overrides(base, strategy, source))
        except ConfigError as e:
            message = str(e)
            assert "\n" not in message and KEY.search(message), (base, strategy, source, message)
            refused[base, strategy, source] = message
            continue
        torch.manual_seed(0)
        method = build_method(cfg).train()
        if getattr(getattr(method, "masking", None), "maps", None) is not None:
            method.masking.maps.bind(2)
        out = step(method, views_for(method, b=2), generator=gen(0))
        assert torch.isfinite(out.loss), (base, strategy, source)
        out.loss.backward()
        assert any(p.grad is not None for p in method.parameters()), (base, strategy, source)
        trained.add((base, strategy, source))
    # what each axis gives, by hand
    assert {("mst", "attention", "teacher"), ("mst", "attmask", "teacher"), ("dino", "amt", "teacher"),
            ("dino", "none", "none"), ("mae", "attmask", "encoder"), ("mae", "patches", "none"),
            ("mae", "attmask", "maps"), ("simmim", "attmask", "encoder"), ("simmim", "attention", "encoder"),
            ("simmim", "blocks", "none"), ("mae", "amt.enabled", "maps"), ("mae", "amt.enabled", "encoder"),
            ("simmim", "amt.enabled", "encoder")} <= trained
    reasons = {
        ("mst", "amt", "teacher"): "mst.decoder='cnn' restores the whole view from every token",
        ("mst", "attmask", "none"): "mask.strategy='attmask' needs a per-token importance but mask.importance is none",
        ("mst", "attention", "maps"): "mask.importance='maps': method='mst' can take a per-token importance only "
                                      "from teacher",
        ("mae", "attmask", "teacher"): "mask.importance='teacher': method='mae' can take",
        ("mae", "attmask", "none"): "needs a per-token importance but mask.importance is none",
        ("mae", "random", "none"): "hides a different number of tokens in each image",
        ("mae", "amt", "encoder"): "set amt.enabled=true",
        ("simmim", "amt.enabled", "none"): "amt.enabled='amt' needs a per-token importance",
    }
    for combo, reason in reasons.items():
        assert reason in refused[combo], (combo, refused[combo])
    assert len(trained) + len(refused) == len(list(combinations()))


def test_maps_without_amt_and_throwing_on_swin_are_refused():
    with pytest.raises(ConfigError, match=r"^mask.importance='maps' reads AMT's stored per-image maps, which exist "
                                          r"only with amt.enabled=true"):
        load_config(overrides=tiny_overrides("mae") + ["mask.strategy=attmask", "mask.importance=maps"])
    swin = ["model.arch=swin_tiny", "model.depth=null", "model.img_size=64", "model.img_size=64",
            "augment.local_size=32", "mst.decoder=none", "mask.strategy=amt"]
    with pytest.raises(ConfigError, match=r"^mask.strategy='amt' throws tokens away, which model.arch='swin_tiny' cannot"):
        load_config(overrides=tiny_overrides("mst") + swin)
