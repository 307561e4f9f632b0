import math

import pytest
import torch

from mst.masking import AttentionGuidedMask, RandomMask, build_mask_strategy, low_attention_candidates, replace_tokens


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
        res = strat(16, 196, att, g)
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
    res = AttentionGuidedMask(num, p)(n_img, n_tok, torch.rand(n_img, n_tok, generator=g), g)
    rate = res.mask.float().mean().item()
    expect = p * (n_tok // num) / n_tok  # = p / num here
    sd = math.sqrt(expect * (1 - expect) / (n_img * n_tok))
    assert abs(rate - expect) < 5 * sd
    assert expect == pytest.approx(p / num)


def test_random_mask_rate_matches_p():
    g = torch.Generator().manual_seed(3)
    res = RandomMask(0.15)(1000, 49, None, g)
    rate = res.mask.float().mean().item()
    sd = math.sqrt(0.15 * 0.85 / 49000)
    assert abs(rate - 0.15) < 5 * sd


def test_none_strategy_and_registry():
    assert build_mask_strategy({"strategy": "none", "num": 8, "p": 0.1})(4, 9, None, None) is None
    with pytest.raises(ValueError, match="mask.strategy='blocks'"):
        build_mask_strategy({"strategy": "blocks", "num": 8, "p": 0.1})
    with pytest.raises(ValueError, match="CLS attention"):
        AttentionGuidedMask()(2, 9, None, None)


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
