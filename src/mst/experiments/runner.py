"""Small-scale reruns of the paper's ablations, several seeds each, with one command.

``run_ablation("mask", protocol="cpu", seeds=3, out_dir="runs/ablation_mask")`` pretrains every variant of
:data:`ABLATIONS` ``["mask"]`` once per seed into ``out_dir/<variant>/seed<k>/``, evaluates each run with the
registered evaluations the protocol runs (:mod:`mst.experiments.evaluations`: weighted k-NN, linear probe, dense
probe, low-label fine-tune), and writes ``out_dir/results.{json,md,png}`` with mean ± std over seeds; it
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
from pathlib import Path
from typing import Callable

import yaml

from mst.config import TOP, ConfigError, _flatten, _read_yaml, load_config, method_class
from mst.experiments.evaluations import EvalContext, evaluations
from mst.experiments.specs import ABLATIONS, PROTOCOLS, Protocol, Variant, check_protocol
from mst.experiments.evaluations import preset_path as _preset_path
from mst.methods import same_training

Log = Callable[[str], None]

DEFAULT_DOC = "docs/results.md"
_NOT_COMPARED = ("data.root", "data.num_workers", "log.")  # config keys that may differ on a rerun


def _method_of(preset: Path | None, overrides: list[str]) -> str:
    default = TOP["method"].default
    method = _read_yaml(preset).get("method", default) if preset else default
    for o in overrides:
        key, _, value = o.partition("=")
        if key.strip() == "method":
            method = value.strip()
    return method


def build_run_config(name: str, variant: str, seed: int, protocol: str | Protocol = "cpu",
                     data_root: str | None = None, overrides: list[str] | None = None,
                     teacher: str | None = None) -> dict:
    """The resolved config of one run of an ablation (see the module docstring for the order). The variant's
    preset, when it has one, replaces the protocol's; protocol pins for sections its method does not read are
    skipped (the user's overrides never are). A variant that reads a frozen teacher takes ``teacher`` (a SOURCE)
    as its ``teacher.init``; the others never see it."""
    proto = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    var: Variant = ABLATIONS[name].variant(variant)
    preset = _preset_path(var.preset or proto.preset)
    if var.teacher and not teacher:
        raise ConfigError(f"variant {variant!r} of ablation {name!r} reads a frozen pretrained teacher: pass "
                          "--teacher SOURCE (timm:NAME=FILE, an mst run or export)")
    tail = list(overrides or []) + list(var.overrides) + [f"seed={seed}"]
    tail += [f"teacher.init={teacher}"] if var.teacher else []
    used = {"seed", "method", "data", "augment", "model", "optim", "log"}
    used |= set(method_class(_method_of(preset, tail)).sections)
    pins = [o for o in proto.overrides if o.split("=")[0].split(".")[0].strip() in used]
    items = pins + ([f"data.root={data_root}"] if data_root else []) + tail
    return load_config(preset, items)


def _run_configs(name: str, variants: list[str], seeds: int, proto: Protocol, data_root: str | None,
                 overrides: list[str] | None, teacher: str | None = None) -> tuple[dict, dict]:
    """The config of every (variant, seed) to train, and {variant: reason} for the variants the spec lists as
    refused, whose config must then raise a ConfigError containing the listed reason (the message is recorded). A
    listed refusal whose config is accepted or refused for another reason, or a ConfigError of any other variant,
    is an error: the table would otherwise say something the code does not."""
    cfgs, refusals = {}, {}
    for variant in variants:
        spec = ABLATIONS[name].variant(variant)
        try:
            for seed in range(seeds):
                cfgs[variant, seed] = build_run_config(name, variant, seed, proto, data_root, overrides, teacher)
        except ConfigError as e:
            if not spec.refused:
                raise
            if spec.refused not in str(e):
                raise ConfigError(f"variant {variant!r} of ablation {name!r} is listed as refused because "
                                  f"{spec.refused!r}, but its config is refused for another reason: {e}") from None
            refusals[variant] = str(e)
            continue
        if spec.refused:
            raise ConfigError(f"variant {variant!r} of ablation {name!r} is listed as refused, but its config "
                              "is accepted (with the protocol's and any --set overrides): train it (drop its "
                              "refused reason) or fix the check that should refuse it")
    return cfgs, refusals


def _check_same_config(run_dir: Path, cfg: dict) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved, now = _flatten(yaml.safe_load(saved_path.read_text())), _flatten(cfg)
    if same_training(str(saved.get("method")), str(now.get("method"))):  # e.g. a DINO run saved as method mst:
        saved["method"] = now.get("method")  # the same training when its sections match, compared key by key below
    # keys only one side has (a key added to the code since) are not compared
    diff = sorted(k for k in set(saved) & set(now) if not k.startswith(_NOT_COMPARED) and saved[k] != now[k])
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:5])
        raise ConfigError(f"{run_dir} holds a run with another config ({shown}); use a fresh --out directory "
                          "or delete that run to retrain it")


# ----------------------------------------------------------------------------------------------- one run


def pretrain(cfg: dict, run_dir: Path, log: Log = print) -> dict:
    """Pretrain unless ``run_dir`` already holds a finished run; returns {"status", "wall_s", "skipped"}."""
    from mst.checkpoint import CHECKPOINT_NAME
    from mst.engine.trainer import Trainer

    marker = run_dir / "pretrain.json"
    if marker.is_file() and (run_dir / CHECKPOINT_NAME).is_file():
        return {**json.loads(marker.read_text()), "skipped": True}
    from mst.eval.online import online_knn_evaluator

    t0, c0 = time.perf_counter(), time.process_time()
    evaluator = online_knn_evaluator(cfg) if cfg["log"]["knn_every"] else None
    trainer = Trainer(cfg, run_dir, log=log)
    status = trainer.fit(evaluator=evaluator)
    # the times and steps of this process: a run resumed from a checkpoint did only the steps after it here
    info = {"status": status, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "steps": trainer.call_steps}
    if status == "done":
        marker.write_text(json.dumps(info, indent=2))
    return {**info, "skipped": False}


def evaluate(run_dir: Path, proto: Protocol, log: Log = print, device=None,
             random_init: bool = False) -> tuple[dict, dict]:
    """Every registered evaluation the protocol runs (:data:`~mst.experiments.evaluations.EVALUATIONS`, in their
    order: k-NN and the linear probe on the same frozen CLS features of the checkpoint's default backbone, extracted
    once; the dense probe and the low-label fine-tune when the protocol has them). ``random_init``: the same
    architecture untrained (seed 0), the no-pretraining reference (its fine-tune is the from-scratch baseline).
    Returns (scores, wall seconds per evaluation as ``<name>_s``)."""
    ctx = EvalContext(run_dir, proto, device, random_init)
    metrics, wall = {}, {}
    for name, ev in evaluations():
        settings = ev.settings(proto)
        if settings is None:
            continue
        t0 = time.perf_counter()
        metrics.update(ev.run(ctx, settings))
        wall[f"{name}_s"] = time.perf_counter() - t0
    log("  " + "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    return metrics, wall


# ----------------------------------------------------------------------------------------------- ablation


def run_ablation(name: str, protocol: str = "cpu", seeds: int = 3, out_dir: str | Path = "runs/ablation",
                 data_root: str | None = None, overrides: list[str] | None = None, log: Log = print,
                 doc: str | Path | None = DEFAULT_DOC, variants: list[str] | None = None,
                 device=None, baseline: bool = True, shard: tuple[int, int] | None = None,
                 report_only: bool = False, teacher: str | None = None) -> dict | None:
    """Run (or continue) ablation ``name`` under ``protocol`` for seeds 0..seeds-1 and write the reports.

    ``variants`` restricts the run to some of the ablation's variants. ``baseline`` also evaluates the untrained
    architecture once (out_dir/random_init/), a reference row showing what pretraining added. ``doc``: the
    Markdown file whose marked section is regenerated (skipped when the file does not exist, or for the "tiny"
    protocol with the default doc). ``shard=(i, n)`` runs only every n-th run starting at the i-th (variants x
    seeds in order), so n processes (or n array jobs sharing ``out_dir``) split an ablation; a shard writes no
    report: rerun without ``shard`` once all shards are done, which evaluates the baseline and writes the reports.
    Returns the aggregate (also out_dir/results.json), or None when pretraining was interrupted (rerun to go on)
    or when running a shard. ``report_only`` trains and evaluates nothing: it writes the reports from the runs
    that have finished (a variant may then have fewer seeds than asked; the report gives each row's count).
    ``teacher``: the SOURCE of the frozen teacher the variants that read one take (the matrix's frozen column);
    without it they are skipped, with a line saying so.
    """
    import torch

    from mst.experiments.report import aggregate, update_results_doc, write_reports
    from mst.engine.trainer import NonFiniteLossError

    if name not in ABLATIONS:
        raise ConfigError(f"unknown ablation {name!r}; choose one of {', '.join(ABLATIONS)}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if seeds < 1:
        raise ConfigError(f"seeds={seeds} must be >= 1")
    if report_only and shard is not None:
        raise ConfigError("report_only and shard exclude each other: a shard writes no report")
    if shard is not None and not (len(shard) == 2 and shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ConfigError(f"shard={shard} must be (i, n) with 0 <= i < n")
    proto = PROTOCOLS[protocol]
    check_protocol(proto)
    chosen = [v for v in ABLATIONS[name].names if variants is None or v in variants]
    if variants is not None and len(chosen) != len(set(variants)):
        raise ConfigError(f"unknown variants {sorted(set(variants) - set(chosen))} for ablation {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logfile = open(out / "ablation.log", "a")

    def tee(msg: str) -> None:
        log(msg)
        logfile.write(msg + "\n")
        logfile.flush()

    var_keys = {o.split("=")[0] for v in ABLATIONS[name].variants for o in v.overrides}
    for o in overrides or []:
        if o.split("=")[0].strip() in var_keys:
            tee(f"note: --set {o} is overridden by the variants of ablation {name!r} that set the same key")
    # every config first: a bad override fails before hours of training
    skipped = [v for v in chosen if ABLATIONS[name].variant(v).teacher and not teacher]
    chosen = [v for v in chosen if v not in skipped]
    cfgs, refusals = _run_configs(name, chosen, seeds, proto, data_root, overrides, teacher)
    tee(f"ablation {name}: {len(chosen)} variants x {seeds} seeds, protocol {protocol} ({proto.description})")
    if skipped:
        tee(f"skipped (they read a frozen pretrained teacher: pass --teacher SOURCE): {', '.join(skipped)}")
    for variant, reason in refusals.items():
        tee(f"[{variant}] refused by its config, not trained: {reason}")
    todo = [] if report_only else list(cfgs.items())
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
            cpu = {"pretrain_s": pre.get("cpu_s"), "pretrain_steps": pre.get("steps"),
                   "eval_s": time.process_time() - c0, "threads": torch.get_num_threads()}
            res_path.write_text(json.dumps({
                "ablation": name, "variant": variant, "seed": seed, "protocol": protocol,
                "overrides": list(ABLATIONS[name].variant(variant).overrides), "metrics": metrics, "wall_s": wall,
                "cpu_s": cpu,
            }, indent=2))
            tee(f"[{variant} seed {seed}] done in {wall['total_s'] / 60:.1f} min: {res_path}")
        if shard is not None:
            tee(f"shard {shard[0]}/{shard[1]} finished; once every shard has, rerun without --shard to evaluate "
                "the random-init reference and write the reports")
            return None
        base_path = out / "random_init" / "results.json"
        if baseline and not report_only and not base_path.is_file():
            first = next((out / v / f"seed{s}" for (v, s) in cfgs if (out / v / f"seed{s}" / "results.json").is_file()),
                         None)
            if first is not None:
                tee("evaluating the untrained architecture (random init, seed 0) as a reference")
                metrics, wall = evaluate(first, proto, tee, device, random_init=True)
                base_path.parent.mkdir(exist_ok=True)
                base_path.write_text(json.dumps({"metrics": metrics, "wall_s": wall, "checkpoint_config": str(first)},
                                                indent=2))
        agg = aggregate(name, out, proto, seeds, chosen, failures=failures, user_overrides=overrides or [],
                        refused=refusals)
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
