"""The single-worker A2C loop (``TaskRunner.run``) and what a task pays before its first step."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from bench.timing import Timing, clocks
from leap_rl.config import RunConfig
from leap_rl.envs import make_vec_env
from leap_rl.messages import TaskSpec
from leap_rl.task import TaskRunner


@dataclass(frozen=True)
class LoopTiming:
    timing: Timing
    """Between the first and the last progress callback: setup and the first updates excluded."""
    env_steps: int
    """Env steps inside ``timing``."""
    whole: Timing
    """The whole ``TaskRunner.run`` call, env and model creation included."""
    whole_env_steps: int


def bench_loop(cfg: RunConfig, game: str, env_steps: int, seed: int | None = None,
               runner: type = TaskRunner) -> LoopTiming:
    """``TaskRunner.run`` for ``env_steps`` (at least 4 updates), timed between progress rows
    so that building the env and the model is not counted (and as a whole call too).
    ``runner`` lets a before/after comparison pass another implementation of the loop."""
    per_update = cfg.env_steps_per_update
    updates = max(4, math.ceil(env_steps / per_update))
    log_every = max(1, updates // 10)
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, log_every=log_every))
    marks: list[tuple[int, float, float]] = []

    def progress(row: dict) -> None:
        marks.append((row["env_steps"], *clocks()))

    spec = TaskSpec("bench", game, 0, cfg.seed if seed is None else seed, updates * per_update)
    w0, c0 = clocks()
    result = runner(cfg).run(spec, None, on_progress=progress)
    w1, c1 = clocks()
    (s0, mw0, mc0), (s1, mw1, mc1) = marks[0], marks[-1]
    return LoopTiming(Timing(1, mw1 - mw0, mc1 - mc0), s1 - s0, Timing(1, w1 - w0, c1 - c0),
                      result.env_steps)


def bench_env_setup(cfg: RunConfig, game: str) -> dict:
    """What every task pays before its first step: ``make_vec_env`` (construction) and the
    seeded reset that ``TaskRunner.run`` does to get the first frames."""
    a = clocks()
    env = make_vec_env(game, cfg.env)
    b = clocks()
    env.reset(seed=cfg.seed)
    c = clocks()
    env.close()
    return {"make_vec_env_s": b[0] - a[0], "make_vec_env_cpu_s": b[1] - a[1],
            "seeded_reset_s": c[0] - b[0], "seeded_reset_cpu_s": c[1] - b[1]}
