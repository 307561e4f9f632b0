"""The DINO projection head: 3-layer MLP -> L2-normalised bottleneck -> weight-normed prototype layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """MLP (``nlayers`` linear layers, GELU, hidden ``hidden_dim``) to ``bottleneck_dim``, L2-normalise, then a
    bias-free weight-normalised linear layer to ``out_dim`` logits.

    ``use_bn`` adds BatchNorm after each hidden linear layer (MST Table 6). Its running statistics must come
    from the global views only: the training step calls the head on the global views first and on the local crops
    under :func:`mst.models.bn.frozen_bn_stats`.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"head nlayers must be >= 1, got {nlayers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(nlayers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.apply(self._init)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        # With norm_last_layer the magnitude g stays 1: only directions of the prototypes are learnt.
        self.last_layer.parametrizations.weight.original0.requires_grad = not norm_last_layer

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


def cancel_last_layer_grads(model: nn.Module, epoch: int, freeze_epochs: int) -> None:
    """During the first ``freeze_epochs`` epochs the prototypes (head.last_layer) do not move (DINO)."""
    if epoch >= freeze_epochs:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None
