"""``--init SOURCE`` on an evaluation: a pretrained model used as it is (the "off-the-shelf" row beside raw pixels,
random init and the user's own pretraining), fitted to the data exactly as ``mst pretrain --init`` fits it."""
from __future__ import annotations

from pathlib import Path

from mst.registry import ConfigError


def source_checkpoint(init: str, ckpt: str | None, data: str | None, overrides: list[str],
                      preset: Path | None) -> str:
    """The checkpoint of ``init`` as it is: fitted to ``ckpt``'s data, size and patch when a run is given (so the
    two compare on equal terms), else resolved from ``--data`` (channels, statistics, size; the patch is the
    source's) with ``preset`` as pretraining would."""
    from mst.checkpoint import load_checkpoint, offtheshelf_checkpoint

    if ckpt:
        cfg = load_checkpoint(ckpt)["config"]
    else:
        from mst.config import load_config

        data_keys = [o for o in overrides if o.split("=", 1)[0].strip().startswith("data.")]
        pinned = any(o.split("=", 1)[0].strip() == "data.name" for o in data_keys)
        head = [f"data.root={data}"] + ([] if pinned else ["data.name=auto"]) if data else []
        cfg = load_config(preset, head + data_keys + [f"model.init={init}"])
    return str(offtheshelf_checkpoint(init, cfg))


def resolve_eval_ckpt(args, preset: Path | None) -> str | None:
    """Set ``args.ckpt`` for an evaluation given ``--init`` alone; returns the off-the-shelf checkpoint when both
    ``--ckpt`` and ``--init`` are given (a row of its own), else None. Neither is one line."""
    init, ckpt = getattr(args, "init", None), args.ckpt
    if not init and not ckpt:
        raise ConfigError(f"mst {args.command} needs --ckpt RUN (a pretraining run or checkpoint) or --init SOURCE "
                          "(a pretrained model as it is)")
    if not init:
        return None
    path = source_checkpoint(init, ckpt, getattr(args, "data", None), list(getattr(args, "overrides", [])), preset)
    if ckpt:
        return path
    args.ckpt = path
    return None
