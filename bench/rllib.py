"""Leap over RLlib (``inner = "rllib"``) beside this project's A2C loop: one task each, same
game, network, φ_0 and env steps, Leap streaming on in both (segments go nowhere).

What one env step costs differs by design: A2C takes one gradient step per ``num_envs ×
unroll`` env steps, PPO ``num_epochs × train_batch / minibatch`` per ``train_batch``; gradient
steps/s is reported too. Building the RLlib Algorithm is paid once per task and reported apart.
RLlib needs a Ray session even with everything in the process: the caller provides it.
"""

from __future__ import annotations

import dataclasses
import time

from leap_rl.config import RunConfig, merge
from leap_rl.messages import TaskSpec
from leap_rl.models import initial_encoder


def rllib_config(cfg: RunConfig, algorithm: str) -> RunConfig:
    """``cfg`` with ``inner = "rllib"`` and the algorithm; the preset's env and model stay."""
    return merge(cfg, {"inner": "rllib", "rllib": {"algorithm": algorithm}})


def bench_rllib(cfg: RunConfig, game: str, env_steps: int, algorithm: str) -> dict:
    from actors.rllib_inner.runner import RLlibTaskRunner
    from leap_rl.task import TaskRunner

    a2c_cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, overlap=False))
    rl_cfg = rllib_config(a2c_cfg, algorithm)
    phi = initial_encoder(cfg.model, cfg.seed)
    spec = TaskSpec("bench-rllib", game, 0, seed=cfg.seed, env_steps=env_steps)
    ours = TaskRunner(a2c_cfg).run(spec, phi, on_segment=lambda segment: None)
    start = time.perf_counter()
    theirs = RLlibTaskRunner(rl_cfg).run(spec, phi, on_segment=lambda segment: None)
    setup = time.perf_counter() - start - theirs.seconds

    def row(result) -> dict:
        return {"env_steps": result.env_steps, "gradient_steps": result.updates,
                "env_steps_per_s": result.env_steps / result.seconds,
                "gradient_steps_per_s": result.updates / result.seconds}

    out = {"algorithm": algorithm, "a2c": row(ours), "rllib": row(theirs), "rllib_setup_s": setup}
    out["rllib_over_a2c"] = out["rllib"]["env_steps_per_s"] / out["a2c"]["env_steps_per_s"]
    return out
