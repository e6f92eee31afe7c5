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


def _label(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_run(run_dir: Path, out: Path | None = None, title: str | None = None) -> Path:
    """Task runs: score against env steps per game. Meta runs: also the path length (the
    training tasks' and the fixed probe tasks'), dormant and dead units of φ, and how far each
    layer of φ moved."""
    run = RunDir(run_dir, tensorboard=False)
    if not (Path(run_dir) / METRICS).exists():
        raise ConfigError(f"{str(run_dir)!r} holds no {METRICS}")
    rows = run.rows()  # read once: a torn last line is reported once
    progress = [r for r in rows if r.get("event") == "progress" and r.get("episode_return_mean") is not None]
    meta = [r for r in rows if r.get("event") == "meta_step"]
    # a re-run meta-step's probe replaces its first
    probes = {r["version"]: r for r in rows if r.get("event") == "probe"}
    plt = _pyplot()
    panels = 1 + (3 if meta else 0)
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
        # a training task of row v started from φ_{v−1}; a probe of version v from φ_v
        versions = [r["version"] - 1 for r in meta]
        ax = axes[0][1]
        ax.plot(versions, [r["path_length"] for r in meta], marker="o", label="meta-training tasks (games vary)")
        if probes:
            pv = sorted(probes)
            ax.plot(pv, [probes[v]["probe_path_length"] for v in pv], marker="s", color="C2",
                    label="fixed probe tasks (like for like)")
        _label(ax, "version of φ the tasks started from", "mean path length Σw")
        ax = axes[0][2]
        after = [r["version"] for r in meta]
        if all("dormant_fraction" in r for r in meta):
            ax.plot(after, [100 * r["dormant_fraction"] for r in meta], marker="o", color="C3",
                    label="dormant (ReDo score ≤ τ)")
        ax.plot(after, [100 * r["dead_unit_fraction"] for r in meta], marker="x", color="C1",
                label="dead (last layer, zero on every frame)")
        _label(ax, "meta-step (version of φ)", "units of φ on the probe frames (%)")
        ax = axes[0][3]
        for layer in meta[-1].get("moved_by_layer", {}):
            ax.plot(after, [100 * r["moved_by_layer"][layer] for r in meta], marker=".", label=layer)
        _label(ax, "meta-step (version of φ)", "‖φ_l − φ_0,l‖ / ‖φ_0,l‖ (%)")
    fig.tight_layout()
    out = Path(out) if out is not None else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
