"""What the engine knows of a method, and the method registry.

A :class:`Method` is an ``nn.Module`` holding everything its step trains or reads (student, teacher, decoder, loss
state). The engine builds it from the config, feeds ``forward(batch, ctx)`` one :class:`~mst.data.batch.Batch`
per step and gets a :class:`StepOutput` back; around that it owns everything generic: data, schedules, AMP,
clipping, the optimizer, EMA over the pairs the method names, checkpoints, resume, DDP, logs, the NaN stop.

A method says:

* ``sections``: the config sections it reads besides the common ones (``load_config`` adds their defaults);
* its sections' keys: a frozen dataclass per section beside it (``class MSTSettings(Settings, section="mst")``,
  :mod:`mst.settings`), or ``defaults`` ({section: {key: default}}) for a quick method of one's own;
* ``views``: ``multicrop`` or ``single`` (see :mod:`mst.data.pipeline`); ``needs_labels`` for supervised methods;
* ``validate(cfg)``: its own config checks (raise :class:`~mst.registry.ConfigError` naming the key);
* ``schedules``: per-iteration values it needs besides lr / wd (e.g. the teacher momentum);
* ``ema_pairs``: (online, averaged) module pairs the engine updates with the ``momentum`` schedule;
* ``backbones``: which backbone(s) evaluation and export use, as state-dict prefixes, and ``default_backbone``;
* ``importance_sources``: where it can take a mask strategy's per-token importance from (see
  :mod:`mst.methods.importance`);
* ``changed_defaults``: for a variant of another method (a subclass reading the same sections), the keys of those
  sections whose default it changes (``dino``: MST with ``mask.strategy`` and ``mst.decoder`` none), and ``trains_as``:
  the method it then trains exactly as, given the same resolved sections (``dino``: ``mst``).

Register with ``METHODS.register("name", cls)``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mst.data.batch import Batch
from mst.defaults import add_section
from mst.settings import Config, specs
from mst.figures import Panel
from mst.registry import Registry

METHODS: Registry = Registry("method", "method")


@dataclass
class StepOutput:
    loss: torch.Tensor  # what backward() is called on
    metrics: dict[str, float]  # every term, for the logs ("loss" included)
    mask: torch.Tensor | None = None  # (B', N) bool tokens hidden this step, for inspection and tests


@dataclass
class StepContext:
    epoch: int
    step: int  # global step
    values: dict[str, float] = field(default_factory=dict)  # this step's schedule values (lr, wd, momentum, ...)
    generator: torch.Generator | None = None  # for mask draws; None: torch's global generator (reseeded per step)


@dataclass
class EpochData:
    """What a method may use at an epoch boundary (AMT's attention pass): the un-augmented training images."""

    dataset: Any  # (PIL image, label) dataset, positions = Batch.index
    device: torch.device
    rank: int = 0
    world_size: int = 1
    log: Any = print


class Method(nn.Module, metaclass=abc.ABCMeta):
    sections: ClassVar[tuple[str, ...]] = ()
    views: ClassVar[str] = "single"
    needs_labels: ClassVar[bool] = False
    backbones: ClassVar[dict[str, str]] = {}  # name -> state_dict prefix of a backbone (its ``vit.`` inside)
    default_backbone: ClassVar[str] = ""
    # optim.base_lr=auto (method-agnostic presets): the lr (x global batch / 256) measured to learn in ~1500 steps
    small_budget_base_lr: ClassVar[float] = 1.5e-3
    # the importance sources (mst.methods.importance.IMPORTANCE) the method can feed a mask strategy
    importance_sources: ClassVar[tuple[str, ...]] = ()
    # a section declared as a plain {key: default} mapping (a method defined outside the package; the built-in ones
    # declare theirs as dataclasses of mst.settings beside the method, e.g. MSTSettings)
    defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # keys of sections it reads whose default differs for this method (a variant: {section: {key: default}}), laid
    # over the sections' defaults by mst.config.defaults_for; the sections themselves stay their owner's
    changed_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # a registered method this one trains exactly as, given the same resolved config (DINO: "mst"); a run may
    # switch between the two names (a resume, an ablation's rerun) without being refused (see same_training)
    trains_as: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        owner = f"{cls.__module__}.{cls.__qualname__}"
        for name, section in cls.__dict__.get("defaults", {}).items():
            add_section(name, section, owner)
        for name, changes in cls.__dict__.get("changed_defaults", {}).items():
            if name not in cls.sections:
                raise ValueError(f"{owner} changes defaults of config section {name!r}, which it does not read")
            unknown = sorted(set(changes) - set(specs(name) or changes))
            if unknown:
                raise ValueError(f"{owner} changes the default of {', '.join(f'{name}.{k}' for k in unknown)}, "
                                 f"not a key of section {name!r}")

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.cfg = cfg  # the resolved mapping: what checkpoints save
        self.settings = Config.of(cfg)  # the same, typed: what the method reads (self.settings.mask.p)

    @classmethod
    def validate(cls, cfg: dict) -> None:
        """Method-specific config checks; raise ConfigError naming the key and the valid values."""

    @abc.abstractmethod
    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        """One step's loss and metrics from a batch, top to bottom like the paper's algorithm."""

    # -- engine hooks (defaults: nothing) ---------------------------------------------------------------------
    def schedules(self, iters_per_epoch: int, epochs: int) -> dict[str, np.ndarray]:
        """Per-iteration values besides lr and wd (arrays of length epochs * iters_per_epoch)."""
        return {}

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, averaged) pairs, updated after every optimizer step with the ``momentum`` schedule."""
        return []

    def no_weight_decay_names(self) -> tuple[str, ...]:
        """Name suffixes of parameters besides biases and 1-d ones that get no weight decay (SimMIM: pos_embed,
        cls_token, as its reference)."""
        return ()

    def param_groups(self) -> list[dict]:
        """Optimizer groups: weight decay on weight matrices only (biases, norms, 1-d parameters and
        :meth:`no_weight_decay_names` get none)."""
        decay, no_decay = [], []
        skip = self.no_weight_decay_names()
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if name.endswith(".bias") or p.ndim <= 1 or (skip and name.endswith(skip)) else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "no_weight_decay": True}]

    def checkpoint_info(self) -> dict:
        """Extra entries for checkpoints (e.g. a classifier's head, for export)."""
        return {}

    def after_backward(self, ctx: StepContext) -> None:
        """After gradients exist (unscaled, clipped), before the optimizer step (e.g. freeze a layer)."""

    def on_epoch_start(self, epoch: int, data: EpochData) -> dict[str, float]:
        """At the start of every epoch (also a resumed one); returns metrics to log (e.g. a refresh's cost)."""
        return {}

    # -- evaluation ---------------------------------------------------------------------------------------------
    def eval_backbone(self, which: str | None = None) -> nn.Module:
        """The backbone evaluation uses (``which`` in ``backbones``; default ``default_backbone``)."""
        which = which or self.default_backbone
        prefix = self.backbones[which]
        return self.get_submodule(prefix.rstrip(".")) if prefix else self

    def panels(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[list[Panel]]:
        """Per image, what the method does to it (masks, reconstruction), for ``mst visualize``. Default: none."""
        return [[] for _ in range(len(images))]


def same_training(a: str, b: str) -> bool:
    """Whether methods ``a`` and ``b`` train alike on the same resolved sections: the same name, or one's
    ``trains_as`` names the other or both name the same (``dino`` and ``mst``). Unregistered names: equality."""
    def base(name: str) -> str:
        return (METHODS.get(name).trains_as or name) if name in METHODS else name

    return a == b or base(a) == base(b)


def build_method(cfg: dict) -> Method:
    """The method ``cfg['method']`` built from a resolved config."""
    return METHODS.get(cfg["method"])(cfg)


def load_method(ckpt: str, device: str | torch.device = "cpu") -> Method:
    """The method of a checkpoint (run directory or file) with its trained weights, in eval mode."""
    from mst.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)
    method = build_method(state["config"])
    method.load_state_dict(state["method"])
    return method.to(device).eval()
