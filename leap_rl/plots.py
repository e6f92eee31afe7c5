"""PNG plots made from a run directory's metrics.jsonl (matplotlib, no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from leap_rl.config import ConfigError
from leap_rl.run_dir import METRICS, RunDir


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_run(run_dir: Path, out: Path | None = None, title: str | None = None) -> Path:
    """Task runs: score against env steps per game. Meta runs: also path length and dead units."""
    run = RunDir(run_dir, tensorboard=False)
    if not (Path(run_dir) / METRICS).exists():
        raise ConfigError(f"{str(run_dir)!r} holds no {METRICS}")
    progress = [r for r in run.rows("progress") if r.get("episode_return_mean") is not None]
    meta = run.rows("meta_step")
    plt = _pyplot()
    panels = 1 + (2 if meta else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    ax = axes[0][0]
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in progress:
        key = r["game"] if not meta else f"{r['game']} v{r.get('version', 0)}"
        curves[key].append((r["env_steps"], r["episode_return_mean"]))
    for key, points in sorted(curves.items()):
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=key)
    ax.set_xlabel("env steps (agent steps; frames = 4×)")
    ax.set_ylabel("raw score, mean of the last 100 games")
    ax.set_title(title or Path(run_dir).name)
    if curves:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if meta:
        versions = [r["version"] for r in meta]
        axes[0][1].plot(versions, [r["path_length"] for r in meta], marker="o")
        axes[0][1].set_xlabel("meta-step (version of φ)")
        axes[0][1].set_ylabel("mean path length Σw of the tasks")
        axes[0][1].grid(alpha=0.3)
        axes[0][2].plot(versions, [100 * r["dead_unit_fraction"] for r in meta], marker="o", color="C3")
        axes[0][2].set_xlabel("meta-step (version of φ)")
        axes[0][2].set_ylabel("dead encoder units on the probe (%)")
        axes[0][2].grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out) if out is not None else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
