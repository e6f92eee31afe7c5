"""Stable-Baselines3's A2C on the same game, network and envs: the comparison baseline."""

from __future__ import annotations

import math

import numpy as np

from bench.timing import clocks
from leap_rl.config import RunConfig
from leap_rl.envs import make_vec_env


def _sb3_ale_vec_env(game: str, cfg: RunConfig):
    """SB3's VecEnv over the very AtariVectorEnv our loop uses (same C++ stepping and
    preprocessing, life loss as termination); rewards sign-clipped like ours."""
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv

    class AleVecEnv(VecEnv):
        render_mode = None

        def __init__(self) -> None:
            self.env = make_vec_env(game, cfg.env)
            super().__init__(cfg.env.num_envs, self.env.single_observation_space,
                             self.env.single_action_space)
            self._actions: np.ndarray | None = None

        def reset(self):
            return self.env.reset(seed=cfg.seed)[0]

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = actions

        def step_wait(self):
            obs, reward, terminated, truncated, info = self.env.step(self._actions)
            done = terminated | truncated
            infos: list[dict] = [{} for _ in range(self.num_envs)]
            for i in np.flatnonzero(done):  # SB3's autoreset convention
                infos[i]["terminal_observation"] = info["final_obs"][i]
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            return obs, np.sign(reward).astype(np.float32), done, infos

        def close(self) -> None:
            self.env.close()

        def get_attr(self, attr_name, indices=None):
            return [getattr(self, attr_name)] * self.num_envs

        def set_attr(self, attr_name, value, indices=None) -> None:
            setattr(self, attr_name, value)

        def env_method(self, method_name, *args, indices=None, **kwargs):
            raise AttributeError(method_name)

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * self.num_envs

    return AleVecEnv()


def _sb3_make_atari_env(game: str, cfg: RunConfig):
    """SB3's own Atari pipeline (rl-zoo's): ``make_atari_env`` over ``<Game>NoFrameskip-v4``
    (DummyVecEnv of Python-wrapped ALE envs, AtariWrapper: noop 30, max-and-skip 4, life loss
    terminal, fire reset, 84×84 grey via OpenCV, reward sign) and ``VecFrameStack(4)``."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    env_id = "".join(part.capitalize() for part in game.split("_")) + "NoFrameskip-v4"
    venv = make_atari_env(env_id, n_envs=cfg.env.num_envs, seed=cfg.seed)
    return VecFrameStack(venv, n_stack=4)


def bench_sb3(cfg: RunConfig, game: str, env_steps: int, env_kind: str = "ale") -> dict:
    """Stable-Baselines3 A2C ("CnnPolicy": the Nature CNN + FC-512, shared by actor and critic,
    like our ``nature`` network) with baselines' A2C settings; timed between rollouts."""
    import stable_baselines3
    from stable_baselines3 import A2C
    from stable_baselines3.common.callbacks import BaseCallback

    a2c = cfg.a2c
    venv = _sb3_ale_vec_env(game, cfg) if env_kind == "ale" else _sb3_make_atari_env(game, cfg)
    marks: list[tuple[int, float, float]] = []

    class Marks(BaseCallback):
        def _on_rollout_start(self) -> None:
            marks.append((self.num_timesteps, *clocks()))

        def _on_step(self) -> bool:
            return True

    try:
        model = A2C("CnnPolicy", venv, learning_rate=a2c.lr, n_steps=a2c.unroll, gamma=a2c.gamma,
                    gae_lambda=1.0, ent_coef=a2c.entropy_coef, vf_coef=a2c.value_coef,
                    max_grad_norm=a2c.max_grad_norm, rms_prop_eps=a2c.rms_eps, use_rms_prop=True,
                    normalize_advantage=False, seed=cfg.seed, device="cpu", verbose=0)
        per_update = cfg.env_steps_per_update
        updates = max(4, math.ceil(env_steps / per_update))
        model.learn(total_timesteps=(updates + 1) * per_update, callback=Marks())
    finally:
        venv.close()
    # the first mark is before any work: skip one update (warm-up) like the loop's timing does
    (s0, w0, c0), (s1, w1, c1) = marks[1], marks[-1]
    return {"version": stable_baselines3.__version__, "env": env_kind,
            "env_steps": s1 - s0, "seconds": w1 - w0,
            "env_steps_per_s": (s1 - s0) / (w1 - w0), "env_steps_per_cpu_s": (s1 - s0) / (c1 - c0)}
