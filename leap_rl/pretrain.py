"""``leap-rl pretrain``: the fine-tuning baseline's encoder, trained on the meta-training tasks.

The standard transfer baseline asks: does a meta-learned φ beat simply reusing a network that
was trained on the same tasks with the same experience? This trains ONE encoder through the
very tasks one sync meta-training run trains — meta-step v's tasks are ``plan_tasks(cfg,
games, v)``, the same games, seeds and env steps — one after another: every task gets fresh
heads and a fresh RMSProp (as TaskRunner makes them), and the encoder it ends with is the one
the next task starts from. It starts from the φ_0 meta-training starts from
(``initial_encoder(model, seed)``), and the total is the same meta_steps × tasks_per_step ×
env_steps_per_task env steps. Why sequential and not one multi-game agent with a shared
encoder and per-game heads: docs/TRANSFER.md.

The run directory is like a meta-training run's: config.toml, metrics.jsonl (``progress`` rows
of every task, a ``pretrain_task`` row after each), and checkpoint.pt, written atomically after
every task, with the encoder where ``load_encoder_file`` (and so ``--init``) finds it::

    {"kind": "pretrain", "version": tasks_done, "learner": {"phi": θ, "version": tasks_done},
     "pretrain": {"tasks_done", "tasks", "env_steps_total", "games", "diverged"}, "config": TOML}

``--resume`` continues at the next task; tasks are seeded by their specs, so with one torch
thread a resumed run ends at the same encoder as an uninterrupted one. A task whose agent
diverges is recorded and its encoder discarded: the next task starts from the last finite one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from leap_rl.config import ConfigError, RunConfig, dumps_toml, require_a2c_inner
from leap_rl.messages import TaskSpec
from leap_rl.run_dir import RunDir

KIND = "pretrain"


def pretrain_tasks(cfg: RunConfig) -> list[TaskSpec]:
    """The tasks of a sync meta-training run of ``cfg``, in order (meta-step by meta-step)."""
    from leap_rl.schedule import meta_training_games, plan_tasks
    games = meta_training_games(cfg)
    return [spec for version in range(cfg.meta.meta_steps) for spec in plan_tasks(cfg, games, version)]


def _state(cfg: RunConfig, tasks: list[TaskSpec], done: int, encoder: torch.Tensor, env_steps: int,
           diverged: list[str]) -> dict:
    from leap_rl.schedule import meta_training_games
    return {
        "kind": KIND, "version": done,
        "learner": {"phi": encoder.detach().cpu().clone(), "version": done},
        "pretrain": {"tasks_done": done, "env_steps_total": env_steps, "diverged": list(diverged),
                     "games": list(meta_training_games(cfg)),
                     "tasks": [{"task_id": t.task_id, "game": t.game, "seed": t.seed, "env_steps": t.env_steps}
                               for t in tasks]},
        "config": dumps_toml(cfg),
    }


def run_pretrain(cfg: RunConfig, run: RunDir, resume: bool = False, max_tasks: int | None = None,
                 echo=print) -> dict:
    """Train (or continue) the fine-tuning baseline's encoder; returns the last checkpoint.
    ``max_tasks``: stop after this many tasks in total (continue later with ``resume``)."""
    from leap_rl.models import initial_encoder
    from leap_rl.task import TaskRunner

    tasks = pretrain_tasks(cfg)
    if max_tasks is not None and max_tasks < 1:
        raise ConfigError(f"--tasks must be an integer ≥ 1, got {max_tasks}")
    state = run.load_checkpoint() if resume else None
    if resume and state is None:
        raise ConfigError(f"--resume: {str(run.path)!r} holds no checkpoint yet; start it again without --resume")
    if state is not None:
        if state.get("kind") != KIND:
            raise ConfigError(f"--resume: {str(run.path)!r} is not a `leap-rl pretrain` run")
        done = int(state["pretrain"]["tasks_done"])
        encoder = state["learner"]["phi"].float()
        env_steps = int(state["pretrain"]["env_steps_total"])
        diverged = list(state["pretrain"]["diverged"])
        echo(f"resuming: {done} of {len(tasks)} tasks done, {env_steps} env steps")
    else:
        done, env_steps, diverged = 0, 0, []
        encoder = initial_encoder(cfg.model, cfg.seed)  # meta-training's φ_0
        state = _state(cfg, tasks, done, encoder, env_steps, diverged)
        run.save_checkpoint(state)
    stop = len(tasks) if max_tasks is None else min(len(tasks), max_tasks)
    runner = TaskRunner(cfg)
    start = time.perf_counter()
    for k in range(done, stop):
        spec = tasks[k]

        def progress(row: dict, k: int = k) -> None:
            run.log({"event": "progress", "task": k, **row})

        result = runner.run(spec, encoder, on_progress=progress, keep_encoder=True)
        finite = result.encoder is not None and bool(torch.isfinite(result.encoder).all())
        if result.diverged or not finite:
            diverged.append(spec.task_id)  # keep the last finite encoder for the next task
        else:
            encoder = result.encoder
        env_steps += result.env_steps
        state = _state(cfg, tasks, k + 1, encoder, env_steps, diverged)
        run.save_checkpoint(state)  # before its row: a kill in between loses a row, never trains a task twice
        run.log({"event": "pretrain_task", "task": k, "task_id": spec.task_id, "game": spec.game,
                 "seed": spec.seed, "env_steps": result.env_steps, "env_steps_total": env_steps,
                 "episodes": len(result.episode_returns), "final_return_mean": result.final_return_mean,
                 "diverged": result.diverged or not finite, "seconds": result.seconds})
        echo(f"[{k + 1}/{len(tasks)}] {spec.game}: {result.env_steps} env steps in {result.seconds:.0f} s, "
             f"{len(result.episode_returns)} games, final score {result.final_return_mean:.1f}"
             + (" — DIVERGED (its encoder is dropped)" if spec.task_id in diverged else ""))
    echo(f"{state['pretrain']['tasks_done']} of {len(tasks)} tasks done, {env_steps} env steps, "
         f"{time.perf_counter() - start:.0f} s; encoder in {run.path}/checkpoint.pt")
    return state


def command(cfg: RunConfig, run: RunDir | None, run_dir: Path, tasks: int | None) -> int:
    """``leap-rl pretrain`` once cli.py has resolved the configuration (``run`` is the run
    being resumed, or None for a new one)."""
    require_a2c_inner(cfg, "leap-rl pretrain")
    if tasks is not None and tasks < 1:
        raise ConfigError(f"--tasks must be an integer ≥ 1, got {tasks}")
    resume = run is not None
    if run is None:
        run = RunDir.create(run_dir, cfg)
    m = cfg.meta
    print(f"pretraining the fine-tuning baseline: {m.meta_steps * m.tasks_per_step} tasks × "
          f"{m.env_steps_per_task} env steps (meta_steps × tasks_per_step of one meta-training run) "
          f"into {run.path}", flush=True)
    run_pretrain(cfg, run, resume=resume, max_tasks=tasks, echo=lambda s: print(s, flush=True))
    run.close()
    return 0
