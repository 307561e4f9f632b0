"""Configuration: defaults, YAML presets and ``--set key=value`` overrides, validated against the settings' fields.

A resolved config holds the common sections (``data``, ``augment``, ``model``, ``optim``, ``log``) and the sections
of its ``method`` only (e.g. ``dino`` + ``mst`` for MST, ``mim`` + ``mae`` + ``amt`` for MAE). A key in no section,
or a section the method does not use, is an error naming the closest valid keys, so a typo never silently falls
back to a default. A key's old name (``augment.global_size``, ``head.out_dim``) is read as its new one with a
one-line notice.

Every fact about a key — default, type, range, choices, ``auto``, resumable, old names — is on its field
(:mod:`mst.settings`); every problem (a bad value, a YAML error, an impossible combination) is one ConfigError line
naming the key.
"""
from __future__ import annotations

import copy
import difflib
import warnings
from pathlib import Path
from typing import Any

import yaml

from mst import settings
from mst.autoconfig import is_auto
from mst.config_checks import check_range, check_value
from mst.config_renames import RenamedKeyNotice, _split_override, _upgrade_overrides, upgrade  # noqa: F401
from mst.defaults import COMMON, TOP, add_section, common, method_sections  # every key and its default (re-exported)
from mst.registry import ConfigError


def sections() -> dict[str, dict[str, Any]]:
    """Every method section with its defaults, as their owners declared them (importing the methods declares
    them, and the degradations MAE reads)."""
    import mst.methods  # noqa: F401  (registers the built-in methods' sections)

    return method_sections()


def register_section(name: str, defaults: dict[str, Any]) -> None:
    """A new config section (for a method registered outside this package)."""
    add_section(name, defaults, owner="mst.config.register_section")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def method_class(name: str):
    from mst.methods import METHODS

    return METHODS.get(name)


def defaults_for(method: str) -> dict[str, Any]:
    """The default config of ``method``: the common sections and the method's own, with the defaults the method
    changes (``Method.changed_defaults``: ``dino`` is MST with ``mask.strategy`` and ``mst.decoder`` none)."""
    cfg = common()
    cfg["method"] = method
    cls = method_class(method)
    for section in cls.sections:
        if section not in sections():
            raise ConfigError(f"method {method!r} reads config section {section!r}, which is not registered")
        cfg[section] = settings.defaults(section)
    for section, changes in cls.changed_defaults.items():
        cfg[section].update(copy.deepcopy(changes))
    return cfg


def _unknown(key: str, where: str, cfg: dict) -> ConfigError:
    key = str(key)
    section = key.split(".")[0]
    if section in sections() and section not in cfg:
        users = [m for m, cls in _method_items() if section in cls.sections]
        return ConfigError(f"config section '{section}' (key '{key}' in {where}) is not used by method "
                           f"'{cfg['method']}'; it belongs to {', '.join(users) or 'no registered method'}")
    valid = sorted(_flatten(cfg)) + sorted(k for k, v in cfg.items() if isinstance(v, dict))
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    names = sorted(k for k, v in cfg.items() if isinstance(v, dict))
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid sections: {', '.join(names)}"
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _method_items():
    from mst.methods import METHODS

    return METHODS.items()


def _merge(base: dict, update: dict, where: str, root: dict, prefix: str = "") -> None:
    for k, v in update.items():
        key = f"{prefix}{k}"
        if k not in base:
            raise _unknown(key, where, root)
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' in {where} must be a mapping, got {v!r}")
            _merge(base[k], v, where, root, key + ".")
        else:
            base[k] = _number(v) if isinstance(base[k], (int, float)) and not isinstance(base[k], bool) else v


def parse_value(text: str, key: str = "value") -> Any:
    """Parse an override's value with YAML rules (numbers, bools, null, lists); '1e-3' is a number too (but not
    '"1e-3"', quoted). Text YAML cannot read is a ConfigError naming ``key`` and the text."""
    if not text.strip():
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}={text}: the value is not valid YAML ({_yaml_problem(e)})") from None
    return value if text.strip()[0] in "'\"" else _number(value)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what went wrong, and where (line, column)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _number(value: Any) -> Any:
    """YAML 1.1 reads '1e-3' (no dot) as a string; read it as the float everyone means."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_override(cfg: dict, item: str) -> None:
    key, text = _split_override(item)
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise _unknown(key, "--set", cfg)
        if i == len(parts) - 1:
            if isinstance(node[part], dict):
                raise ConfigError(f"--set {key}: '{key}' is a section; set one of its keys, e.g. {key}.{next(iter(node[part]))}")
            value = parse_value(text, key)
            spec = key_spec(key)
            if (value is not None and not isinstance(value, (str, bool, list, dict))
                    and spec is not None and spec.kind is str):
                value = text.strip()  # a string key: --data 2024 names the folder "2024" (YAML: a number, a date)
            node[part] = value
        else:
            node = node[part]


def _read_yaml(path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """A preset as a nested dict. ``base: other.yaml`` (relative to this file) is read first and this file's keys
    are laid over it, so a variant preset holds only what it changes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen:
        raise ConfigError(f"config file {path}: 'base: {base}' makes a loop")
    merged = _read_yaml(base_path, seen + (path.resolve(),))
    _lay_over(merged, data)
    return merged


def _lay_over(base: dict, top: dict) -> None:
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _lay_over(base[k], v)
        else:
            base[k] = v


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                notes: list | None = None, previous: dict | None = None) -> dict:
    """Defaults of the method, then the YAML preset at ``path``, then each ``key=value`` override, then the values
    still ``auto`` derived from the data (``mst.autoconfig``; what was chosen and why is appended to ``notes``; a
    resumed run's ``previous`` resolved config keeps its values), validated.

    The method is the last ``method=`` override, else the preset's ``method``, else ``mst``."""
    sections()  # every owner's keys (and old names) declared
    data = upgrade(_read_yaml(path), str(path), notice=True) if path is not None else {}
    overrides = _upgrade_overrides(list(overrides or []))
    method = data.get("method", TOP["method"].default)
    for item in overrides:
        key, text = _split_override(item)
        if key == "method":
            method = parse_value(text, key)
    cfg = defaults_for(str(method))
    if data.pop("any_method", False):  # a method-agnostic preset: the sections of the other methods are ignored
        for section in [k for k in data if k in sections() and k not in cfg]:
            del data[section]
    _merge(cfg, data, str(path), cfg)
    for item in overrides:
        apply_override(cfg, item)
    from mst.autoconfig import resolve_auto

    check_types(cfg)  # a bad value (or choice) is named before anything reads the data
    choices = resolve_auto(cfg, previous)
    if notes is not None:
        notes.extend(choices)
    validate(cfg)
    return cfg


def merge_dict(cfg: dict, update: dict, where: str = "config") -> dict:
    """Return a copy of ``cfg`` updated by the nested ``update`` (validated like a preset)."""
    out = copy.deepcopy(cfg)
    _merge(out, update, where, out)
    validate(out)
    return out


def key_spec(key: str) -> settings.Spec | None:
    """The spec of the dotted ``key`` (a top-level one too: ``seed``, ``method``); None if there is no such key."""
    return TOP.get(key) if "." not in key else settings.spec(key)


def default_of(key: str) -> Any:
    """The default of the dotted ``key`` (None if it has none)."""
    s = key_spec(key)
    return None if s is None else copy.deepcopy(s.default)


def check_types(cfg: dict) -> None:
    """Every value of ``cfg`` against its key's type, then its range and choices (the fields' specs); numbers are
    brought to the key's type in place (1 -> 1.0 for a float key, 2.0 -> 2 for an int key, '1e-3' -> 0.001)."""
    present = []  # (key, spec, the dict holding the key, its last part)
    for name, value in cfg.items():
        if name in TOP:
            present.append((name, TOP[name], cfg, name))
        elif isinstance(value, dict):
            present += [(f"{name}.{k}", s, value, k) for k, s in settings.specs(name).items() if k in value]
    for key, spec, node, last in present:
        node[last] = check_value(key, node[last], spec)
    for key, spec, node, last in present:
        check_range(key, node[last], spec)


def validate(cfg: dict) -> None:
    """Types and ranges of every key, the common checks, then the method's own (``Method.validate``). Mutates
    nothing but numbers brought to their key's type (:func:`check_types`) and ``log.knn_every`` on unlabelled
    data (switched off with a warning). Values still "auto" skip the checks that need them."""
    from mst.models.backbones import BACKBONES

    check_types(cfg)
    d, a, m = cfg["data"], cfg["augment"], cfg["model"]
    BACKBONES.get(m["arch"])
    if not is_auto(d["channels"], d["mean"], d["std"]) and (len(d["mean"]) != d["channels"]
                                                          or len(d["std"]) != d["channels"]):
        raise ConfigError(f"data.mean / data.std need {d['channels']} values (data.channels), "
                          f"got {d['mean']} / {d['std']}")
    multicrop = method_class(cfg["method"]).views == "multicrop"
    if multicrop and not is_auto(a["local_size"], m["patch_size"]) and a["local_size"] % m["patch_size"]:
        raise ConfigError(f"augment.local_size={a['local_size']} is not divisible by model.patch_size={m['patch_size']}")
    if m["embed_dim"] and m["num_heads"] and m["embed_dim"] % m["num_heads"]:
        raise ConfigError(f"model.embed_dim={m['embed_dim']} is not divisible by model.num_heads={m['num_heads']}")
    if not is_auto(m["img_size"], m["patch_size"]) and m["img_size"] % m["patch_size"]:
        raise ConfigError(f"model.img_size={m['img_size']} is not divisible by model.patch_size={m['patch_size']}")
    if a["crop"] == "pad" and method_class(cfg["method"]).views != "single":
        raise ConfigError(f"augment.crop=pad is a single-view crop; method {cfg['method']!r} makes multi-crop views "
                          "(augment.global_scale / local_scale)")
    if a["rand_augment"] and (a["backend"] != "pil" or method_class(cfg["method"]).views != "single"):
        raise ConfigError(f"augment.rand_augment={a['rand_augment']!r} runs on the single-view pil pipeline: set "
                          "augment.backend=pil (a method with one view per image)")
    if d["balanced"] and d["name"] == "folder":
        raise ConfigError("data.balanced needs labels, but data.name=folder is unlabelled")
    if cfg["log"]["knn_every"] and d["name"] == "folder":
        warnings.warn("log.knn_every needs labels, but data.name=folder is unlabelled: online evaluation is "
                      "switched off (use data.name=image_folder with class subfolders to keep it)", stacklevel=2)
        cfg["log"]["knn_every"] = 0
    method_class(cfg["method"]).validate(cfg)


def save_config(cfg: dict, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))


