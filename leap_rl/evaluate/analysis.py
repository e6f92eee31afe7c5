"""From the run files of an evaluation to its results: curves, AUC, final scores, comparisons.

Project choices (not from the paper): the score is raw (not human-normalised); the curve at a
grid point is the mean of the last 100 finished games, undefined before the first game ends,
and the AUC is the mean over the grid points where it is defined. The AUC is the primary
metric (see ``stats``).
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from leap_rl.evaluate.plan import FORMAT, RANDOM, Plan, phi_for, run_file
from leap_rl.evaluate.stats import ALPHA, POWER, compare, summary

FEW_SEEDS = 5
"""Below this many seeds per init the report warns that the intervals and p-values are rough."""
PRIMARY_METRIC = "auc"


def finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def meta_curve(run_dir: Path | None) -> list[dict]:
    """Mean path length and dead-unit fraction per version from a run's meta_step rows."""
    if run_dir is None:
        return []
    from leap_rl.run_dir import RunDir
    by_version: dict[int, list[dict]] = {}
    for row in RunDir(run_dir, tensorboard=False).rows("meta_step"):
        if isinstance(row.get("version"), int):
            by_version.setdefault(row["version"], []).append(row)
    curve = []
    for version, rows in sorted(by_version.items()):
        lengths = [x for x in (finite(r.get("path_length")) for r in rows) if x is not None]
        dead = [x for x in (finite(r.get("dead_unit_fraction")) for r in rows) if x is not None]
        curve.append({"version": version, "path_length": float(np.mean(lengths)) if lengths else None,
                      "dead_unit_fraction": float(np.mean(dead)) if dead else None})
    return curve


def describe_estimator(leap: dict | None) -> str:
    if not leap:
        return "—"
    metric, loss, stab = leap.get("metric"), leap.get("loss"), leap.get("stabilizer")
    normalized = ", tasks normalized" if leap.get("normalize_tasks") else ""
    if metric == "energy" and loss is False:
        return f"Reptile (energy, no loss term{normalized})"
    parts = [str(metric), "loss" if loss else "no loss"]
    if loss:
        parts.append("stabilizer" if stab else "no stabilizer")
    return "Leap (" + ", ".join(parts) + normalized + ")"


def describe_pretrain(record: dict | None) -> str:
    """The fine-tuning baseline's estimator column: what its encoder was trained on."""
    record = record or {}
    tasks, done = record.get("tasks", []), record.get("tasks_done")
    games = record.get("games", [])
    text = (f"fine-tuning baseline: one encoder through {done} of {len(tasks)} meta-training tasks "
            f"in turn ({record.get('env_steps_total')} env steps, {len(games)} games)")
    if record.get("diverged"):
        text += f", {len(record['diverged'])} diverged and dropped"
    return text


def init_info(plan: Plan) -> dict[str, dict]:
    """Per init: its source, φ version, estimator, dead units on the probe, meta curve."""
    from leap_rl.meta_training import encoder_dead_fraction, probe_batch

    probe = probe_batch(plan.cfg, plan.games, plan.cfg.runtime.dead_unit_probe)
    info = {}
    for init in plan.inits:
        if init.phi is None:
            dead = [encoder_dead_fraction(plan.cfg, phi_for(plan, init, i), probe) for i in range(len(plan.seeds))]
            info[init.name] = {"source": RANDOM, "version": None, "estimator": "random initialization",
                               "dead_unit_fraction": float(np.mean(dead)), "dead_unit_fraction_per_seed": dead,
                               "meta_curve": []}
        else:
            estimator = describe_pretrain(init.pretrain) if init.kind == "pretrain" else describe_estimator(init.leap)
            info[init.name] = {"source": init.source, "version": init.version, "kind": init.kind,
                               "estimator": estimator, "leap": init.leap, "pretrain": init.pretrain,
                               "dead_unit_fraction": encoder_dead_fraction(plan.cfg, init.phi, probe),
                               "meta_curve": meta_curve(init.run_dir)}
    return info


def _curves(runs: list[dict], grid: list[int]) -> np.ndarray:
    """(seeds, grid points) scores; NaN where no game had finished yet."""
    where = {s: k for k, s in enumerate(grid)}
    curves = np.full((len(runs), len(grid)), np.nan)
    for j, r in enumerate(runs):
        for p in r["progress"]:
            if p["episode_return_mean"] is not None:
                curves[j, where[p["env_steps"]]] = p["episode_return_mean"]
    return curves


def analyse(plan: Plan) -> dict:
    """results.json from the run files of this plan."""
    from leap_rl.config import to_dict
    games: dict[str, dict] = {}
    names = [i.name for i in plan.inits]
    for game in plan.games:
        runs = {name: [json.loads(run_file(plan.out, game, name, i).read_text())
                       for i in range(len(plan.seeds))] for name in names}
        grid = sorted({p["env_steps"] for rs in runs.values() for r in rs for p in r["progress"]})
        per_init = {}
        for name, rs in runs.items():
            curves = _curves(rs, grid)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # 'mean of empty slice' for all-NaN columns
                auc = [float(np.nanmean(c)) if np.isfinite(c).any() else None for c in curves]
                curve = {"mean": np.nanmean(curves, axis=0), "sd": np.nanstd(curves, axis=0, ddof=1)
                         if len(rs) > 1 else np.full(len(grid), np.nan),
                         "min": np.nanmin(curves, axis=0), "max": np.nanmax(curves, axis=0),
                         "n": np.isfinite(curves).sum(axis=0)}
            per_init[name] = {
                "curve": curve, "auc": summary(auc),
                "final": summary([finite(r["final_return_mean"]) for r in rs]),
                "games_finished": summary([float(r["episodes"]) for r in rs]),
                "eval_path_length": summary([finite(r["path_length"]) for r in rs]),
                "diverged": sum(bool(r["diverged"]) for r in rs),
                "seconds": float(sum(r["seconds"] for r in rs)),
            }
        pairs = []
        for a, b in itertools.combinations(names, 2):
            pairs.append({"a": a, "b": b, **{metric: compare(per_init[a][metric], per_init[b][metric])
                                              for metric in ("auc", "final")}})
        games[game] = {"grid": grid, "inits": per_init, "pairs": pairs}
    notes = [
        f"primary metric: {PRIMARY_METRIC} (named before running); its test: the two-sided Welch "
        f"t-test of a − b at α = {ALPHA}; final score and the permutation p-value are secondary",
        "score: raw game score, mean of the last 100 finished games (whole games, not lives)",
        "auc: mean of the learning curve over the common env-step grid, over the points where at "
        "least one game had finished",
        "final: mean score of the last 100 games at the end of training",
        "pairs: a − b; ci95 from Welch's t; p_welch two-sided Welch t-test; p_permutation exact "
        "(or Monte Carlo) two-sided permutation test of the difference of means",
        f"mde80: the smallest true difference the two-sided Welch test at α = {ALPHA} detects with "
        f"{POWER:.0%} power given these seeds' standard deviations and counts: "
        "(t_{1−α/2,df} + t_{0.8,df})·sqrt(s_a²/n_a + s_b²/n_b), Welch–Satterthwaite df",
        "seeds are matched across inits (same env seed, heads and sampler seed): only φ differs",
        "eval_path_length: Σw of each evaluation agent's encoder path, measured with the evaluation "
        "config's leap section",
    ]
    if len(plan.seeds) < FEW_SEEDS:
        notes.append(f"only {len(plan.seeds)} seed(s) per init: intervals are wide and p-values rough; "
                     f"with n seeds per side the permutation p-value cannot go below "
                     f"{1 / math.comb(2 * len(plan.seeds), len(plan.seeds)) * 2:.3g}")
    return {"format": FORMAT, "env_steps": plan.env_steps, "seeds": plan.seeds, "games": plan.games,
            "inits": names, "primary_metric": PRIMARY_METRIC, "alpha": ALPHA, "power": POWER,
            "config": to_dict(plan.cfg), "config_sha": plan.config_sha, "per_game": games, "notes": notes}
