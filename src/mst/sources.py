"""Start from weights that already exist (``model.init`` / ``--init SOURCE``): a timm ViT from the hub, a timm ViT
with weights from a local file, or an ``mst`` run, checkpoint or export.

A source is read once into :class:`Source`: the timm architecture it is (name, width, depth, heads, patch, prefix
tokens) and its weights in timm's key layout, through timm's own loader where timm has one (its checkpoint filters
turn an original DINOv2 / MAE file into timm's layout). :func:`fit_state` then fits those weights to the backbone
the data need, with timm's tools and nothing else: ``resample_abs_pos_embed`` for another token grid,
``resample_patch_embed`` (FlexiViT) for another patch size, ``adapt_input_conv`` for other input channels; each
change is a line the pretrain summary prints. A source that cannot fit (another width, another family) is one
:class:`~mst.registry.ConfigError` naming both shapes; nothing is loaded half-way.

>>> parse_source("timm:vit_small_patch14_dinov2.lvd142m")
InitSource(kind='hub', name='vit_small_patch14_dinov2.lvd142m', path=None)
>>> parse_source("timm:deit_small_patch16_224=/w/deit.safetensors").kind
'file'
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mst.registry import ConfigError

__all__ = ["InitSource", "Source", "parse_source", "load_source", "fit_state", "file_sha256", "planned_changes"]
_LOADED: dict[str, "Source"] = {}  # one read per process: the config's resolution and the trainer share it

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class InitSource:
    """``hub``: ``timm:NAME`` (timm's pretrained loader and cache); ``file``: ``timm:NAME=FILE``; ``mst``: a run
    directory, a checkpoint or an ``mst export`` .safetensors (its JSON names the architecture)."""

    kind: str
    name: str | None
    path: Path | None


def parse_source(text: str) -> InitSource:
    text = str(text).strip()
    if text.startswith("timm:"):
        rest = text[len("timm:"):]
        name, sep, path = rest.partition("=")
        if not name:
            raise ConfigError(f"model.init={text!r}: name a timm model, e.g. timm:vit_small_patch14_dinov2.lvd142m")
        return InitSource("file", name, Path(path).expanduser()) if sep else InitSource("hub", name, None)
    return InitSource("mst", None, Path(text).expanduser())


@dataclass
class Source:
    """A source read once: its timm model (eval mode, on the CPU), architecture and weights."""

    text: str
    timm_name: str
    model: torch.nn.Module
    sha256: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The backbone's weights in timm's layout, without a classifier head."""
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("head.")}

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(int(g) for g in self.model.patch_embed.grid_size)

    @property
    def in_chans(self) -> int:
        return int(self.model.patch_embed.proj.in_channels)

    def arch(self) -> dict:
        """The ``model`` keys the source decides: its timm name, width, depth, heads and patch size."""
        return {"arch": self.timm_name, "embed_dim": int(self.model.embed_dim), "depth": len(self.model.blocks),
                "num_heads": int(self.model.blocks[0].attn.num_heads), "patch_size": self.patch_size}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_sha256(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_vit(model: torch.nn.Module, text: str) -> None:
    from timm.models.vision_transformer import VisionTransformer

    if type(model) is not VisionTransformer:
        raise ConfigError(f"model.init={text!r} is a timm {type(model).__name__}; --init starts from timm ViTs "
                          "(VisionTransformer: vit_*, deit_*, DINOv2, MAE, mst's own runs)")


def _timm_model(name: str, text: str, file: Path | None = None, **kwargs) -> torch.nn.Module:
    import timm

    base = name.split(".")[0]
    if not timm.is_model(base):
        close = timm.list_models(f"*{base.split('_')[0]}*")[:4]
        raise ConfigError(f"model.init={text!r}: timm has no model {base!r}" +
                          (f" (e.g. {', '.join(close)})" if close else ""))
    with torch.device("meta"):  # the family first (nothing allocated), before any weights are read
        _check_vit(timm.create_model(base, pretrained=False), text)
    if file is None:
        try:
            model = timm.create_model(name, pretrained=True, **{"num_classes": 0, **kwargs})
        except Exception as e:  # noqa: BLE001 - no hub (offline), no such pretrained tag, ...: one line and the way out
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise ConfigError(f"model.init={text!r}: timm could not load its pretrained weights ({first}); where the "
                              f"hub is unreachable, download them once and pass --init timm:{name}=FILE "
                              "(.safetensors / .pth / .bin)") from None
        return model.eval()
    if not file.is_file():
        raise ConfigError(f"model.init={text!r}: no file {file}")
    if file.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ConfigError(f"model.init={text!r}: {file} is not a weights file ({' '.join(WEIGHT_SUFFIXES)})")
    try:  # timm's real loader: its checkpoint filter maps original DINOv2 / MAE / DeiT files to timm's layout
        overlay = dict(file=str(file))
        if "in_chans" in kwargs:  # the file's own channels (an export's JSON): no channel adaptation to warn about
            size = int(kwargs.get("img_size", 224))
            overlay["input_size"] = (int(kwargs["in_chans"]), size, size)
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay,
                                  **{"num_classes": 0, **kwargs})
    except RuntimeError as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        detail = next((l for l in lines if "size mismatch" in l or "Missing key" in l or "Unexpected key" in l),
                      lines[0] if lines else "")
        raise ConfigError(f"model.init={text!r}: {file} does not fit timm's {name} ({detail[:220]})") from None
    except Exception as e:  # noqa: BLE001 - not a checkpoint at all (a truncated or foreign file)
        raise ConfigError(f"model.init={text!r}: {file} cannot be read as weights ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    return model.eval()


def _mst_source(src: InitSource, text: str) -> tuple[str, torch.nn.Module, str]:
    """(timm name, model, sha256) of an mst run / checkpoint / export."""
    import timm

    path = src.path
    if path.suffix == ".safetensors":
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise ConfigError(f"model.init={text!r}: an export needs {path} and {meta_path} (mst export writes both)")
        meta = json.loads(meta_path.read_text())
        kwargs = {**meta["model_kwargs"], "num_classes": 0}
        kwargs.pop("global_pool", None)
        model = _timm_model(meta["model_name"], text, path, **kwargs)
        return meta["model_name"], model, file_sha256(path)
    from mst.checkpoint import backbone_state, load_checkpoint, resolve_checkpoint
    from mst.models.backbones import timm_spec

    try:
        ckpt_file = resolve_checkpoint(path)
    except FileNotFoundError:
        raise ConfigError(f"model.init={text!r} is neither timm:NAME, timm:NAME=FILE nor an mst run, checkpoint or "
                          "export (no such file or run directory)") from None
    ckpt = load_checkpoint(ckpt_file)
    cfg = ckpt["config"]
    name, kwargs = timm_spec(cfg["model"], int(cfg["data"]["channels"]))
    state = backbone_state(ckpt)
    model = timm.create_model(name, pretrained=False, **kwargs)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"model.init={text!r}: the backbone of {ckpt_file} does not fit timm's {name} (missing "
                          f"{missing[:3]}, unexpected {unexpected[:3]})")
    return name, model.eval(), _state_sha256(state)


def _export_kwargs(src: InitSource) -> dict:
    """A file written by ``mst export`` carries its shape in the JSON beside it (width, depth, patch, channels of a
    model timm's name alone does not describe): used when that JSON names the same timm model."""
    if src.path is None or not src.path.with_suffix(".json").is_file():
        return {}
    try:
        meta = json.loads(src.path.with_suffix(".json").read_text())
    except ValueError:
        return {}
    if not isinstance(meta, dict) or meta.get("model_name") != src.name.split(".")[0]:
        return {}
    kwargs = {k: v for k, v in meta.get("model_kwargs", {}).items() if k not in ("num_classes", "global_pool")}
    return kwargs


def load_source(text: str) -> Source:
    """Read ``text`` (see :func:`parse_source`) into a :class:`Source`, once per process; every failure is one
    ConfigError line."""
    if text not in _LOADED:
        _LOADED[text] = _read_source(text)
    return _LOADED[text]


def planned_changes(source: Source, patch: int, img_size: int, channels: int) -> list[str]:
    """What fitting ``source`` to a backbone of ``patch`` px patches, ``img_size`` px images and ``channels`` input
    channels changes (the lines :func:`fit_state` reports), computed from the shapes alone."""
    notes = []
    if patch != source.patch_size:
        notes.append(f"patch embedding {source.patch_size} px -> {patch} px (timm's resample_patch_embed, FlexiViT)")
    if channels != source.in_chans:
        notes.append(f"input channels {source.in_chans} -> {channels} (timm's adapt_input_conv)")
    grid = (img_size // patch, img_size // patch)
    if grid != source.grid:
        notes.append(f"position embeddings {source.grid[0]}x{source.grid[1]} -> {grid[0]}x{grid[1]} tokens (timm's "
                     "resample_abs_pos_embed)")
    regs = int(getattr(source.model, "num_reg_tokens", 0) or 0)
    if regs:
        notes.append(f"{regs} register tokens kept")
    return notes


def _read_source(text: str) -> Source:
    src = parse_source(text)
    if src.kind == "mst":
        name, model, digest = _mst_source(src, text)
        _check_vit(model, text)
        meta = src.path.with_suffix(".json") if src.path.suffix == ".safetensors" else None
        mean = std = None
        if meta is not None:
            info = json.loads(meta.read_text())
            mean, std = tuple(info["mean"]), tuple(info["std"])
        return Source(text, name, model, digest, mean, std)
    kwargs = _export_kwargs(src)
    model = _timm_model(src.name, text, src.path, **kwargs)
    _check_vit(model, text)
    digest = file_sha256(src.path) if src.path is not None else _state_sha256(model.state_dict())
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    return Source(text, src.name, model, digest, tuple(mean) if mean else None, tuple(std) if std else None)


def fit_state(source: Source, target: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The source's weights fitted to ``target`` (a timm ViT built for the data) and one line per adaptation. Every
    key must match by name and, after the adaptations below, by shape: anything else is one ConfigError naming both
    shapes."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed
    from timm.models import adapt_input_conv

    state = dict(source.state)
    want = target.state_dict()
    key = "patch_embed.proj.weight"
    w = state[key]
    if w.shape[0] != want[key].shape[0]:
        raise ConfigError(f"model.init={source.text!r} is {w.shape[0]} wide and the backbone asked for is "
                          f"{want[key].shape[0]} wide (model.embed_dim): leave model.embed_dim / depth / num_heads "
                          "to the source")
    if tuple(w.shape[-2:]) != tuple(want[key].shape[-2:]):
        w = resample_patch_embed(w, list(want[key].shape[-2:]))
    if w.shape[1] != want[key].shape[1]:
        w = adapt_input_conv(int(want[key].shape[1]), w, base_chans=int(w.shape[1]))  # grey -> RGB too
    state[key] = w
    grid = tuple(int(g) for g in target.patch_embed.grid_size)
    if "pos_embed" in state and state["pos_embed"].shape != want["pos_embed"].shape:
        prefix = 0 if getattr(target, "no_embed_class", False) else int(target.num_prefix_tokens)
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], list(grid), list(source.grid),
                                                    num_prefix_tokens=prefix)
    patch = int(target.patch_embed.patch_size[0])
    notes = planned_changes(source, patch, grid[0] * patch, int(want[key].shape[1]))
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise ConfigError(f"model.init={source.text!r} does not fit the backbone {source.timm_name}: missing "
                          f"{missing[:4]}{' ...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                          f"{' ...' if len(unexpected) > 4 else ''}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise ConfigError(f"model.init={source.text!r}: {k} is {tuple(v.shape)} in the source and "
                              f"{tuple(want[k].shape)} in the backbone asked for")
    return state, notes
