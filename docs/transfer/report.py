"""The transfer experiment's tables, figure and per-seed numbers (docs/RESULTS.md §5).

    .venv/bin/python docs/transfer/report.py [RUNS_DIR] [--out docs/results]

RUNS_DIR (default runs/transfer) holds the two halves of docs/transfer/run.sh: ``games`` and
``flavours``, each with its meta-training runs (leap, reptile), its fine-tuning run (finetune)
and its evaluation (eval/results.json). Writes into --out:

- transfer.json: the per-seed AUC and final score of random, reptile, finetune and leap on
  every evaluation game (leap_rl.evaluate.transfer's shape; both halves merged);
- transfer.md: per game, every init's AUC and final score (mean ± sd over seeds), the
  primary test (Welch, AUC) of each init against random and of leap against finetune and
  reptile, with the 95 % interval, p and the difference detectable with 80 % power; and what
  meta-training did to φ (dormant units, the probe tasks' path length);
- transfer.png: the learning curves, one panel per game (mean over seeds, ± one standard error).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from leap_rl.evaluate.transfer import NAMES, write_transfer

HALVES = {"games": "held-out games (meta-trained on six pool games)",
          "flavours": "held-out flavours of SpaceInvaders (meta-trained on 15 others)"}
PAIRS = [("leap", "random"), ("reptile", "random"), ("finetune", "random"), ("leap", "finetune"),
         ("leap", "reptile")]


def read_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a torn last line of an interrupted run
    return rows


def meta_summary(run: Path) -> dict:
    """Dormant units and the probe path length at φ_0 and at the last probed version."""
    rows = read_rows(run / "metrics.jsonl")
    probes = sorted((r for r in rows if r.get("event") == "probe"), key=lambda r: r["version"])
    out = {"meta_steps": sum(r.get("event") == "meta_step" for r in rows)}
    if probes:
        first, last = probes[0], probes[-1]
        out.update(first_version=first["version"], last_version=last["version"],
                   dormant=[first.get("dormant_fraction"), last.get("dormant_fraction")],
                   probe_path=[first.get("probe_path_length"), last.get("probe_path_length")],
                   moved=last.get("moved_by_layer"))
    return out


def moved(run: Path) -> dict[str, float]:
    """How far each layer of the run's encoder moved from φ_0: ‖φ_l − φ_0,l‖ / ‖φ_0,l‖."""
    import tomllib

    from leap_rl.config import from_dict
    from leap_rl.diagnostics import layer_movement
    from leap_rl.models import ActorCritic, encoder_layout, initial_encoder
    from leap_rl.run_dir import load_encoder_file

    cfg = from_dict(tomllib.loads((run / "config.toml").read_text()))
    return layer_movement(load_encoder_file(run), initial_encoder(cfg.model, cfg.seed),
                          encoder_layout(ActorCritic(cfg.model, num_actions=1)))


def fmt(x: float | None, digits: int | None = None) -> str:
    """``digits`` None: 2 decimals below 10 (Breakout scores), 1 above."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:,.{digits if digits is not None else (2 if abs(x) < 10 else 1)}f}"


def pair(per_game: dict, a: str, b: str, metric: str = "auc") -> dict:
    for p in per_game["pairs"]:
        if (p["a"], p["b"]) == (a, b):
            return p[metric]
        if (p["a"], p["b"]) == (b, a):  # the other way round: negate
            q = dict(p[metric])
            q["diff"] = -q["diff"] if q["diff"] is not None else None
            q["ci95"] = [-q["ci95"][1], -q["ci95"][0]] if q["ci95"] else None
            return q
    raise KeyError((a, b))


def game_table(game: str, g: dict) -> list[str]:
    lines = [f"**{game}**", "",
             "| init | AUC (mean ± sd) | final score (mean ± sd) | seeds |", "|---|---|---|---|"]
    for name in NAMES:
        r = g["inits"][name]
        lines.append(f"| {name} | {fmt(r['auc']['mean'])} ± {fmt(r['auc']['sd'])} | "
                     f"{fmt(r['final']['mean'])} ± {fmt(r['final']['sd'])} | {r['auc']['n']} |")
    lines += ["", "| a − b | ΔAUC [95 % interval] | p (Welch) | p (permutation) | AUC detectable at 80 % power "
                  "| Δfinal [95 % interval] | p (Welch) |", "|---|---|---|---|---|---|---|"]

    def interval(c: dict) -> str:
        return f"[{fmt(c['ci95'][0])}, {fmt(c['ci95'][1])}]" if c["ci95"] else "—"

    for a, b in PAIRS:
        c, f = pair(g, a, b), pair(g, a, b, "final")
        lines.append(f"| {a} − {b} | {fmt(c['diff'])} {interval(c)} | {fmt(c['p_welch'], 3)} | "
                     f"{fmt(c['p_permutation'], 3)} | {fmt(c['mde80'])} | {fmt(f['diff'])} {interval(f)} | "
                     f"{fmt(f['p_welch'], 3)} |")
    return lines + [""]


def figure(results: dict[str, dict], out: Path) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    games = [(half, game) for half, r in results.items() for game in r["games"]]
    cols = 2
    rows = -(-len(games) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.3 * rows), squeeze=False)
    for ax, (half, game) in zip(axes.flat, games):
        g = results[half]["per_game"][game]
        x = np.asarray(g["grid"], float)
        for name in NAMES:
            c = g["inits"][name]["curve"]
            mean = np.asarray([np.nan if v is None else v for v in c["mean"]], float)
            sd = np.asarray([np.nan if v is None else v for v in c["sd"]], float)
            n = np.maximum(np.asarray(c["n"], float), 1)
            ax.plot(x, mean, label=name)
            ax.fill_between(x, mean - sd / np.sqrt(n), mean + sd / np.sqrt(n), alpha=0.2)
        ax.set_title(f"{game} ({half})", fontsize=9)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
        ax.set_xlabel("env steps")
        ax.set_ylabel("score, last 100 games")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="?", default=Path("runs/transfer"))
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    results = {half: json.loads((args.runs / half / "eval" / "results.json").read_text()) for half in HALVES}
    args.out.mkdir(parents=True, exist_ok=True)
    write_transfer(list(results.values()), args.out / "transfer.json")
    figure(results, args.out / "transfer.png")

    lines = ["# The transfer experiment (docs/transfer/run.sh)", "",
             "Made by `docs/transfer/report.py` from the evaluations' results.json; the per-seed numbers "
             "are in transfer.json. Primary metric: the AUC of the learning curve (the mean score over "
             "the evaluation's env-step grid), two-sided Welch t-test at α = 0.05.", ""]
    for half, title in HALVES.items():
        r = results[half]
        lines += [f"## {title}", "",
                  f"{len(r['seeds'])} seeds × {r['env_steps']:,} env steps per agent; seeds matched across inits.", ""]
        lines += ["| run | meta-steps | dormant units φ_0 → last | probe path length φ_0 → last | "
                  "moved from φ_0 (conv1, conv2, fc) |", "|---|---|---|---|---|"]
        for name in ("leap", "reptile", "finetune"):
            m = meta_summary(args.runs / half / name)
            move = ", ".join(f"{100 * v:.1f} %" for v in moved(args.runs / half / name).values())
            if "dormant" in m:
                d, p = m["dormant"], m["probe_path"]
                lines.append(f"| {name} | {m['meta_steps']} | {fmt(100 * d[0])} % → {fmt(100 * d[1])} % "
                             f"(φ_{m['last_version']}) | {fmt(p[0])} → {fmt(p[1])} ({fmt(p[1] / p[0], 3)}×) | "
                             f"{move} |")
            else:  # the fine-tuning run: no meta-steps, no probes
                lines.append(f"| {name} | — | — | — | {move} |")
        lines.append("")
        for game in r["games"]:
            lines += game_table(game, r["per_game"][game])
    (args.out / "transfer.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'transfer.json'}, {args.out / 'transfer.md'}, {args.out / 'transfer.png'}")


if __name__ == "__main__":
    main()
