"""The teacher as an exponential moving average of the student (eq. 1), over parameters matched by name."""
from __future__ import annotations

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


class TeacherEMA:
    """theta_t <- m theta_t + (1 - m) theta_s for every teacher parameter, paired with the student parameter of the
    same name. Student-only modules ([MASK] token, decoder) have no teacher twin and are never read; a teacher
    parameter without a student twin is an error at construction."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        s_params = dict(unwrap(student).named_parameters())
        self.names: list[str] = []
        self.t_params: list[torch.Tensor] = []
        self.s_params: list[torch.Tensor] = []
        for name, tp in unwrap(teacher).named_parameters():
            if name not in s_params:
                raise KeyError(f"teacher parameter {name!r} has no student parameter of the same name")
            if s_params[name].shape != tp.shape:
                raise ValueError(f"shape mismatch for {name!r}: {tuple(s_params[name].shape)} vs {tuple(tp.shape)}")
            self.names.append(name)
            self.t_params.append(tp)
            self.s_params.append(s_params[name])

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        t = [p.data for p in self.t_params]
        s = [sp.data.to(tp.dtype) for sp, tp in zip(self.s_params, self.t_params)]
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, s, alpha=1.0 - momentum)
