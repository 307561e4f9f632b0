"""``mst config``: every key a method reads, with its default, type, range or choices and doc, printed from the
settings' fields (:mod:`mst.settings`), so the listing can never drift from what the validator checks."""
from __future__ import annotations

from mst import settings
from mst.config_checks import Each, ListOf, Range, Rule, show

_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str"}


def type_name(spec: settings.Spec) -> str:
    kind = spec.kind
    text = (f"list[{_TYPE_NAMES.get(kind.item, 'any')}]" if isinstance(kind, ListOf)
            else _TYPE_NAMES.get(kind, "any"))
    return text + (" | null" if spec.nullable else "") + (" | auto" if spec.auto else "")


def allowed(spec: settings.Spec) -> str:
    """The values a key takes besides its type: its choices, range, each element's range, or rule."""
    if spec.choices is not None:
        return " | ".join(map(str, spec.choices))
    if isinstance(spec.range, Range):
        return str(spec.range)
    if isinstance(spec.range, Each):
        return f"each {spec.range.range}"
    if isinstance(spec.range, Rule):
        return f"must {spec.range.must}"
    return ""


def rows(method: str) -> list[tuple[str, str, str, str, str]]:
    """(key, default, type, allowed values, doc) for every key ``method`` reads, sections in config order; the
    defaults are the method's own (``dino``'s mask.strategy is none)."""
    from mst.config import defaults_for
    from mst.defaults import TOP

    cfg = defaults_for(method)
    out = []
    for name, value in cfg.items():
        if not isinstance(value, dict):
            s = TOP[name]
            out.append((name, show(value), type_name(s), allowed(s), s.doc))
            continue
        for key, s in settings.specs(name).items():
            notes = ([f"old name: {', '.join(s.old)}"] if s.old else []) + (["may change on resume"]
                                                                           if s.resumable else [])
            doc = s.doc + (f" ({'; '.join(notes)})" if notes else "")
            out.append((f"{name}.{key}", show(value[key]), type_name(s), allowed(s), doc))
    return out


def describe(method: str) -> str:
    """The table ``mst config --method NAME`` prints."""
    table = rows(method)
    w_key = max(len(r[0]) for r in table)
    w_def = min(24, max(len(r[1]) for r in table))
    w_type = max(len(r[2]) for r in table)
    lines = [f"method {method}: every key, its default, type, allowed values and meaning "
             f"(set with --set KEY=VALUE or in a preset)"]
    for key, default, kind, ok, doc in table:
        lines.append(f"  {key:<{w_key}}  {default:<{w_def}}  {kind:<{w_type}}  {ok + ': ' if ok else ''}{doc}")
    return "\n".join(lines)
