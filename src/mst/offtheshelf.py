"""``--init SOURCE`` on an evaluation: a pretrained model used as it is (the "off-the-shelf" row beside raw pixels,
random init and the user's own pretraining), fitted to the data exactly as ``mst pretrain --init`` fits it."""
from __future__ import annotations

from pathlib import Path

from mst.registry import ConfigError


def source_checkpoint(init: str, ckpt: str | None, data_overrides: list[str], preset: Path | None) -> str:
    """The checkpoint of ``init`` as it is: fitted to ``ckpt``'s data, size and patch when a run is given (so the
    two compare on equal terms), else resolved from ``--data`` (channels, statistics, size; the patch is the
    source's) with ``preset`` and ``data_overrides`` (the CLI's ``--data`` / ``--set data.*``) as pretraining
    would."""
    from mst.checkpoint import load_checkpoint

    if ckpt:
        cfg = load_checkpoint(ckpt)["config"]
    else:
        from mst.config import load_config

        cfg = load_config(preset, list(data_overrides) + [f"model.init={init}"])
    return str(offtheshelf_checkpoint(init, cfg))


def resolve_eval_ckpt(args, preset: Path | None, data_overrides: list[str]) -> str | None:
    """Set ``args.ckpt`` for an evaluation given ``--init`` alone; returns the off-the-shelf checkpoint when both
    ``--ckpt`` and ``--init`` are given (a row of its own), else None. Neither is one line."""
    init, ckpt = getattr(args, "init", None), args.ckpt
    if not init and not ckpt:
        raise ConfigError(f"mst {args.command} needs --ckpt RUN (a pretraining run or checkpoint) or --init SOURCE "
                          "(a pretrained model as it is)")
    if not init:
        return None
    path = source_checkpoint(init, ckpt, data_overrides, preset)
    if ckpt:
        return path
    args.ckpt = path
    return None


def offtheshelf_checkpoint(source_text: str, cfg: dict, directory: str | Path | None = None) -> Path:
    """A checkpoint of a pretrained source used as it is (``--init`` on an evaluation: the "off-the-shelf" row):
    the source's backbone fitted to ``cfg``'s data (channels, image size, patch) and nothing else, written once
    per source, size and channel count under ``directory`` (default: the system's temporary folder). Every
    evaluation and ``mst export`` read it like a pretraining checkpoint; its method is ``offtheshelf`` (fine-tuning
    gives it the default recipe)."""
    import copy
    import tempfile

    from mst.checkpoint import save_checkpoint
    from mst.models.backbones import create_backbone
    from mst.sources import fit_state, load_source

    source = load_source(source_text)
    cfg = copy.deepcopy(cfg)
    arch = source.arch()
    m = cfg["model"]
    m.update(arch=arch["arch"].split(".")[0], embed_dim=arch["embed_dim"], depth=arch["depth"],
             num_heads=arch["num_heads"], init=source_text)
    backbone = create_backbone(m, in_chans=int(cfg["data"]["channels"]))
    state, notes = fit_state(source, backbone.vit)
    cfg["method"] = "offtheshelf"
    directory = Path(directory) if directory is not None else Path(tempfile.gettempdir()) / "mst-offtheshelf"
    path = directory / (f"{source.sha256[:16]}-{m['img_size']}px-p{m['patch_size']}-c{cfg['data']['channels']}-"
                        f"{'-'.join(map(str, cfg['data']['mean']))}.pt")
    record = {"source": source_text, "sha256": source.sha256, "timm_name": source.timm_name, "adaptations": notes}
    save_checkpoint({"config": cfg, "method": {"backbone.vit." + k: v for k, v in state.items()},
                     "backbones": {"offtheshelf": "backbone.vit."}, "default_backbone": "offtheshelf",
                     "init": record, "epoch": 0, "step_in_epoch": 0, "global_step": 0}, path)
    return path
