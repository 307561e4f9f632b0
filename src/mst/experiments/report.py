"""Reports of an ablation: aggregate per-run results (mean ± std over seeds), a Markdown table, a bar plot, and
the regeneration of the ablation's marked section in docs/results.md."""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

from mst.experiments.evaluations import extra_metrics, metric_labels, plotted_metrics, table_metrics
from mst.experiments.specs import ABLATIONS, Protocol, protocol_dict


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value)."""
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def step_records(run_dir: Path) -> list[dict]:
    """The per-step records of a run's metrics.jsonl (none when it has no log)."""
    log = Path(run_dir) / "metrics.jsonl"
    if not log.is_file():
        return []
    return [r for r in map(json.loads, log.read_text().splitlines()) if "step" in r]


def last_step(records: list[dict]) -> int:
    """The last step a run logged (0 when none)."""
    return max((r["step"] for r in records), default=0)


def step_ms(run_dir: Path, records: list[dict] | None = None) -> float | None:
    """Median pretraining step time (ms) of a run, from the step times its metrics.jsonl logged (every log.every
    steps: the step's own time, so an AMT refresh or an evaluation between steps is not in it). Runs logged before
    ``step_ms`` existed: the per-rank batch over the logged images/s (one process: the same number)."""
    records = step_records(run_dir) if records is None else records
    times = [r["step_ms"] for r in records if r.get("step_ms")]
    if times:
        return statistics.median(times)
    cfg = Path(run_dir) / "config.yaml"
    rates = [r["images_per_s"] for r in records if r.get("images_per_s")]
    if not rates or not cfg.is_file():
        return None
    import yaml

    batch = yaml.safe_load(cfg.read_text())["optim"]["batch_size"]
    return 1000.0 * batch / statistics.median(rates)


def cpu_step_ms(run_dir: Path, result: dict, records: list[dict] | None = None) -> float | None:
    """Pretraining CPU milliseconds per step of a one-thread run (the CPU time of the process that finished the
    pretraining over the steps it trained; a run without that count was never resumed: its last logged step):
    unlike wall time, not inflated when other jobs share the cores; AMT's refresh passes are in it, amortised."""
    cpu = result.get("cpu_s") or {}
    if cpu.get("threads") != 1 or not cpu.get("pretrain_s"):
        return None
    steps = cpu.get("pretrain_steps")
    if not steps:
        steps = last_step(step_records(run_dir) if records is None else records)
    return 1000.0 * cpu["pretrain_s"] / steps if steps else None


def aggregate(name: str, out_dir: Path, proto: Protocol, seeds: int, variants: list[str],
              failures: list[dict] | None = None, user_overrides: list[str] | None = None,
              refused: dict[str, str] | None = None) -> dict:
    """Read every out_dir/<variant>/seed<k>/results.json and summarise them per variant; ``refused``:
    {variant: the config's reason} for variants that were not trained."""
    out_dir = Path(out_dir)
    rows = []
    for variant in variants:
        runs = []
        for seed in range(seeds):
            p = out_dir / variant / f"seed{seed}" / "results.json"
            if p.is_file():
                result, records = json.loads(p.read_text()), step_records(p.parent)
                steps = (result.get("cpu_s") or {}).get("pretrain_steps")
                runs.append({**result, "step_ms": step_ms(p.parent, records),
                             "cpu_step_ms": cpu_step_ms(p.parent, result, records),
                             "resumed": bool(steps) and steps < last_step(records)})
        stats = {}
        for m in table_metrics() + extra_metrics():  # every registered evaluation's scores
            vals = [r["metrics"][m] for r in runs if r["metrics"].get(m) is not None]
            if vals:
                mu, sd = mean_std(vals)
                stats[m] = {"mean": mu, "std": sd, "n": len(vals), "values": vals}
        for key in ("step_ms", "cpu_step_ms"):
            steps = [r[key] for r in runs if r[key]]
            if steps:
                mu, sd = mean_std(steps)
                stats[key] = {"mean": mu, "std": sd, "n": len(steps), "values": steps}
        wall = [r["wall_s"]["total_s"] for r in runs]
        spec = ABLATIONS[name].variant(variant)
        rows.append({
            "variant": variant,
            "cell": list(spec.cell) if spec.cell else None,
            "refused": (refused or {}).get(variant),
            "overrides": list(ABLATIONS[name].variant(variant).overrides),
            "preset": ABLATIONS[name].variant(variant).preset,
            "paper": ABLATIONS[name].variant(variant).paper,
            "n_seeds": len(runs),
            "seeds": [r["seed"] for r in runs],
            "stats": stats,
            "wall_s_per_run": {"mean": statistics.fmean(wall), "max": max(wall)} if wall else None,
            "runs": [{"seed": r["seed"], "metrics": r["metrics"], "wall_s": r["wall_s"], "cpu_s": r.get("cpu_s"),
                      "step_ms": r["step_ms"], "cpu_step_ms": r["cpu_step_ms"], "resumed": r["resumed"]}
                     for r in runs],
        })
    base = out_dir / "random_init" / "results.json"
    agg = {
        "ablation": name,
        "random_init": json.loads(base.read_text())["metrics"] if base.is_file() else None,
        "protocol": protocol_dict(proto),
        "seeds_requested": seeds,
        "out_dir": str(out_dir),
        "user_overrides": list(user_overrides or []),
        "paper_source": ABLATIONS[name].paper_source,
        "paper_label": ABLATIONS[name].paper_label,
        "metrics": [m for m in table_metrics() if any(m in r["stats"] for r in rows)],
        "variants": rows,
        "failures": list(failures or []),
        "total_wall_s": sum(r["wall_s_per_run"]["mean"] * r["n_seeds"] for r in rows if r["wall_s_per_run"]),
    }
    agg["spread"] = spread(agg)
    agg["summary"] = summary_text(agg)
    return agg


def spread(agg: dict) -> dict:
    """Per metric: the largest gap between variant means and the largest std over seeds of any variant."""
    out = {}
    for m in agg["metrics"]:
        cells = [r["stats"][m] for r in agg["variants"] if m in r["stats"]]
        if cells:
            means = [c["mean"] for c in cells]
            stds = [c["std"] for c in cells if c["n"] > 1] or [0.0]  # a single seed has no spread to count
            out[m] = {"max_gap": max(means) - min(means), "max_std": max(stds), "mean_std": statistics.fmean(stds)}
    return out


def summary_text(agg: dict) -> str:
    lines = [f"std across seeds (ablation {agg['ablation']}, protocol {agg['protocol']['name']}):"]
    for m in agg["metrics"]:
        parts = [f"{r['variant']} " + (f"{r['stats'][m]['std']:.2f}" if r["stats"][m]["n"] > 1 else "- (1 seed)")
                 for r in agg["variants"] if m in r["stats"]]
        s = agg["spread"].get(m)
        if s:
            lines.append(f"  {m}: {', '.join(parts)}; largest gap between variant means {s['max_gap']:.2f} "
                         f"({_verdict(s)})")
    return "\n".join(lines)


def _verdict(s: dict) -> str:
    if s["max_std"] == 0:
        return "one seed: no error estimate"
    ratio = s["max_gap"] / s["max_std"]
    return f"{ratio:.1f}x the largest seed std" + ("; within noise" if ratio < 2 else "")


def _fmt(cell: dict | None) -> str:
    if cell is None:
        return "–"
    if cell["n"] < 2:  # one seed: no spread to show (the Seeds column says so)
        return f"{cell['mean']:.2f}"
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}"


def _minutes(runs: list[dict]) -> str:
    """Mean pretraining wall time per run, and the process CPU time where it was recorded (on a shared machine
    the wall time grows with the load; one-thread CPU time is about the wall time of an unshared core). A run
    resumed from a checkpoint recorded only its last process's times: left out."""
    runs = [run for run in runs if not run.get("resumed")]
    wall = [run["wall_s"].get("pretrain_s") for run in runs if run["wall_s"].get("pretrain_s")]
    cpu = [(run.get("cpu_s") or {}).get("pretrain_s") for run in runs]
    cpu = [c for c in cpu if c]
    if not wall:
        return "–"
    return f"{statistics.fmean(wall) / 60:.1f}" + (f" / {statistics.fmean(cpu) / 60:.1f}" if cpu else "")


def markdown_table(agg: dict) -> str:
    metrics = agg["metrics"]
    labels = metric_labels()
    head = ["Variant", "Settings", *(labels.get(m, m) for m in metrics), "Pretraining, wall / CPU (min)", "Seeds",
            agg.get("paper_label") or "Paper"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in agg["variants"]:
        paper = "–" if r.get("paper") is None else f"{r['paper']:.1f}"
        settings = ([f"configs/{r['preset']}"] if r.get("preset") else []) + list(r["overrides"])
        values = [_fmt(r["stats"].get(m)) for m in metrics]
        if r.get("refused"):
            values = [f"refused: {r['refused']}"] + ["–"] * (len(metrics) - 1)
        cells = [r["variant"], "`" + " ".join(settings) + "`", *values, _minutes(r["runs"]), str(r["n_seeds"]),
                 paper]
        lines.append("| " + " | ".join(cells) + " |")
    if agg.get("random_init"):
        ref = agg["random_init"]
        cells = ["random init (reference)", "no pretraining",
                 *(f"{ref[m]:.2f}" if m in ref else "–" for m in metrics), "0", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_body(agg: dict) -> str:
    """The table plus what a reader needs to judge it (protocol, cost, spread over seeds)."""
    p = agg["protocol"]
    walls = [r["wall_s_per_run"]["mean"] for r in agg["variants"] if r["wall_s_per_run"]]
    n_runs = sum(r["n_seeds"] for r in agg["variants"])
    labels = metric_labels()
    out = [
        f"Protocol `{p['name']}`: {p['description']}. Values are mean ± sample std over seeds (a variant with one "
        "seed: its value; the checkpoint's default backbone: MST's teacher, MIM's encoder; k-NN and linear probe "
        "on frozen CLS features, dense = per-patch linear probe mIoU on Fashion-MNIST collages). The paper column "
        "is ImageNet, for the direction of the effect only.",
        "",
    ]
    if any(r.get("cell") for r in agg["variants"]):
        from mst.experiments.grid import grid_markdown

        out += [grid_markdown(agg), "", "Every run:", ""]
    out += [markdown_table(agg), ""]
    if agg.get("user_overrides"):
        out += [f"Extra overrides for every run: `{' '.join(agg['user_overrides'])}`.", ""]
    if max((r["n_seeds"] for r in agg["variants"]), default=0) < 2:
        out.append("One seed per variant: no estimate of the spread over seeds.")
    else:
        out.append("Spread over seeds: " + "; ".join(
            f"{labels.get(m, m)} largest gap between variants {s['max_gap']:.2f} vs largest seed std {s['max_std']:.2f}"
            + (" (within noise)" if s["max_std"] and s["max_gap"] < 2 * s["max_std"] else "")
            for m, s in agg["spread"].items()) + ".")
    if walls:
        out += ["", f"{n_runs} run{'s' if n_runs != 1 else ''}, {statistics.fmean(walls) / 60:.1f} min per run on average "
                    f"(pretraining + evaluation), {agg['total_wall_s'] / 3600:.2f} h in total."]
    for f in agg.get("failures", []):
        out += ["", f"FAILED: {f['variant']} seed {f['seed']}: {f['error']}"]
    return "\n".join(out)


def plot(agg: dict, path: Path) -> Path:
    if any(r.get("cell") for r in agg["variants"]):
        from mst.experiments.grid import grid_plot

        return grid_plot(agg, path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [r["variant"] for r in agg["variants"]]
    plotted = [m for m in plotted_metrics() if m in agg["metrics"]]
    labels = metric_labels()
    fig, axes = plt.subplots(1, len(plotted), figsize=(4.2 * len(plotted), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes[0], plotted):
        lo, hi = math.inf, -math.inf
        for i, r in enumerate(agg["variants"]):
            cell = r["stats"].get(m)
            if cell is None:
                continue
            c = colors[i % len(colors)]
            ax.bar(i, cell["mean"], yerr=cell["std"], color=c, alpha=0.75, capsize=4)
            ax.scatter([i] * len(cell["values"]), cell["values"], color="k", s=10, zorder=3)
            lo, hi = min(lo, min(cell["values"]), cell["mean"] - cell["std"]), \
                max(hi, max(cell["values"]), cell["mean"] + cell["std"])
        ref = (agg.get("random_init") or {}).get(m)
        if ref is not None:
            ax.axhline(ref, color="gray", ls="--", lw=1, label="random init")
            lo, hi = min(lo, ref), max(hi, ref)
            ax.legend(loc="lower right", fontsize=8)
        if math.isfinite(lo):  # zoom on the values: differences between variants are small
            pad = max(0.5, 0.25 * (hi - lo))
            ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_title(labels.get(m, m))
    fig.suptitle(f"ablation {agg['ablation']} ({agg['protocol']['name']} protocol): mean ± std over seeds, "
                 "dots = seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(agg: dict, out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    js, md, png = out_dir / "results.json", out_dir / "results.md", out_dir / "results.png"
    js.write_text(json.dumps(agg, indent=2))
    md.write_text(f"# Ablation `{agg['ablation']}`\n\n{markdown_body(agg)}\n")
    plot(agg, png)
    return [js, md, png]


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- ablation:{name}:start -->", f"<!-- ablation:{name}:end -->"


def update_results_doc(results_json: str | Path, doc_path: str | Path = "docs/results.md",
                       section: str | None = None) -> Path:
    """Replace what lies between ``<!-- ablation:NAME:start -->`` and ``<!-- ablation:NAME:end -->`` in
    ``doc_path`` with the table of ``results_json`` (NAME defaults to its ablation). Everything outside the
    markers is left byte for byte; a doc without the markers gets the section appended at its end."""
    agg = json.loads(Path(results_json).read_text())
    name = section or agg["ablation"]
    start, end = section_markers(name)
    doc_path = Path(doc_path)
    text = doc_path.read_text()
    cmd = (f"mst ablate {agg['ablation']} --protocol {agg['protocol']['name']} --seeds {agg['seeds_requested']} "
           f"--out {agg.get('out_dir', 'runs/ablation_' + agg['ablation'])}"
           + "".join(f" --set {o}" for o in agg.get("user_overrides", [])))
    body = f"{start}\n_Generated by `{cmd}`; do not edit by hand._\n\n{markdown_body(agg)}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if text.count(start) > 1:
        raise ValueError(f"{doc_path} has the marker {start} {text.count(start)} times: keep one section")
    if pattern.search(text):
        text = pattern.sub(lambda _: body, text, count=1)
    else:
        text = text.rstrip("\n") + f"\n\n## Ablation: {name}\n\n{body}\n"
    doc_path.write_text(text)
    return doc_path
