"""Type and range checks of config values: one ``ConfigError`` line naming the key, the value and what is allowed.

* Types (:func:`check_value`, called for every key by ``mst.config.check_types``): a key's value must have the
  type of its default (the common sections' in :mod:`mst.defaults`, a method section's where its owner declares it:
  ``Method.defaults``, ``Degradation.defaults``, or ``register_section``); :data:`TYPES` names the type where the default cannot (``None``,
  ``"auto"`` or an empty list). int keys take integers (an integral float such as 2.0 becomes 2), float keys
  numbers (ints become floats), bool keys true / false, str keys strings, list keys lists whose elements have the
  type of the default's. A key whose default is None (or listed in :data:`NULLABLE`) also takes null; a key in
  ``mst.config.AUTO_KEYS`` also takes ``"auto"``.
* Ranges (:data:`RANGES`, checked by :func:`check_range` after the types): which values make sense for a key.
  None (where null is allowed) and ``"auto"`` are not range-checked.

Keys in neither table are type-checked only. Choices (``optim.amp`` etc.) and registered names (``model.arch``,
``mst.mask``, ...) are checked by ``mst.config.validate`` and the registries, combinations of keys there and by
each method's ``validate``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from mst.registry import ConfigError

AUTO = "auto"


@dataclass(frozen=True)
class ListOf:
    """A list whose elements are ``item`` (int, float, bool, str; None: anything)."""

    item: type | None


# -------------------------------------------------------------------------------------------------------- types

# The type of keys whose default does not tell it: defaults None (these keys also take null), empty lists, and the
# keys of mst.config.AUTO_KEYS (whose default may become "auto"). A key here is checked against this type, not its
# default's.
TYPES: dict[str, type | ListOf] = {
    # default None
    "data.root": str,
    "data.subset": int,
    "data.classes": ListOf(int),
    "augment.rand_augment": str,
    "model.depth": int,
    "model.embed_dim": int,
    "model.num_heads": int,
    "mim.mask_patch_size": int,
    "mim.importance": str,
    "amt.mask_ratio": float,
    "amt.throw_ratio": float,
    "finetune.init": str,
    "model.init": str,
    "distill.teacher": str,
    "finetune.init_backbone": str,
    # default []
    "optim.lr_milestones": ListOf(int),
    # AUTO_KEYS (data-derived; their default may be "auto")
    "data.channels": int,
    "data.mean": ListOf(float),
    "data.std": ListOf(float),
    "model.img_size": int,
    "model.patch_size": int,
    "model.arch": str,
    "augment.global_size": int,
    "augment.local_size": int,
    "mst.decoder_channels": ListOf(int),
    "optim.epochs": int,
    "optim.batch_size": int,
    "optim.base_lr": float,
}

# keys whose default is not None that also take null
NULLABLE = {
    "log.knn_train_subset",  # null: the whole train split
    "log.knn_test_subset",  # null: the whole test split
}


def _kind(default: Any) -> type | ListOf | None:
    """The type a default stands for (None: unknown, anything goes)."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, (list, tuple)):
        kinds = {_kind(v) for v in default}
        if kinds == {int, float}:
            return ListOf(float)
        return ListOf(kinds.pop() if len(kinds) == 1 else None)
    return None


def expected_type(key: str, default: Any, auto_keys=frozenset()) -> type | ListOf | None:
    """The type ``key`` takes (None: unchecked): :data:`TYPES`' entry, else its default's. An ``"auto"`` default
    of a key in ``auto_keys`` with no entry tells nothing."""
    if key in TYPES:
        return TYPES[key]
    if default == AUTO and key in auto_keys:
        return None
    return _kind(default)


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "booleans (true / false)", str: "strings"}


def _describe(kind: type | ListOf, nullable: bool, auto: bool) -> str:
    text = f"a list of {_PLURAL[kind.item]}" if isinstance(kind, ListOf) and kind.item else (
        "a list" if isinstance(kind, ListOf) else _NAMES[kind])
    extra = (["null"] if nullable else []) + (["'auto'"] if auto else [])
    return " or ".join([", ".join([text] + extra[:-1])] + extra[-1:]) if extra else text


def show(value: Any) -> str:
    """A value as messages show it: YAML's null / true / false, else Python's repr."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class _Bad(Exception):
    pass


def _number_text(value: str) -> float:
    """'1e-3' (YAML 1.1 reads it as a string) -> 0.001; anything else that is not a number -> _Bad."""
    try:
        return float(value)
    except ValueError:
        raise _Bad from None


def _convert(kind: type | None, value: Any) -> Any:
    """``value`` as ``kind`` (int, float, bool, str; None: as it is), or raise _Bad."""
    if kind is None:
        return value
    if kind is bool or kind is str:
        if not isinstance(value, kind):
            raise _Bad
        return value
    if isinstance(value, str):
        value = _number_text(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad
    if isinstance(value, float) and not math.isfinite(value):
        raise _Bad
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise _Bad
            return int(value)
        return value
    return float(value)


def check_value(key: str, value: Any, default: Any, auto_keys=frozenset()) -> Any:
    """``value`` of ``key`` converted to the key's type (ints of float keys become floats, integral floats of int
    keys ints, '1e-3' a number); a ConfigError naming the key, the value, the type and the default if it has
    another type."""
    kind = expected_type(key, default, auto_keys)
    nullable = default is None or key in NULLABLE
    auto = key in auto_keys
    if kind is None or (value is None and nullable) or (value == AUTO and auto):
        return value
    try:
        if isinstance(kind, ListOf):
            if not isinstance(value, (list, tuple)):
                raise _Bad
            return [_convert(kind.item, v) for v in value]
        return _convert(kind, value)
    except _Bad:
        # "auto" is named where it is the default (elsewhere it is accepted, but not advertised)
        what = _describe(kind, nullable, auto and default == AUTO)
        if kind in (int, float) and isinstance(value, float) and not math.isfinite(value):
            what = f"a finite {'integer' if kind is int else 'number'}"
        raise ConfigError(f"{key}={show(value)} must be {what} (default {show(default)})") from None


# ------------------------------------------------------------------------------------------------------- ranges

def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Range:
    """lo <= x <= hi (either end open or absent)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x: float) -> bool:
        if self.lo is not None and not (x > self.lo if self.lo_open else x >= self.lo):
            return False
        if self.hi is not None and not (x < self.hi if self.hi_open else x <= self.hi):
            return False
        return True

    def __str__(self) -> str:  # "> 0", ">= 1", "in [0, 1)"
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        return f"in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}{')' if self.hi_open else ']'}"

    def check(self, key: str, value: Any) -> str | None:
        if value in self:
            return None
        return f"must {'lie' if self.lo is not None and self.hi is not None else 'be'} {self}"


@dataclass(frozen=True)
class Each:
    """A list of ``n`` numbers (any number if None), each in ``range``; ``ordered``: a [low, high] pair."""

    range: Range
    n: int | None = None
    ordered: bool = False
    what: str = ""  # what the elements are, e.g. "global 1, global 2, locals"

    def check(self, key: str, value: list) -> str | None:
        if (self.n is None or len(value) == self.n) and all(v in self.range for v in value) and not (
                self.ordered and value[0] > value[1]):
            return None
        count = {None: "a list of numbers", 2: "two numbers", 3: "three numbers", 4: "four numbers"}.get(
            self.n, f"{self.n} numbers")
        what = f" ({self.what})" if self.what else ""
        if self.ordered:
            return f"must be {count} [low, high] with low <= high{what}, each {self.range}"
        return f"must be {count}{what}, each {self.range}"


@dataclass(frozen=True)
class Rule:
    """Anything else: ``test(value)`` holds, else the message ``must ...``."""

    test: Callable[[Any], bool]
    must: str

    def check(self, key: str, value: Any) -> str | None:
        return None if self.test(value) else f"must {self.must}"


POSITIVE = Range(0, lo_open=True)  # > 0
NON_NEGATIVE = Range(0)  # >= 0
AT_LEAST_1 = Range(1)  # >= 1 (counts, sizes)
PROBABILITY = Range(0, 1)  # [0, 1]
RATIO = Range(0, 1, hi_open=True)  # [0, 1)
SCALE = Each(Range(0, 1, lo_open=True), n=2, ordered=True)  # a crop's share of the image: 0 < low <= high <= 1
SIGMA = Each(POSITIVE, n=2, ordered=True)  # a blur's sigma range: 0 < low <= high

# Every key with a sensible range (keys of all sections; a section the method does not read is not checked). Keys
# missing here: seeds, names and choices (checked against their registries / options), booleans, data.mean.
RANGES: dict[str, Range | Each | Rule] = {
    # data
    "data.subset": AT_LEAST_1,
    "data.channels": AT_LEAST_1,
    "data.num_workers": NON_NEGATIVE,
    "data.holdout": Range(0, 1, lo_open=True, hi_open=True),
    "data.val_share": Range(0, 1, hi_open=True),
    "data.std": Each(POSITIVE),
    # augment
    "augment.global_size": AT_LEAST_1,
    "augment.local_size": AT_LEAST_1,
    "augment.n_local": NON_NEGATIVE,
    "augment.global_scale": SCALE,
    "augment.local_scale": SCALE,
    "augment.flip_p": PROBABILITY,
    "augment.color_jitter": Rule(lambda v: len(v) == 4 and all(x >= 0 for x in v) and v[3] <= 0.5,
                                 "be four numbers >= 0 (brightness, contrast, saturation, hue), hue <= 0.5"),
    "augment.color_jitter_p": PROBABILITY,
    "augment.grayscale_p": PROBABILITY,
    "augment.blur_p": Each(PROBABILITY, n=3, what="global 1, global 2, locals"),
    "augment.blur_sigma": SIGMA,
    "augment.solarize_p": PROBABILITY,
    # model
    "model.patch_size": AT_LEAST_1,
    "model.img_size": AT_LEAST_1,
    "model.depth": AT_LEAST_1,
    "model.embed_dim": AT_LEAST_1,
    "model.num_heads": AT_LEAST_1,
    "model.drop_path": RATIO,
    # optim
    "optim.epochs": AT_LEAST_1,
    "optim.batch_size": AT_LEAST_1,
    "optim.base_lr": POSITIVE,
    "optim.min_lr": NON_NEGATIVE,
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.lr_milestones": Each(NON_NEGATIVE),
    "optim.lr_gamma": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.layer_decay": Range(0, 1, lo_open=True),
    "optim.freeze_blocks": Range(-1),
    "optim.freeze_epochs": NON_NEGATIVE,
    "optim.weight_decay_end": NON_NEGATIVE,
    "optim.betas": Each(RATIO, n=2),
    "optim.clip_grad": NON_NEGATIVE,
    # log
    "log.every": AT_LEAST_1,
    "log.knn_every": NON_NEGATIVE,
    "log.knn_train_subset": AT_LEAST_1,
    "log.knn_test_subset": AT_LEAST_1,
    "log.knn_k": AT_LEAST_1,
    "log.checkpoint_every_steps": NON_NEGATIVE,
    # dino
    "dino.out_dim": AT_LEAST_1,
    "dino.hidden_dim": AT_LEAST_1,
    "dino.bottleneck_dim": AT_LEAST_1,
    "dino.nlayers": AT_LEAST_1,
    "dino.teacher_temp": POSITIVE,
    "dino.warmup_teacher_temp": POSITIVE,
    "dino.warmup_teacher_temp_epochs": NON_NEGATIVE,
    "dino.student_temp": POSITIVE,
    "dino.center_momentum": PROBABILITY,
    "dino.momentum_teacher": PROBABILITY,
    "dino.freeze_last_layer": NON_NEGATIVE,
    "dino.sinkhorn_iters": AT_LEAST_1,
    "dino.koleo_weight": NON_NEGATIVE,
    # mst
    "mst.mask_num": AT_LEAST_1,
    "mst.mask_p": PROBABILITY,
    "mst.decoder_channels": Each(AT_LEAST_1),
    "mst.ce_weight": NON_NEGATIVE,
    "mst.restore_weight": NON_NEGATIVE,
    # mim
    "mim.mask_ratio": RATIO,
    "mim.mask_patch_size": AT_LEAST_1,
    # degrade.*: checked by each degradation's constructor (MAE.validate builds every registered one)
    "augment.eval_crop": Range(0, 1, lo_open=True),
    "augment.pad": NON_NEGATIVE,
    # amt (mask_ratio, throw_ratio, order: checked by mst.masking.AMTSpec, the one place that resolves them)
    "amt.start": NON_NEGATIVE,
    "amt.interval": AT_LEAST_1,
    "amt.batch_size": AT_LEAST_1,
    # mae
    "mae.decoder_dim": AT_LEAST_1,
    "mae.decoder_depth": AT_LEAST_1,
    "mae.decoder_heads": AT_LEAST_1,
    # finetune
    "finetune.num_classes": Range(2),
    "finetune.layer_decay": Range(0, 1, lo_open=True),
    "finetune.label_smoothing": PROBABILITY,
    "finetune.mixup": NON_NEGATIVE,
    "finetune.cutmix": NON_NEGATIVE,
    "finetune.mixup_prob": PROBABILITY,
    "finetune.mixup_switch_prob": PROBABILITY,
    "finetune.reprob": PROBABILITY,
}


def check_range(key: str, value: Any) -> None:
    """A ConfigError if ``value`` (already of the key's type) is outside the key's range in :data:`RANGES`; null and
    ``"auto"`` pass."""
    rule = RANGES.get(key)
    if rule is None or value is None or value == AUTO:
        return
    problem = rule.check(key, value)
    if problem:
        raise ConfigError(f"{key}={show(value)} {problem}")
