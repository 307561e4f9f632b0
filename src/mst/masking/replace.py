"""How masked tokens are filled in (MST eq. 6 and Table 10).

- ``learned``: every masked token becomes the learnable [MASK] embedding (MST's choice).
- ``bert``: of the masked tokens, 80 % become [MASK], 10 % a random token of the same batch, 10 % stay unchanged
  (BERT's recipe, Table 10 row 3).
"""
from __future__ import annotations

import torch

REPLACEMENTS = ("learned", "bert")


def replace_tokens(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    mask_token: torch.Tensor,
    style: str = "learned",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """tokens (B, N, D), mask (B, N) bool, mask_token (1, 1, D) -> tokens with masked positions replaced."""
    if mask.shape != tokens.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match tokens {tuple(tokens.shape[:2])}")
    mask = mask.to(device=tokens.device, dtype=torch.bool)
    fill = mask_token.to(tokens.dtype).expand_as(tokens)
    if style == "learned":
        return torch.where(mask.unsqueeze(-1), fill, tokens)
    if style != "bert":
        raise ValueError(f"mask.replacement={style!r} is not one of {', '.join(REPLACEMENTS)}")
    b, n, d = tokens.shape
    u = torch.rand(b, n, generator=generator, device=generator.device if generator else tokens.device)
    u = u.to(tokens.device)
    use_mask = mask & (u < 0.8)
    use_random = mask & (u >= 0.8) & (u < 0.9)
    # a random token: any patch embedding of any image in the batch (BERT: a random vocabulary word)
    idx = torch.randint(0, b * n, (b, n), generator=generator, device=generator.device if generator else tokens.device)
    random_tokens = tokens.reshape(b * n, d)[idx.to(tokens.device).reshape(-1)].reshape(b, n, d)
    out = torch.where(use_random.unsqueeze(-1), random_tokens, tokens)
    return torch.where(use_mask.unsqueeze(-1), fill, out)
