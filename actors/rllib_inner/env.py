"""The A2C path's Atari env, handed to RLlib's EnvRunner as its vector env.

RLlib's SingleAgentEnvRunner builds its env with ``gym.make_vec(..., vectorization_mode=
"vector_entry_point")`` from a creator: ``make_env`` returns ale-py's C++ ``AtariVectorEnv``
with exactly the settings of ``leap_rl.envs.make_vec_env`` (84×84 grey, 4-frame stack, frame
skip 4 with max-pool, up to 30 no-ops, no sticky actions, life loss reported as a termination
while the game goes on), so both inner learners see the same frames. Two things differ, both
forced by RLlib's EnvRunner (docs/RLLIB.md):

- autoreset: RLlib expects gymnasium's NextStep mode (the step after an episode's end returns
  the first frame of the next one), the A2C path uses SameStep. After a game over that step is
  a reset; after a life loss the game goes on, so that step is a real one whose reward RLlib
  does not learn from (it starts its next episode there). ``GameScores`` still counts it.
- rewards: clipped here (``a2c.reward_clip``, as the A2C path clips in its loss), because an
  RLlib Learner sees only what the env returns; whole-game raw scores are kept on the side.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ale_py.vector_env import AtariVectorEnv

from leap_rl.a2c import clip_rewards
from leap_rl.config import A2CConfig, EnvConfig
from leap_rl.envs import make_vec_env


class GameScores:
    """Raw scores of whole games under NextStep autoreset.

    A new game restarts the env's frame counter; with NextStep the restart shows on the step
    after the game's last one, so a drop of ``episode_frame_number`` closes the game that was
    running before this step (life losses do not restart the counter).
    """

    def __init__(self, num_envs: int) -> None:
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._frame = np.zeros(num_envs, dtype=np.int64)
        self.finished: list[float] = []

    def update(self, raw_reward: np.ndarray, episode_frame: np.ndarray) -> None:
        restarted = episode_frame < self._frame
        for i in np.flatnonzero(restarted):
            self.finished.append(float(self._returns[i]))
            self._returns[i] = 0.0
        self._returns += raw_reward
        self._frame = episode_frame.astype(np.int64)

    def take(self) -> list[float]:
        scores, self.finished = self.finished, []
        return scores


class ClippedAtariVectorEnv(gym.vector.VectorWrapper):
    """Clips rewards for the Learner and keeps the raw game scores (``take_scores``)."""

    def __init__(self, env: AtariVectorEnv, a2c: A2CConfig) -> None:
        super().__init__(env)
        self._a2c = a2c
        self.scores = GameScores(env.num_envs)

    def step(self, actions: Any):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.scores.update(reward, info["episode_frame_number"])
        clipped = clip_rewards(torch.as_tensor(reward, dtype=torch.float32), self._a2c).numpy()
        return obs, clipped, terminated, truncated, info

    def take_scores(self) -> list[float]:
        return self.scores.take()


def env_config(game: str, env: EnvConfig, a2c: A2CConfig) -> dict[str, Any]:
    """What travels to every EnvRunner (plain picklable values)."""
    return {"game": game, "env": env, "a2c": a2c}


def make_env(ctx: dict[str, Any]) -> ClippedAtariVectorEnv:
    """RLlib's env creator: ``ctx`` is ``env_config`` plus RLlib's ``num_envs``."""
    cfg: EnvConfig = ctx["env"]
    if ctx["num_envs"] != cfg.num_envs:  # RLlib's num_envs_per_env_runner comes from env.num_envs
        raise ValueError(f"RLlib asked for {ctx['num_envs']} envs, env.num_envs is {cfg.num_envs}")
    env = make_vec_env(ctx["game"], cfg, autoreset_mode="NextStep")  # what RLlib's EnvRunner expects
    return ClippedAtariVectorEnv(env, ctx["a2c"])
