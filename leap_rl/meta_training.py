"""Meta-training in one process (Algorithm 1 of the paper, synchronous), and the pieces that
the Ray driver shares with it: the learner with its guards, the probe batch and probe tasks,
the meta-step and probe rows, and the ``Recorder`` that turns a meta-step into history
(checkpoint and row) the same way for both runtimes.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from leap_rl.config import RunConfig, dumps_toml
from leap_rl.envs import make_vec_env
from leap_rl.messages import TaskResult
from leap_rl.meta_learner import MetaLearner, MetaUpdate
from leap_rl.diagnostics import encoder_diagnostics
from leap_rl.models import ActorCritic, dead_unit_fraction, encoder_layout, initial_encoder
from leap_rl.plasticity import DormantRecycler
from leap_rl.run_dir import RunDir
from leap_rl.schedule import derived_seed, meta_training_games, plan_probes, plan_tasks, probe_due
from leap_rl.task import TaskRunner

Printer = Callable[[str], None]


def probe_batch(cfg: RunConfig, games: tuple[str, ...], size: int) -> torch.Tensor:
    """A fixed batch of frames (random play, spread over the games) for the dead-unit probe."""
    frames = []
    per_game = -(-size // len(games))
    rng = np.random.default_rng(derived_seed(cfg.seed, 0x9B0BE))
    env_cfg = dataclasses.replace(cfg.env, num_envs=1)
    for game in games:
        env = make_vec_env(game, env_cfg)
        obs, _ = env.reset(seed=cfg.seed)
        for step in range(per_game * 8):
            obs, *_ = env.step(rng.integers(env.single_action_space.n, size=1))
            if step % 8 == 7:
                frames.append(obs[0].copy())
        env.close()
    return torch.from_numpy(np.stack(frames[:size]))


def encoder_dead_fraction(cfg: RunConfig, phi: torch.Tensor, probe: torch.Tensor) -> float:
    model = ActorCritic(cfg.model, num_actions=1)
    model.load_encoder(phi)
    return dead_unit_fraction(model, probe)


def build_meta_learner(cfg: RunConfig, probe: torch.Tensor | None = None) -> MetaLearner:
    """The learner of a run, from φ_0, with the plasticity guards its config asks for
    (recycling needs the probe frames)."""
    if cfg.meta.recycle_dormant and probe is None:
        raise ValueError("meta.recycle_dormant needs the probe frames")
    layout = encoder_layout(ActorCritic(cfg.model, num_actions=1))
    recycler = (DormantRecycler(cfg.model, probe, cfg.meta.recycle_tau, cfg.seed)
                if cfg.meta.recycle_dormant else None)
    return MetaLearner(initial_encoder(cfg.model, cfg.seed), cfg.meta, layout, recycler)


def phi_diagnostics(cfg: RunConfig, phi: torch.Tensor, probe: torch.Tensor) -> dict:
    """Dormant and dead units of φ, and how far each layer moved from φ_0."""
    return encoder_diagnostics(cfg.model, phi, initial_encoder(cfg.model, cfg.seed), probe,
                               cfg.runtime.dormant_tau)


def probe_row(version: int, results: list[TaskResult], diagnostics: dict) -> dict:
    """The ``"event": "probe"`` row: the fixed probe tasks trained from φ_version, and that
    φ's diagnostics (so φ_0's dormant fraction is on record too)."""
    return {
        "event": "probe", "version": version,
        "probe_path_length": float(np.mean([r.path_length for r in results])),
        "tasks": [{"game": r.game, "path_length": r.path_length,
                   "final_return_mean": r.final_return_mean} for r in results],
        **diagnostics,
    }


def meta_step_row(update: MetaUpdate, results: list[TaskResult], diagnostics: dict,
                  env_steps_total: int, seconds: float, elapsed: float) -> dict:
    """The ``"event": "meta_step"`` row of metrics.jsonl; ``diagnostics`` from ``phi_diagnostics``.

    Speed counts every task run; the other figures only the tasks that entered the update.
    """
    steps = sum(r.env_steps for r in results)
    results = [r for r in results if r.task_id in update.tasks]
    by_game: dict[str, list[TaskResult]] = defaultdict(list)
    for r in results:
        by_game[r.game].append(r)
    mean = lambda xs: float(np.mean(xs)) if len(xs) else float("nan")  # noqa: E731
    return {
        "event": "meta_step",
        "version": update.version,
        "tasks": len(update.tasks),
        "games": list(update.games),
        "path_length": mean([r.path_length for r in results]),
        "meta_grad_norm": update.meta_grad_norm,
        **diagnostics,
        "units_bounded": update.units_bounded,
        **({} if update.recycled is None else
           {"recycled_units": sum(len(u) for u in update.recycled.values()),
            "recycled_by_layer": {k: len(u) for k, u in update.recycled.items()}}),
        "env_steps_total": env_steps_total,
        "fps": steps / max(seconds, 1e-9),
        "seconds": seconds,
        "elapsed": elapsed,
        "dropped_stale": len(update.dropped_stale),
        "max_staleness_seen": max(update.staleness, default=0),
        "stale_weighted": sum(w < 1.0 for w in update.weights),
        "min_task_weight": min(update.weights, default=1.0),
        "episode_return_mean": {g: mean([r.final_return_mean for r in rs if r.episode_returns])
                                for g, rs in by_game.items()},
        "param_part_norm": {g: mean([r.param_part_norm for r in rs]) for g, rs in by_game.items()},
        "loss_part_norm": {g: mean([r.loss_part_norm for r in rs]) for g, rs in by_game.items()},
    }


@dataclass
class Totals:
    """The run's running totals, kept in every checkpoint."""

    env_steps_total: int = 0
    """Env steps of every meta-training task that ran to its end."""
    elapsed: float = 0.0
    env_steps_trained: int = 0
    """Every env step trained for meta-training: also those of tasks that were stopped (their
    segments refused), failed or lost with their worker. Probe tasks are not counted."""
    env_steps_used: int = 0
    """Env steps of the tasks whose contributions entered an update of φ."""
    next_ticket: int | None = None
    """Async mode: the next ticket (game and seed) to hand out, so a resume starts fresh games
    and seeds instead of repeating those of the lost tasks."""

    @classmethod
    def of(cls, state: dict) -> "Totals":
        """From a checkpoint (those of older runs lack the trained and used counts)."""
        return cls(int(state["env_steps_total"]), float(state["elapsed"]),
                   int(state.get("env_steps_trained", state["env_steps_total"])),
                   int(state.get("env_steps_used", 0)), state.get("next_ticket"))


def checkpoint_state(cfg: RunConfig, learner_state: dict, totals: Totals, row: dict | None = None) -> dict:
    """What a checkpoint holds; ``row``: the meta_step row of the step it records."""
    state = {
        "learner": learner_state,
        "version": learner_state["version"],
        "env_steps_total": totals.env_steps_total,
        "elapsed": totals.elapsed,
        "env_steps_trained": totals.env_steps_trained,
        "env_steps_used": totals.env_steps_used,
        "torch_rng": torch.get_rng_state(),
        "config": dumps_toml(cfg),
    }
    if row is not None:
        state["meta_step_row"] = row
    if totals.next_ticket is not None:  # async mode's place in its sequence of games and seeds
        state["next_ticket"] = totals.next_ticket
    return state


class Recorder:
    """Turns a meta-step into history, the same way for the Ray and the sequential runtime.

    The checkpoint is the commit point: it is written first and carries the step's meta_step
    row, and the row is appended to metrics.jsonl after it. A crash between the two leaves a
    checkpoint whose row is missing from the file, and ``resume`` appends it; a crash before
    the checkpoint leaves neither, and the resumed run re-does the step. So every version has
    exactly one meta_step row (a fallback to the previous checkpoint re-makes rows, which the
    ``start`` row of the resumed session supersedes: ``RunDir.rows``)."""

    def __init__(self, cfg: RunConfig, run: RunDir, probe: torch.Tensor) -> None:
        self.cfg, self.run, self.probe = cfg, run, probe
        self.totals = Totals()

    def resume(self) -> dict | None:
        """The checkpoint to go on from (None when the run has none), checked against the
        run's config; restores the totals and the RNG, and appends the meta_step row that a
        crash kept out of metrics.jsonl."""
        state = self.run.load_checkpoint(expect=self.cfg)
        if state is None:
            return None
        self.totals = Totals.of(state)
        torch.set_rng_state(state["torch_rng"])
        row = state.get("meta_step_row")
        if row is not None:
            logged = [r.get("version", 0) for r in self.run.rows("meta_step")]
            if max(logged, default=0) < row["version"]:
                self.run.log(row)
        return state

    def start(self, resume: bool, version: int, **details) -> None:
        """The ``start`` row of a session; its version is where this session's history goes on."""
        self.run.log({"event": "start", "resume": resume, "version": version, **details})

    def commit(self, update: MetaUpdate, results: list[TaskResult], learner_state: dict,
               seconds: float, lost_env_steps: int = 0) -> dict:
        """Record meta-step ``update.version``: ``results`` are the tasks that ran to their end
        (whether or not they entered the update), ``lost_env_steps`` the env steps trained in
        this meta-step by tasks that did not (stopped, failed, lost with a worker)."""
        t = self.totals
        t.env_steps_total += sum(r.env_steps for r in results)
        t.env_steps_trained += sum(r.env_steps for r in results) + lost_env_steps
        t.env_steps_used += sum(r.env_steps for r in results if r.task_id in update.tasks)
        t.elapsed += seconds
        row = meta_step_row(update, results, phi_diagnostics(self.cfg, learner_state["phi"], self.probe),
                            t.env_steps_total, seconds, t.elapsed)
        row["env_steps_trained"], row["env_steps_used"] = t.env_steps_trained, t.env_steps_used
        self.run.save_checkpoint(checkpoint_state(self.cfg, learner_state, t, row))
        self.run.log(row)
        return row


def run_sequential(cfg: RunConfig, run: RunDir, resume: bool = False,
                   echo: Printer = print) -> MetaLearner:
    """All tasks of every meta-step, one after another, in this process."""
    games = meta_training_games(cfg)
    probe = probe_batch(cfg, games, cfg.runtime.dead_unit_probe)
    learner = build_meta_learner(cfg, probe)
    recorder = Recorder(cfg, run, probe)
    state = recorder.resume() if resume else None
    if state is not None:
        learner.load_state_dict(state["learner"])
    recorder.start(resume, learner.version, mode="sequential", games=list(games))
    runner = TaskRunner(cfg)
    logged_rejections = 0

    def run_probes(version: int, phi: torch.Tensor) -> None:
        if probe_due(cfg, version):
            row = probe_row(version, [runner.run(spec, phi) for spec in plan_probes(cfg, games, version)],
                            phi_diagnostics(cfg, phi, probe))
            run.log(row)
            echo(format_probe(row))

    while learner.version < cfg.meta.meta_steps:
        start = time.perf_counter()
        version, phi = learner.current()
        run_probes(version, phi)
        results = []
        for spec in plan_tasks(cfg, games, version):
            result = runner.run(spec, phi, learner.add_segment,
                                lambda row: run.log({"event": "progress", "version": version, **row}))
            results.append(result)
            run.log({"event": "task_done", "version": version, **_task_row(result)})
            while logged_rejections < len(learner.rejections):
                rejection = learner.rejections[logged_rejections]
                run.log({"event": "rejected_segment", **rejection.__dict__})
                echo(f"rejected a segment of {rejection.task_id} ({rejection.game}): {rejection.reason}")
                logged_rejections += 1
        update = learner.step([r.task_id for r in results if not learner.is_dropped(r.task_id)])
        row = recorder.commit(update, results, learner.state_dict(), time.perf_counter() - start)
        echo(format_meta_step(row, cfg.meta.meta_steps))
    if state is None or state["version"] < cfg.meta.meta_steps:  # a finished run was probed
        run_probes(*learner.current())  # the final φ
    return learner


def _task_row(result: TaskResult) -> dict:
    row = {k: v for k, v in result.__dict__.items() if k != "episode_returns"}
    row["episodes"] = len(result.episode_returns)
    return row


def format_meta_step(row: dict, total: int) -> str:
    returns = ", ".join(f"{g} {v:.1f}" for g, v in row["episode_return_mean"].items() if v == v)
    return (f"meta-step {row['version']}/{total}: {row['tasks']} tasks, path length "
            f"{row['path_length']:.3f}, |G| {row['meta_grad_norm']:.3g}, dormant units "
            f"{100 * row['dormant_fraction']:.1f}% (dead {100 * row['dead_unit_fraction']:.0f}%), "
            f"{row['fps']:.0f} env steps/s" + _used_share(row) + (f", scores: {returns}" if returns else ""))


def _used_share(row: dict) -> str:
    trained = row.get("env_steps_trained", 0)
    return f", {100 * row['env_steps_used'] / trained:.0f}% of trained env steps used" if trained else ""


def format_probe(row: dict) -> str:
    return (f"probe of φ_{row['version']}: path length {row['probe_path_length']:.3f} "
            f"over {len(row['tasks'])} fixed tasks; dormant units {100 * row['dormant_fraction']:.1f}%")
