"""results.md from an evaluation's results, and writing every report file."""

from __future__ import annotations

import math

from leap_rl.evaluate.analysis import analyse, init_info
from leap_rl.evaluate.figures import plot_curves, plot_meta
from leap_rl.evaluate.plan import CURVES_PNG, META_PNG, RANDOM, RESULTS_JSON, RESULTS_MD, Plan
from leap_rl.jsonio import atomic_write_text, dump_json


def fmt(x: float | None, digits: int | None = None) -> str:
    """``digits`` decimals; by default 2 below 10 in magnitude (small scores), else 1."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if digits is None:
        digits = 2 if abs(x) < 10 else 1
    return f"{x:.{digits}f}"


def _pm(s: dict) -> str:
    if s["mean"] is None:
        return "n/a"
    return fmt(s["mean"]) + (f" ± {fmt(s['sd'])}" if s["sd"] is not None else "") + \
        (f" (n={s['n']})" if s["n"] != len(s["per_seed"]) else "")


def _p(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


def _ci(c: list | None) -> str:
    return "n/a" if c is None else f"[{fmt(c[0])}, {fmt(c[1])}]"


def _power_line(g: dict) -> str | None:
    """What the design could detect against the random baseline, on the primary metric."""
    against = [(p["a"] if p["b"] == RANDOM else p["b"], p["auc"]) for p in g["pairs"] if RANDOM in (p["a"], p["b"])]
    if not against:
        return None
    parts = [f"{name} {fmt(c.get('mde80'))} (n={c['n_a']}+{c['n_b']})" for name, c in against]
    return ("Detectable against random on the primary metric (ΔAUC with 80 % power, two-sided Welch "
            "test, α = 0.05): " + "; ".join(parts) + ".")


def markdown(results: dict) -> str:
    inits = results["inits_info"]
    model = results["config"]["model"]
    lines = [f"# Evaluation: {len(results['seeds'])} seeds × {results['env_steps']} env steps per agent",
             "",
             f"Games: {', '.join(results['games'])}. Evaluation agents: model.network "
             f"{model['network']!r} (encoder_includes_fc={model['encoder_includes_fc']}), "
             f"{results['config']['env']['num_envs']} envs, A2C lr {results['config']['a2c']['lr']}, "
             f"seed {results['config']['seed']} (config.toml has all settings).",
             "",
             "**Primary metric: the AUC of the learning curve** (named before running); its test is the "
             "two-sided Welch t-test of the difference at α = 0.05. The final score and the permutation "
             "p-values are secondary. MDE80: the smallest difference that test detects with 80 % power "
             "given these seeds.",
             "", "## Initializations", "",
             f"| init | source | φ version | estimator | dead units ({results['config']['runtime']['dead_unit_probe']} "
             "probe frames of these games) | meta path length first → last |",
             "|---|---|---|---|---|---|"]
    for name in results["inits"]:
        i = inits[name]
        curve = [c for c in i["meta_curve"] if c["path_length"] is not None]
        path = (f"{fmt(curve[0]['path_length'], 3)} (v{curve[0]['version']}) → "
                f"{fmt(curve[-1]['path_length'], 3)} (v{curve[-1]['version']})") if curve else "—"
        lines.append(f"| {name} | `{i['source']}` | {i['version'] if i['version'] is not None else '—'} | "
                     f"{i['estimator']} | {100 * i['dead_unit_fraction']:.0f}% | {path} |")
    for game, g in results["per_game"].items():
        lines += ["", f"## {game}", "",
                  "| init | AUC mean ± sd | final mean ± sd | games finished | eval path length | diverged |",
                  "|---|---|---|---|---|---|"]
        for name in results["inits"]:
            r = g["inits"][name]
            lines.append(f"| {name} | {_pm(r['auc'])} | {_pm(r['final'])} | "
                         f"{fmt(r['games_finished']['mean'], 0)} | {fmt(r['eval_path_length']['mean'], 2)} | "
                         f"{r['diverged']} |")
        if g["pairs"]:
            lines += ["", "| a − b | ΔAUC [95% CI] | p Welch | p perm. | MDE80 AUC | Δfinal [95% CI] | "
                          "p Welch | p perm. | MDE80 final |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for p in g["pairs"]:
                auc, fin = p["auc"], p["final"]
                lines.append(f"| {p['a']} − {p['b']} | {fmt(auc['diff'])} {_ci(auc['ci95'])} | "
                             f"{_p(auc['p_welch'])} | {_p(auc['p_permutation'])} | {fmt(auc.get('mde80'))} | "
                             f"{fmt(fin['diff'])} {_ci(fin['ci95'])} | {_p(fin['p_welch'])} | "
                             f"{_p(fin['p_permutation'])} | {fmt(fin.get('mde80'))} |")
            power = _power_line(g)
            if power:
                lines += ["", power]
    lines += ["", f"![learning curves]({CURVES_PNG})"]
    if results.get("meta_plot"):
        lines += ["", f"![meta-training path length]({META_PNG})"]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def write_report(plan: Plan, echo=print) -> dict:
    """results.json, results.md, curves.png and meta.png from the run files; returns the results."""
    results = analyse(plan)
    results["inits_info"] = init_info(plan)
    plot_curves(results, plan.out / CURVES_PNG)
    results["meta_plot"] = plot_meta(results, plan.out / META_PNG)
    atomic_write_text(plan.out / RESULTS_MD, markdown(results))
    atomic_write_text(plan.out / RESULTS_JSON, dump_json(results))
    for game, g in results["per_game"].items():
        echo(f"{game}: " + "; ".join(
            f"{name} AUC {fmt(r['auc']['mean'])} final {fmt(r['final']['mean'])}"
            for name, r in g["inits"].items()))
    return results
