"""Small-scale reruns of the paper's ablations, several seeds each, with one command.

``run_ablation("mask", protocol="cpu", seeds=3, out_dir="runs/ablation_mask")`` pretrains every variant of
:data:`ABLATIONS` ``["mask"]`` once per seed into ``out_dir/<variant>/seed<k>/``, evaluates each run (weighted
k-NN, linear probe, dense probe), and writes ``out_dir/results.{json,md,png}`` with mean ± std over seeds; it
then regenerates the ablation's section of ``docs/results.md``. An interrupted ablation continues where it
stopped: a run whose pretraining finished is not retrained (an unfinished one resumes from its checkpoint) and a
run whose ``results.json`` exists is not re-evaluated.

Config of one run, in order: the protocol's preset, the protocol's overrides, ``data.root``, the user's overrides,
the variant's overrides (they define the variant, so they win), ``seed=k``. Evaluation data are fixed for every
run (k-NN/linear subsets drawn with seed 0/1, dense canvases with seed 0, probe init seed 0), so the spread over
seeds measures pretraining only.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from mst.config import ConfigError, _flatten, load_config

Log = Callable[[str], None]

# ----------------------------------------------------------------------------------------------- ablations

# Table 4 compares mask strategies inside MST (decoder on in all rows) with "the same probability p" for all:
# p = 0.1 here. With num = 8, attention-guided masking draws its 10 % among the lowest-attention 1/8 of the tokens
# (about 1.25 % of a view, 0.6 of 49 tokens on average), while random masking draws 10 % of *all* tokens; this is
# the paper's comparison (same p, not the same masked fraction). num_p's "num1_p0.10" is random-over-all-tokens
# through the attention code path.
ABLATIONS: dict[str, list[tuple[str, list[str]]]] = {
    "mask": [
        ("none", ["mask.strategy=none"]),
        ("random", ["mask.strategy=random", "mask.p=0.1"]),
        ("attention", ["mask.strategy=attention", "mask.num=8", "mask.p=0.1"]),
    ],
    "num_p": [
        ("num1_p0.10", ["mask.strategy=attention", "mask.num=1", "mask.p=0.1"]),
        ("num2_p0.05", ["mask.strategy=attention", "mask.num=2", "mask.p=0.05"]),
        ("num2_p0.15", ["mask.strategy=attention", "mask.num=2", "mask.p=0.15"]),
        ("num8_p0.05", ["mask.strategy=attention", "mask.num=8", "mask.p=0.05"]),
        ("num8_p0.15", ["mask.strategy=attention", "mask.num=8", "mask.p=0.15"]),
    ],
    "decoder": [
        ("no_decoder", ["decoder.enabled=false"]),
        ("lambda0.2", ["decoder.enabled=true", "loss.restore_weight=0.2"]),
        ("lambda0.6", ["decoder.enabled=true", "loss.restore_weight=0.6"]),
        ("lambda1.0", ["decoder.enabled=true", "loss.restore_weight=1.0"]),
    ],
    "replacement": [
        ("learned", ["mask.replacement=learned"]),
        ("bert", ["mask.replacement=bert"]),
    ],
}

# The paper's ImageNet linear top-1 (DeiT-S, 100 epochs) for a variant, where one was transcribed; None = not
# filled in here (Table 5, appendix J and Table 10 hold the others).
PAPER: dict[str, dict[str, float | None]] = {
    "mask": {"none": 73.1, "random": 63.2, "attention": 73.7},
    "num_p": {}, "decoder": {}, "replacement": {},
}
PAPER_SOURCE = {"mask": "Table 4", "num_p": "Table 5", "decoder": "appendix J", "replacement": "Table 10"}

# ----------------------------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class Protocol:
    """A preset plus overrides for pretraining, and the settings of the three evaluations."""

    name: str
    preset: str | None  # a file in configs/ (None: DEFAULTS)
    overrides: tuple[str, ...]
    knn: dict = field(default_factory=dict)  # train_subset, test_subset (also the linear probe's data), ks
    linear: dict = field(default_factory=dict)  # epochs, lr, batch_size (on precomputed CLS features)
    dense: dict = field(default_factory=dict)  # n_train, n_test, epochs, canvas
    description: str = ""


# Everything that shapes the result is pinned here, so an edit of the preset does not silently change an ablation.
_CPU_MODEL = ("model.arch=vit_tiny", "model.depth=4", "model.embed_dim=96", "model.num_heads=3",
              "model.patch_size=4", "model.img_size=28", "head.out_dim=1024", "head.hidden_dim=512",
              "head.bottleneck_dim=128", "decoder.channels=[96,48]", "augment.n_local=2", "augment.backend=tensor",
              "mask.strategy=attention", "mask.num=8", "mask.p=0.1", "loss.restore_weight=0.6",
              "optim.base_lr=5e-4", "optim.momentum_teacher=0.99", "optim.freeze_last_layer=1")

PROTOCOLS: dict[str, Protocol] = {
    "tiny": Protocol(
        "tiny", "fashion_mnist_vit_tiny.yaml",
        ("model.depth=1", "head.out_dim=64", "head.hidden_dim=64", "head.bottleneck_dim=32", "augment.n_local=2",
         "decoder.channels=[16,8]", "data.subset=32", "optim.batch_size=16", "optim.epochs=1",
         "optim.warmup_epochs=0", "optim.momentum_teacher=0.5", "log.progress=false", "log.tensorboard=false", "log.knn_every=0", "log.every=1"),
        knn={"train_subset": 200, "test_subset": 100},
        linear={"epochs": 2, "lr": 0.1, "batch_size": 64},
        dense={"n_train": 16, "n_test": 8, "epochs": 1, "canvas": 56},
        description="smoke test (seconds per run): a 1-block ViT, 32 images, one epoch (2 steps), tiny probes",
    ),
    "cpu": Protocol(
        "cpu", "fashion_mnist_vit_tiny.yaml",
        _CPU_MODEL + ("data.subset=12000", "optim.batch_size=32", "optim.epochs=4", "optim.warmup_epochs=1",
                      "log.knn_every=0", "log.tensorboard=false", "log.every=50"),
        knn={"train_subset": 10000, "test_subset": 2000},
        linear={"epochs": 100, "lr": 0.1, "batch_size": 256},
        dense={"n_train": 1000, "n_test": 300, "epochs": 20, "canvas": 56},
        description="2-core CPU: a narrow ViT (width 96, 3 heads, 4 blocks), 2 global + 2 local crops, "
                    "12000 train images, 4 epochs (1500 steps of 32); k-NN and linear probe (100 epochs, "
                    "precomputed CLS) on 10000/2000 images, dense probe on 1000/300 canvases",
    ),
    "gpu": Protocol(
        "gpu", "fashion_mnist_vit_tiny.yaml",
        ("model.arch=vit_tiny", "model.depth=null", "model.embed_dim=null", "model.num_heads=null",
         "head.out_dim=4096", "head.hidden_dim=2048", "head.bottleneck_dim=256", "decoder.channels=[96,48]",
         "augment.n_local=6", "augment.backend=tensor", "mask.strategy=attention", "mask.num=8", "mask.p=0.1",
         "loss.restore_weight=0.6", "data.subset=null", "data.num_workers=8",
         "optim.batch_size=256", "optim.epochs=100", "optim.warmup_epochs=10", "optim.base_lr=5e-4",
         "optim.momentum_teacher=0.996", "log.knn_every=10", "log.progress=false", "log.every=50"),
        knn={"train_subset": None, "test_subset": None},
        linear={"epochs": 100, "lr": 0.1, "batch_size": 256},
        dense={"n_train": 2000, "n_test": 500, "epochs": 20, "canvas": 56},
        description="one GPU: ViT-Tiny (12 blocks), all 60000 Fashion-MNIST images, 100 epochs, batch 256; "
                    "full k-NN and linear probe (60000/10000), dense probe on 2000/500 canvases",
    ),
}

DEFAULT_DOC = "docs/results.md"
METRICS = ("knn_top1_k20", "knn_top1_k10", "linear_top1", "dense_miou")  # aggregated and tabulated
EXTRA_METRICS = ("linear_best_top1", "dense_pixel_acc")  # aggregated, kept in results.json only
_NOT_COMPARED = ("data.root", "data.num_workers", "log.")  # config keys that may differ on a rerun


def _preset_path(preset: str | None) -> Path | None:
    if preset is None:
        return None
    for base in (Path(__file__).resolve().parents[2] / "configs", Path.cwd() / "configs"):
        if (base / preset).is_file():
            return base / preset
    raise ConfigError(f"protocol preset configs/{preset} not found (run from the repository root)")


def build_run_config(name: str, variant: str, seed: int, protocol: str | Protocol = "cpu",
                     data_root: str | None = None, overrides: list[str] | None = None) -> dict:
    """The resolved config of one run of an ablation (see the module docstring for the order)."""
    proto = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    var = dict(ABLATIONS[name])[variant]
    items = list(proto.overrides) + ([f"data.root={data_root}"] if data_root else [])
    items += list(overrides or []) + list(var) + [f"seed={seed}"]
    return load_config(_preset_path(proto.preset), items)


def _check_same_config(run_dir: Path, cfg: dict) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved, now = _flatten(yaml.safe_load(saved_path.read_text())), _flatten(cfg)
    # keys only one side has (a key added to the code since) are not compared
    diff = sorted(k for k in set(saved) & set(now) if not k.startswith(_NOT_COMPARED) and saved[k] != now[k])
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:5])
        raise ConfigError(f"{run_dir} holds a run with another config ({shown}); use a fresh --out directory "
                          "or delete that run to retrain it")


# ----------------------------------------------------------------------------------------------- one run


def pretrain(cfg: dict, run_dir: Path, log: Log = print) -> dict:
    """Pretrain unless ``run_dir`` already holds a finished run; returns {"status", "wall_s", "skipped"}."""
    from mst.engine.checkpoint import CHECKPOINT_NAME
    from mst.engine.trainer import Trainer

    marker = run_dir / "pretrain.json"
    if marker.is_file() and (run_dir / CHECKPOINT_NAME).is_file():
        return {**json.loads(marker.read_text()), "skipped": True}
    from mst.eval.online import online_knn_evaluator

    t0, c0 = time.perf_counter(), time.process_time()
    evaluator = online_knn_evaluator(cfg) if cfg["log"]["knn_every"] else None
    status = Trainer(cfg, run_dir, log=log).fit(evaluator=evaluator)
    info = {"status": status, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    if status == "done":
        marker.write_text(json.dumps(info, indent=2))
    return {**info, "skipped": False}


def evaluate(run_dir: Path, proto: Protocol, log: Log = print, device=None,
             random_init: bool = False) -> tuple[dict, dict]:
    """k-NN (k=10, 20) and a linear probe on the same frozen teacher CLS features (extracted once), then the dense
    probe. ``random_init``: the same architecture untrained (seed 0), the no-pretraining reference.
    Returns (metrics, wall seconds per evaluation)."""
    from mst.eval.dense import run_dense
    from mst.eval.features import default_device, extract_features, load_eval_backbone, load_eval_split
    from mst.eval.knn import knn_accuracy
    from mst.eval.linear import train_linear_probe

    dev = default_device(device)
    wall = {}
    t0 = time.perf_counter()
    backbone, cfg = load_eval_backbone(run_dir, "teacher", dev, random_init=random_init, seed=0)
    train = load_eval_split(cfg, "train", proto.knn.get("train_subset"), seed=0)
    test = load_eval_split(cfg, "test", proto.knn.get("test_subset"), seed=1)
    train_f, train_y = extract_features(backbone, train, "cls", 256, dev)
    test_f, test_y = extract_features(backbone, test, "cls", 256, dev)
    acc = knn_accuracy(train_f.to(dev), train_y.to(dev), test_f.to(dev), test_y.to(dev), ks=(10, 20))
    wall["knn_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lin = train_linear_probe((train_f, train_y), (test_f, test_y), epochs=proto.linear["epochs"],
                             lr=proto.linear["lr"], batch_size=proto.linear["batch_size"],
                             eval_every=proto.linear["epochs"], device=dev, seed=0, log=lambda s: None)
    wall["linear_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = proto.dense
    dense = run_dense(run_dir, n_train=d["n_train"], n_test=d["n_test"], canvas=d["canvas"], epochs=d["epochs"],
                      seed=0, device=dev, random_init=random_init, log=lambda s: None)
    wall["dense_s"] = time.perf_counter() - t0
    metrics = {"knn_top1_k20": acc[20], "knn_top1_k10": acc[10], "linear_top1": lin["top1"],
               "linear_best_top1": lin["best_top1"], "dense_miou": dense["miou"],
               "dense_pixel_acc": dense["pixel_acc"]}
    log("  " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    return metrics, wall


# ----------------------------------------------------------------------------------------------- ablation


def run_ablation(name: str, protocol: str = "cpu", seeds: int = 3, out_dir: str | Path = "runs/ablation",
                 data_root: str | None = None, overrides: list[str] | None = None, log: Log = print,
                 doc: str | Path | None = DEFAULT_DOC, variants: list[str] | None = None,
                 device=None, baseline: bool = True, shard: tuple[int, int] | None = None) -> dict | None:
    """Run (or continue) ablation ``name`` under ``protocol`` for seeds 0..seeds-1 and write the reports.

    ``variants`` restricts the run to some of the ablation's variants. ``baseline`` also evaluates the untrained
    architecture once (out_dir/random_init/), a reference row showing what pretraining added. ``doc``: the
    Markdown file whose marked section is regenerated (skipped when the file does not exist, or for the "tiny"
    protocol with the default doc). ``shard=(i, n)`` runs only every n-th run starting at the i-th (variants x
    seeds in order), so n processes (or n array jobs sharing ``out_dir``) split an ablation; a shard writes no
    report: rerun without ``shard`` once all shards are done, which evaluates the baseline and writes the reports.
    Returns the aggregate (also out_dir/results.json), or None when pretraining was interrupted (rerun to go on)
    or when running a shard.
    """
    import torch

    from mst.ablation_report import aggregate, update_results_doc, write_reports
    from mst.engine.trainer import NonFiniteLossError

    if name not in ABLATIONS:
        raise ConfigError(f"unknown ablation {name!r}; choose one of {', '.join(ABLATIONS)}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if seeds < 1:
        raise ConfigError(f"seeds={seeds} must be >= 1")
    if shard is not None and not (len(shard) == 2 and shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ConfigError(f"shard={shard} must be (i, n) with 0 <= i < n")
    proto = PROTOCOLS[protocol]
    chosen = [v for v, _ in ABLATIONS[name] if variants is None or v in variants]
    if variants is not None and len(chosen) != len(set(variants)):
        raise ConfigError(f"unknown variants {sorted(set(variants) - set(chosen))} for ablation {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logfile = open(out / "ablation.log", "a")

    def tee(msg: str) -> None:
        log(msg)
        logfile.write(msg + "\n")
        logfile.flush()

    var_keys = {o.split("=")[0] for _, ov in ABLATIONS[name] for o in ov}
    for o in overrides or []:
        if o.split("=")[0].strip() in var_keys:
            tee(f"note: --set {o} is overridden by the variants of ablation {name!r} that set the same key")
    # every config first: a bad override fails before hours of training
    cfgs = {(v, s): build_run_config(name, v, s, proto, data_root, overrides) for v in chosen for s in range(seeds)}
    tee(f"ablation {name}: {len(chosen)} variants x {seeds} seeds, protocol {protocol} ({proto.description})")
    todo = list(cfgs.items())
    if shard is not None:
        todo = todo[shard[0]::shard[1]]
        tee(f"shard {shard[0]}/{shard[1]}: " + ", ".join(f"{v} seed {k}" for (v, k), _ in todo))
    failures = []
    try:
        for (variant, seed), cfg in todo:
            run_dir = out / variant / f"seed{seed}"
            res_path = run_dir / "results.json"
            _check_same_config(run_dir, cfg)
            if res_path.is_file():
                tee(f"[{variant} seed {seed}] finished earlier: {res_path}")
                continue
            tee(f"[{variant} seed {seed}] pretraining into {run_dir}")
            try:
                pre = pretrain(cfg, run_dir, tee)
            except NonFiniteLossError as e:
                failures.append({"variant": variant, "seed": seed, "error": str(e)})
                tee(f"[{variant} seed {seed}] FAILED: {e}")
                continue
            if pre["status"] != "done":
                tee(f"[{variant} seed {seed}] pretraining stopped ({pre['status']}); rerun the same command to "
                    "continue")
                return None
            tee(f"[{variant} seed {seed}] {'pretraining found' if pre['skipped'] else 'pretrained'} "
                f"({pre['wall_s'] / 60:.1f} min); evaluating")
            c0 = time.process_time()
            metrics, wall = evaluate(run_dir, proto, tee, device)
            wall = {"pretrain_s": pre["wall_s"], **wall}
            wall["total_s"] = sum(wall.values())
            # process CPU time (all threads): about torch.get_num_threads() x the wall time of an unshared machine
            cpu = {"pretrain_s": pre.get("cpu_s"), "eval_s": time.process_time() - c0,
                   "threads": torch.get_num_threads()}
            res_path.write_text(json.dumps({
                "ablation": name, "variant": variant, "seed": seed, "protocol": protocol,
                "overrides": dict(ABLATIONS[name])[variant], "metrics": metrics, "wall_s": wall,
                "cpu_s": cpu,
            }, indent=2))
            tee(f"[{variant} seed {seed}] done in {wall['total_s'] / 60:.1f} min: {res_path}")
        if shard is not None:
            tee(f"shard {shard[0]}/{shard[1]} finished; once every shard has, rerun without --shard to evaluate "
                "the random-init reference and write the reports")
            return None
        base_path = out / "random_init" / "results.json"
        if baseline and not base_path.is_file():
            first = next((out / v / f"seed{s}" for (v, s) in cfgs if (out / v / f"seed{s}" / "results.json").is_file()),
                         None)
            if first is not None:
                tee("evaluating the untrained architecture (random init, seed 0) as a reference")
                metrics, wall = evaluate(first, proto, tee, device, random_init=True)
                base_path.parent.mkdir(exist_ok=True)
                base_path.write_text(json.dumps({"metrics": metrics, "wall_s": wall, "checkpoint_config": str(first)},
                                                indent=2))
        agg = aggregate(name, out, proto, seeds, chosen, failures=failures, user_overrides=overrides or [])
        paths = write_reports(agg, out)
        tee(agg["summary"])
        tee("wrote " + ", ".join(str(p) for p in paths))
        if doc is not None and not (protocol == "tiny" and str(doc) == DEFAULT_DOC):
            if Path(doc).is_file():
                update_results_doc(out / "results.json", doc, section=name)
                tee(f"updated section '{name}' of {doc}")
            else:
                tee(f"{doc} not found: not updated (run from the repository root, or pass doc=PATH)")
        return agg
    finally:
        logfile.close()


def protocol_dict(proto: Protocol) -> dict:
    return asdict(proto)


def update_results_doc(results_json: str | Path, doc_path: str | Path = DEFAULT_DOC,
                       section: str | None = None) -> Path:
    """Regenerate the marked section of ``doc_path`` from an ablation's results.json (see
    :func:`mst.ablation_report.update_results_doc`)."""
    from mst.ablation_report import update_results_doc as _update

    return _update(results_json, doc_path, section)
