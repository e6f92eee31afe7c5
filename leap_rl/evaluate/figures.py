"""curves.png (learning curves per game) and meta.png (meta-training path length, dead units)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(results: dict, path: Path) -> None:
    plt = _pyplot()
    games = results["games"]
    cols = min(3, len(games))
    rows = -(-len(games) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax, game in zip(axes.flat, games):
        g = results["per_game"][game]
        xs = np.asarray(g["grid"], float)
        for k, name in enumerate(results["inits"]):
            c = g["inits"][name]["curve"]
            mean = np.asarray(c["mean"], float)
            ax.plot(xs, mean, color=f"C{k}", linestyle=("-", "--", "-.", ":")[k % 4],
                    label=f"{name} (n={len(results['seeds'])})")
            ax.fill_between(xs, np.asarray(c["min"], float), np.asarray(c["max"], float),
                            color=f"C{k}", alpha=0.15, linewidth=0)
        ax.set_title(game)
        ax.set_xlabel("env steps (agent steps; frames = frame skip ×)")
        ax.set_ylabel("score, last 100 games (mean; band min–max)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(games):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_meta(results: dict, path: Path) -> bool:
    curves = {n: results["inits_info"][n]["meta_curve"] for n in results["inits"]}
    curves = {n: c for n, c in curves.items() if c}
    if not curves:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for k, (name, curve) in enumerate(curves.items()):
        v = [c["version"] for c in curve]
        axes[0][0].plot(v, [np.nan if c["path_length"] is None else c["path_length"] for c in curve],
                        marker="o", color=f"C{k}", label=name)
        axes[0][1].plot(v, [np.nan if c["dead_unit_fraction"] is None else 100 * c["dead_unit_fraction"]
                            for c in curve], marker="o", color=f"C{k}", label=name)
    axes[0][0].set_ylabel("mean path length Σw of the meta-training tasks")
    axes[0][1].set_ylabel("dead encoder units on the run's probe (%)")
    from matplotlib.ticker import MaxNLocator
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("meta-step (version of φ)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
