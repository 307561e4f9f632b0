"""Mask strategies: which patch tokens of a student's global view to degrade.

Every strategy maps (batch size, token grid, optional teacher importance) to a :class:`MaskResult`. ``mask`` marks
tokens replaced in the student's input (MST, BERT); ``keep`` is reserved for strategies that *throw tokens away*
(AMT), where dropped tokens leave the encoder, decoder and loss. Register a new strategy with
:func:`register` and select it with ``mask.strategy`` in the config.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class MaskResult:
    mask: torch.Tensor  # (B, N) bool: True = replaced by [MASK] (or the BERT mix)
    keep: torch.Tensor | None = None  # (B, N) bool: False = thrown away (not used by MST itself)
    candidates: torch.Tensor | None = None  # (B, N) bool: tokens that were allowed to be masked


class MaskStrategy(abc.ABC):
    """Base class. ``needs_attention`` tells the training step to capture the teacher's CLS attention."""

    needs_attention = False

    @abc.abstractmethod
    def __call__(
        self, batch: int, num_tokens: int, importance: torch.Tensor | None, generator: torch.Generator | None
    ) -> MaskResult | None:
        """Return the mask for ``batch`` images of ``num_tokens`` tokens, or None for "no masking"."""


class NoMask(MaskStrategy):
    """Plain DINO: the student sees every token."""

    def __call__(self, batch, num_tokens, importance, generator):
        return None


def _bernoulli(shape: tuple[int, int], p: float, generator: torch.Generator | None, device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return (torch.rand(shape, generator=generator, device=gen_device) < p).to(device)


class RandomMask(MaskStrategy):
    """BERT-style (eq. 3): each token independently masked with probability ``p``."""

    def __init__(self, p: float = 0.15) -> None:
        self.p = float(p)

    def __call__(self, batch, num_tokens, importance, generator):
        device = importance.device if importance is not None else torch.device("cpu")
        return MaskResult(mask=_bernoulli((batch, num_tokens), self.p, generator, device))


def low_attention_candidates(importance: torch.Tensor, num: int) -> torch.Tensor:
    """Per image, the floor(N / num) tokens with the lowest attention (Algorithm 1's threshold tau).

    Ties are broken by a stable sort on position, so exactly floor(N / num) tokens are candidates and a token with
    higher attention than any non-candidate is never one.
    """
    b, n = importance.shape
    k = n // int(num)
    order = torch.sort(importance, dim=1, stable=True).indices
    cand = torch.zeros(b, n, dtype=torch.bool, device=importance.device)
    if k > 0:
        cand.scatter_(1, order[:, :k], True)
    return cand


class AttentionGuidedMask(MaskStrategy):
    """MST (eq. 5, Algorithm 1): the lowest-attention 1/num tokens are candidates; each is masked with
    probability ``p``. The highest-attention tokens are never masked."""

    needs_attention = True

    def __init__(self, num: int = 8, p: float = 0.1) -> None:
        self.num = int(num)
        self.p = float(p)

    def __call__(self, batch, num_tokens, importance, generator):
        if importance is None:
            raise ValueError("the attention-guided mask needs the teacher's CLS attention")
        if importance.shape != (batch, num_tokens):
            raise ValueError(f"importance shape {tuple(importance.shape)} != ({batch}, {num_tokens})")
        cand = low_attention_candidates(importance, self.num)
        draw = _bernoulli((batch, num_tokens), self.p, generator, importance.device)
        return MaskResult(mask=cand & draw, candidates=cand)


_REGISTRY: dict[str, Callable[[dict], MaskStrategy]] = {
    "none": lambda cfg: NoMask(),
    "random": lambda cfg: RandomMask(cfg["p"]),
    "attention": lambda cfg: AttentionGuidedMask(cfg["num"], cfg["p"]),
}


def register(name: str, factory: Callable[[dict], MaskStrategy]) -> None:
    """Make ``mask.strategy: name`` build ``factory(mask_cfg)``."""
    _REGISTRY[name] = factory


def build_mask_strategy(mask_cfg: dict) -> MaskStrategy:
    name = mask_cfg["strategy"]
    if name not in _REGISTRY:
        raise ValueError(f"mask.strategy={name!r} is not one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](mask_cfg)
