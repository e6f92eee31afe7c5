"""The three limits of one worker: env stepping alone, acting alone (the update is in update.py)."""

from __future__ import annotations

import numpy as np
import torch

from bench.timing import Timing, repeat
from leap_rl.config import RunConfig
from leap_rl.envs import make_vec_env, num_actions
from leap_rl.models import ActorCritic


def bench_env(cfg: RunConfig, game: str, seconds: float) -> Timing:
    """AtariVectorEnv alone (training's preprocessing and thread count), uniform random actions."""
    env = make_vec_env(game, cfg.env)
    env.reset(seed=cfg.seed)
    try:
        rng = np.random.default_rng(cfg.seed)
        actions = rng.integers(0, num_actions(game, cfg.env.full_action_space),
                               size=(1024, cfg.env.num_envs))
        i = 0

        def step() -> None:
            nonlocal i
            env.step(actions[i % len(actions)])
            i += 1

        return repeat(step, seconds, warmup=5)
    finally:
        env.close()


def sample_frames(cfg: RunConfig, game: str, steps: int) -> torch.Tensor:
    """(steps + 1, num_envs, 4, 84, 84) uint8 real frames from random play."""
    env = make_vec_env(game, cfg.env)
    try:
        rng = np.random.default_rng(cfg.seed + 1)
        n = num_actions(game, cfg.env.full_action_space)
        frames = [env.reset(seed=cfg.seed)[0]]
        for _ in range(steps):
            frames.append(env.step(rng.integers(0, n, size=cfg.env.num_envs))[0])
        return torch.from_numpy(np.stack(frames))
    finally:
        env.close()


def bench_act(cfg: RunConfig, game: str, frames: torch.Tensor, seconds: float) -> Timing:
    """What the loop does per env step besides stepping: no-grad forward, finiteness check,
    softmax + multinomial with a seeded generator, actions to numpy."""
    torch.manual_seed(cfg.seed)
    model = ActorCritic(cfg.model, num_actions(game, cfg.env.full_action_space))
    sampler = torch.Generator().manual_seed(cfg.seed)
    obs = frames[0]

    def step() -> None:
        with torch.no_grad():
            logits, _ = model(obs)
            bool(torch.isfinite(logits).all())
            actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=sampler).squeeze(1)
        actions.cpu().numpy()

    return repeat(step, seconds)
