import math

import pytest
import torch

from mst.masking import (
    MASKS, AttentionGuidedMask, PatchRatioMask, RandomMask, build_mask_strategy, low_attention_candidates,
    replace_tokens,
)
from mst.registry import ConfigError


def test_candidates_are_the_lowest_fraction():
    g = torch.Generator().manual_seed(0)
    att = torch.rand(32, 49, generator=g)
    cand = low_attention_candidates(att, 8)
    assert (cand.sum(1) == 49 // 8).all()
    for i in range(32):
        lowest = torch.argsort(att[i])[: 49 // 8]
        assert set(lowest.tolist()) == set(torch.nonzero(cand[i]).flatten().tolist())


def test_attention_mask_never_touches_tokens_above_threshold():
    g = torch.Generator().manual_seed(1)
    strat = AttentionGuidedMask(num=4, p=0.9)
    for _ in range(20):
        att = torch.rand(16, 196, generator=g).softmax(-1)
        res = strat(16, (14, 14), att, g)
        # threshold tau: the (N/num)-th smallest attention of each image
        tau = torch.sort(att, dim=1).values[:, 196 // 4 - 1 : 196 // 4]
        assert not (res.mask & (att > tau)).any()
        assert (res.mask <= res.candidates).all()
        # the highest-attention token is never masked
        top = att.argmax(1)
        assert not res.mask[torch.arange(16), top].any()


def test_attention_mask_rate_matches_p_over_num():
    g = torch.Generator().manual_seed(2)
    n_img, n_tok, num, p = 2000, 64, 8, 0.1
    res = AttentionGuidedMask(num, p)(n_img, (8, 8), torch.rand(n_img, n_tok, generator=g), g)
    rate = res.mask.float().mean().item()
    expect = p * (n_tok // num) / n_tok  # = p / num here
    sd = math.sqrt(expect * (1 - expect) / (n_img * n_tok))
    assert abs(rate - expect) < 5 * sd
    assert expect == pytest.approx(p / num)


def test_random_mask_rate_matches_p():
    g = torch.Generator().manual_seed(3)
    res = RandomMask(0.15)(1000, (7, 7), None, g)
    rate = res.mask.float().mean().item()
    sd = math.sqrt(0.15 * 0.85 / 49000)
    assert abs(rate - 0.15) < 5 * sd


def test_none_strategy_and_registry():
    assert build_mask_strategy("none", {}, 4)(4, (3, 3), None, None) is None
    with pytest.raises(ConfigError, match="mask.strategy='block' is not a registered mask strategy"):
        build_mask_strategy("block", {}, 4, "mask.strategy")
    with pytest.raises(ConfigError, match=r"^mask strategy 'blocks' reads mask.ratio, which no strategy declares "
                                          r"\(the mask section has p\)"):
        build_mask_strategy("blocks", {"p": 0.1}, 4)
    with pytest.raises(ValueError, match="CLS attention"):
        AttentionGuidedMask()(2, (3, 3), None, None)


# every registered strategy keeps the MaskResult contract (timm-style: one test over the registry)
SECTION = {"p": 0.3, "num": 4, "ratio": 0.6, "unit": 8, "throw_ratio": 0.2}


@pytest.mark.parametrize("name", MASKS.names())
def test_every_registered_strategy_keeps_the_contract(name):
    g = torch.Generator().manual_seed(7)
    strategy = build_mask_strategy(name, SECTION, 4)
    importance = torch.rand(6, 64, generator=torch.Generator().manual_seed(1))
    res = strategy(6, (8, 8), importance if strategy.needs_importance else None, g)
    if res is None:
        return
    assert res.mask.shape == (6, 64) and res.mask.dtype == torch.bool
    if res.keep is not None:
        assert res.keep.dtype == torch.bool and not (res.keep & res.mask).any()  # visible tokens are not hidden
        seq = res.keep | res.mask
        assert (seq.sum(1) == seq.sum(1)[0]).all()  # exact counts: token subsets batch
    assert strategy.throws == bool(res.thrown.any())
    again = strategy(6, (8, 8), importance if strategy.needs_importance else None,
                     torch.Generator().manual_seed(7))
    assert torch.equal(again.mask, res.mask)  # the generator decides everything


def test_mae_patch_mask_keeps_exactly_int_n_times_1_minus_r():
    g = torch.Generator().manual_seed(8)
    for n_side, ratio in ((7, 0.75), (14, 0.75), (7, 0.5), (4, 0.9)):
        res = PatchRatioMask(ratio)(50, (n_side, n_side), None, g)
        n = n_side * n_side
        visible = int(n * (1 - ratio))
        assert ((~res.mask).sum(1) == visible).all() and res.keep is None
    # uniform over positions: every token is visible about as often
    res = PatchRatioMask(0.75)(20000, (7, 7), None, g)
    freq = (~res.mask).float().mean(0)
    assert torch.allclose(freq, torch.full((49,), 12 / 49), atol=0.02)


def test_simmim_block_mask_masks_whole_units_ceil_count():
    g = torch.Generator().manual_seed(9)
    # a 14x14 token grid with 2x2-token units (SimMIM's 32 px units of 16 px patches): 49 units, ceil(0.6*49) = 30
    strategy = build_mask_strategy("blocks", {"ratio": 0.6, "unit": 32}, 16)
    res = strategy(10, (14, 14), None, g)
    m = res.mask.reshape(10, 7, 2, 7, 2)
    assert (m == m[:, :, :1, :, :1]).all()  # constant inside every unit
    assert (m[:, :, 0, :, 0].sum((1, 2)) == math.ceil(0.6 * 49)).all()
    assert (res.mask.sum(1) == 30 * 4).all()
    with pytest.raises(ValueError, match="not a multiple of model.patch_size=16"):
        build_mask_strategy("blocks", {"ratio": 0.6, "unit": 24}, 16)
    with pytest.raises(ValueError, match="not divisible by the mask unit of 2 tokens"):
        strategy(1, (7, 7), None, g)


def test_learned_replacement_exact():
    tokens = torch.randn(4, 10, 6)
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[0, 3] = mask[2, 0] = mask[2, 9] = True
    mt = torch.randn(1, 1, 6)
    out = replace_tokens(tokens, mask, mt, "learned")
    assert torch.equal(out[mask], mt[0].expand(3, 6))
    assert torch.equal(out[~mask], tokens[~mask])


def test_bert_replacement_statistics():
    g = torch.Generator().manual_seed(4)
    b, n, d = 200, 100, 8
    tokens = torch.randn(b, n, d, generator=g)
    mt = torch.full((1, 1, d), 7.0)  # distinguishable from any N(0,1) token
    mask = torch.rand(b, n, generator=g) < 0.5
    out = replace_tokens(tokens, mask, mt, "bert", generator=g)
    assert torch.equal(out[~mask], tokens[~mask])
    m_out, m_in = out[mask], tokens[mask]
    is_mask = (m_out == 7.0).all(-1)
    unchanged = (m_out == m_in).all(-1)
    other = ~is_mask & ~unchanged
    total = mask.sum().item()
    for frac, expect in ((is_mask, 0.8), (other, 0.1), (unchanged, 0.1)):
        sd = math.sqrt(expect * (1 - expect) / total)
        assert abs(frac.float().mean().item() - expect) < 5 * sd + 1e-3
    # "random" tokens are real tokens of the batch
    flat = tokens.reshape(-1, d)
    for v in m_out[other][:20]:
        assert (flat == v).all(-1).any()
