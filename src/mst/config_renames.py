"""Old config key names read as their new ones (each field's ``old=``): in presets and checkpoints
(:func:`upgrade`) and in ``--set`` (:func:`_upgrade_overrides`), with a one-line :class:`RenamedKeyNotice`. Below
:mod:`mst.config`, so the checkpoint reader and the auto-resolution use it without importing the config loader."""
from __future__ import annotations

import copy
import warnings

from mst import settings
from mst.defaults import COMMON_SECTIONS, TOP
from mst.registry import ConfigError


class RenamedKeyNotice(UserWarning):
    """A config key given by its old name (read as the new one)."""


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value, e.g. optim.base_lr=1e-3")
    key, _, text = item.partition("=")
    return key.strip(), text


def upgrade(cfg: dict, where: str = "", notice: bool = False, fill: bool = False) -> dict:
    """``cfg`` (a nested dict: a preset, or a checkpoint's config) with every key given by an old name moved to the
    key that now holds it (:func:`mst.settings.old_names`), in place. ``notice``: one :class:`RenamedKeyNotice`
    line per key. A key set under both names, to different values, is a ConfigError naming both. ``fill`` (a
    checkpoint's resolved config): a key newer than it takes its default, which keeps the old behaviour."""
    for old, new in settings.old_names().items():
        osec, okey = old.split(".", 1)
        if not isinstance(cfg.get(osec), dict) or okey not in cfg[osec]:
            continue
        value = cfg[osec].pop(okey)
        if not cfg[osec] and osec not in COMMON_SECTIONS and osec not in TOP and osec not in settings.sections():
            del cfg[osec]  # an old section (head:, loss:) left empty
        nsec, nkey = new.split(".", 1)
        target = cfg.setdefault(nsec, {})
        if nkey in target and target[nkey] != value:
            raise ConfigError(f"{old}={value!r} and {new}={target[nkey]!r} in {where or 'the config'}: {old} is the "
                              f"old name of {new}; set only {new}")
        target[nkey] = value
        if notice:
            warnings.warn(f"config key '{old}' in {where} is now '{new}' (read as it)", RenamedKeyNotice,
                          stacklevel=3)
    if fill:
        for name, values in cfg.items():
            if isinstance(values, dict):
                for key, s in settings.specs(name).items():
                    values.setdefault(key, copy.deepcopy(s.default))
    return cfg


def _upgrade_overrides(items: list[str]) -> list[str]:
    """``--set old.key=v`` as ``--set new.key=v``, with a notice; one key set under both names, to different
    values, is a ConfigError naming both."""
    old = settings.old_names()
    out, given = [], {}  # given: new key -> (the name it was set by, its text)
    for item in items:
        key, text = _split_override(item)
        new = old.get(key, key)
        if key in old:
            warnings.warn(f"config key '{key}' in --set is now '{new}' (read as it)", RenamedKeyNotice,
                          stacklevel=3)
            item = f"{new}={text}"
        if new in given and given[new][0] != key and given[new][1].strip() != text.strip():
            names = {given[new][0]: given[new][1].strip(), key: text.strip()}
            was = next(n for n in names if n != new)
            raise ConfigError(f"{was}={names[was]} and {new}={names[new]} in --set: {was} is the old name of "
                              f"{new}; set only {new}")
        given[new] = (key, text)
        out.append(item)
    return out
