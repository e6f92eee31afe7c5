"""Which tasks make up a meta-batch: games and seeds derived from (run seed, version, slot).

Deriving everything from those three numbers (rather than from a stateful RNG) makes a run
reproducible across processes, lets the distributed driver and the sequential loop plan the
very same tasks, and needs no RNG state in checkpoints to resume exactly.
"""

from __future__ import annotations

import numpy as np

from leap_rl.config import RunConfig
from leap_rl.envs import pool_games
from leap_rl.flavours import normalize_spec
from leap_rl.messages import TaskSpec


def meta_training_games(cfg: RunConfig) -> tuple[str, ...]:
    """The configured games (validated), or the derived pool when none are configured."""
    if cfg.meta.games:
        return tuple(normalize_spec(g) for g in cfg.meta.games)  # plain ids or flavoured specs
    return pool_games()


def derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


def sample_games(games: tuple[str, ...], count: int, run_seed: int, version: int) -> list[str]:
    """``count`` games for meta-step ``version``: without replacement when the pool allows."""
    rng = np.random.default_rng(derived_seed(run_seed, version, 0xBA7C))
    replace = count > len(games)
    return [games[i] for i in rng.choice(len(games), size=count, replace=replace)]


def task_id(version: int, slot: int) -> str:
    return f"v{version:05d}-t{slot:03d}"


def retry_id(original: str, attempt: int) -> str:
    """The id of a task's re-run: a new id, so late segments of the failed run never mix in."""
    return f"{original.split('-r')[0]}-r{attempt}"


def plan_tasks(cfg: RunConfig, games: tuple[str, ...], version: int) -> list[TaskSpec]:
    """The tasks of meta-step ``version``, all starting from φ_version."""
    chosen = sample_games(games, cfg.meta.tasks_per_step, cfg.seed, version)
    return [
        TaskSpec(task_id=task_id(version, slot), game=game, init_version=version,
                 seed=derived_seed(cfg.seed, version, slot), env_steps=cfg.meta.env_steps_per_task)
        for slot, game in enumerate(chosen)
    ]


PROBE_STREAM = 0x960BE


def probe_due(cfg: RunConfig, version: int) -> bool:
    """Whether φ_version is probed: φ_0, every ``runtime.probe_every`` versions, and the last."""
    r = cfg.runtime
    return r.probe_tasks > 0 and (version % r.probe_every == 0 or version == cfg.meta.meta_steps)


def plan_probes(cfg: RunConfig, games: tuple[str, ...], version: int) -> list[TaskSpec]:
    """The probe tasks of φ_version: the same games and seeds at every version (the games
    cycle through the meta-training games in order), so their path lengths compare like for
    like across meta-steps."""
    return [
        TaskSpec(task_id=f"probe-v{version:05d}-t{slot:03d}", game=games[slot % len(games)],
                 init_version=version, seed=derived_seed(cfg.seed, PROBE_STREAM, slot),
                 env_steps=cfg.meta.env_steps_per_task, probe=True)
        for slot in range(cfg.runtime.probe_tasks)
    ]
