"""Tables and a plot of the diagnosis runs (docs/diagnosis/run.sh) for docs/RESULTS.md §3.

    .venv/bin/python docs/diagnosis/report.py [RUNS_DIR] [--out docs/results]

Per variant, over its seeds: φ's ReDo-dormant fraction at φ_0 and at the last meta-step, the
fixed probe tasks' path length at each probed version relative to φ_0 (like for like: the same
games and seeds), how far each layer of φ moved, and the probe agents' final scores.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

ORDER = ["adam", "sgd", "adam_bounded", "rmsprop_tf", "conv_only", "value_f", "recycle",
         "layer_norm", "reptile"]


def read_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a torn last line of an interrupted run
    return rows


def load_runs(root: Path) -> dict[str, list[dict]]:
    """variant → one summary per finished seed."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for metrics in sorted(root.glob("*-s*/metrics.jsonl")):
        name, seed = metrics.parent.name.rsplit("-s", 1)
        rows = read_rows(metrics)
        meta = [r for r in rows if r.get("event") == "meta_step"]
        probes = {r["version"]: r for r in rows if r.get("event") == "probe"}
        if not meta or meta[-1]["version"] < _meta_steps(metrics.parent) or meta[-1]["version"] not in probes:
            continue  # not finished
        first_dormant = _phi0_dormant(metrics.parent)
        runs[name].append({
            "seed": int(seed),
            "dormant": [first_dormant] + [r["dormant_fraction"] for r in meta],
            "dead": [r["dead_unit_fraction"] for r in meta],
            "dormant_by_layer": meta[-1]["dormant_by_layer"],
            "moved": meta[-1]["moved_by_layer"],
            "probe": {v: p["probe_path_length"] for v, p in sorted(probes.items())},
            "probe_scores": {v: float(np.mean([t["final_return_mean"] for t in p["tasks"]
                                               if t["final_return_mean"] is not None]))
                             for v, p in sorted(probes.items())},
            "path_length": [r["path_length"] for r in meta],
        })
    return runs


def _meta_steps(run_dir: Path) -> int:
    import tomllib
    return tomllib.loads((run_dir / "config.toml").read_text())["meta"]["meta_steps"]


def _phi0_dormant(run_dir: Path) -> float:
    """The dormant fraction of φ_0 (no meta_step row carries it): recomputed from the run's config."""
    import tomllib

    from leap_rl.config import from_dict
    from leap_rl.meta_training import phi_diagnostics, probe_batch
    from leap_rl.models import initial_encoder
    from leap_rl.schedule import meta_training_games

    cfg = from_dict(tomllib.loads((run_dir / "config.toml").read_text()))
    probe = probe_batch(cfg, meta_training_games(cfg), cfg.runtime.dead_unit_probe)
    return phi_diagnostics(cfg, initial_encoder(cfg.model, cfg.seed), probe)["dormant_fraction"]


def table(runs: dict[str, list[dict]]) -> str:
    lines = ["| variant | seeds | dormant φ_0 → φ_6 (%) | Δ points (per seed) | dormant by layer at φ_6 (%) "
             "| probe path length φ_3, φ_6 / φ_0 (per seed) | φ moved at φ_6 (%, by layer) "
             "| probe score φ_0 → φ_6 |",
             "|---|---|---|---|---|---|---|---|"]
    for name in [n for n in ORDER if n in runs] + sorted(set(runs) - set(ORDER)):
        rs = sorted(runs[name], key=lambda r: r["seed"])
        d0 = np.mean([r["dormant"][0] for r in rs]) * 100
        d1 = np.mean([r["dormant"][-1] for r in rs]) * 100
        deltas = ", ".join(f"{100 * (r['dormant'][-1] - r['dormant'][0]):+.1f}" for r in rs)
        layers = rs[0]["dormant_by_layer"]
        by_layer = ", ".join(f"{k} {100 * np.mean([r['dormant_by_layer'][k] for r in rs]):.0f}" for k in layers)
        last = max(rs[0]["probe"])
        mid = sorted(rs[0]["probe"])[len(rs[0]["probe"]) // 2]
        ratios = "; ".join(f"{r['probe'][mid] / r['probe'][0]:.3f}, {r['probe'][last] / r['probe'][0]:.3f}"
                           for r in rs)
        moved = ", ".join(f"{k} {100 * np.mean([r['moved'][k] for r in rs]):.2f}" for k in rs[0]["moved"])
        s0 = np.mean([r["probe_scores"][0] for r in rs])
        s1 = np.mean([r["probe_scores"][last] for r in rs])
        lines.append(f"| {name} | {len(rs)} | {d0:.1f} → {d1:.1f} | {deltas} | {by_layer} | {ratios} "
                     f"| {moved} | {s0:.0f} → {s1:.0f} |")
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    names = [n for n in ORDER if n in runs] + sorted(set(runs) - set(ORDER))
    for i, name in enumerate(names):
        rs = runs[name]
        color = plt.get_cmap("tab20")(i % 20)  # more variants than the default cycle has colours
        dormant = np.mean([r["dormant"] for r in rs], axis=0) * 100
        axes[0].plot(range(len(dormant)), dormant, marker="o", color=color, label=name)
        versions = sorted(rs[0]["probe"])
        ratio = np.mean([[r["probe"][v] / r["probe"][0] for v in versions] for r in rs], axis=0)
        axes[1].plot(versions, ratio, marker="s", color=color, label=name)
    axes[0].set_xlabel("version of φ")
    axes[0].set_ylabel("φ's units with ReDo score ≤ 0.1 (%)")
    axes[0].set_title("dormant units of φ (mean over seeds)")
    axes[1].set_xlabel("version of φ the probe tasks started from")
    axes[1].set_ylabel("probe path length / at φ_0")
    axes[1].set_title("what Leap minimizes, like for like (mean over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="?", type=Path, default=Path("runs/diagnosis"))
    p.add_argument("--out", type=Path, default=Path("docs/results"))
    args = p.parse_args()
    import torch
    torch.set_num_threads(1)
    runs = load_runs(args.runs)
    if not runs:
        raise SystemExit(f"no finished diagnosis runs under {args.runs}")
    md = table(runs)
    (args.out / "diagnosis.md").write_text(md + "\n")
    (args.out / "diagnosis.json").write_text(json.dumps(runs, indent=1) + "\n")
    plot(runs, args.out / "diagnosis.png")
    print(md)
    print(f"wrote {args.out / 'diagnosis.md'}, diagnosis.json and diagnosis.png")


if __name__ == "__main__":
    main()
