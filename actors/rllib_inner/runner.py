"""Train one task with an RLlib algorithm from the encoder φ, streaming Leap segments.

``RLlibTaskRunner`` has ``leap_rl.task.TaskRunner``'s interface (``run(spec, phi, on_segment,
on_progress, keep_encoder)`` → ``TaskResult``) and sends the same ``Segment`` messages, so the
TaskWorker, the LearnerActor, the driver and the checkpoints do not know which inner learner
ran. It is a plain class: tests run it in one process.

One ``Algorithm.train()`` call is one training iteration (PPO: sample a batch, then
``num_epochs`` epochs of minibatch steps). A segment is sent after the iteration in which the
Learner's gradient steps since the previous segment reached ``meta.segment_every``, and after
the last one; a progress row after the iteration that crossed a multiple of
``runtime.log_every`` gradient steps.

Resources: by default everything runs in the calling process (``num_env_runners = 0``, a
local Learner), which is what a TaskWorker on a 2-core machine needs. ``rllib.settings`` may
ask for RLlib's own EnvRunners and Learners (``num_env_runners``, ``num_learners``,
``num_gpus_per_learner``); they are Ray actors beside the TaskWorker and need their own CPUs.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from typing import Callable

import numpy as np
import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.appo import APPOConfig
from ray.rllib.algorithms.impala import IMPALAConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.tune.registry import register_env
from ray.rllib.utils.metrics import (ENV_RUNNER_RESULTS, LEARNER_RESULTS,
                                     NUM_ENV_STEPS_SAMPLED_LIFETIME)

from actors.rllib_inner.env import ClippedAtariVectorEnv, env_config, make_env
from actors.rllib_inner.learner import LEAP_KEY, LEARNERS, LeapFlush, leap_config_dict
from actors.rllib_inner.module import (LeapActorCriticAPPOModule, LeapActorCriticModule,
                                       model_config)
from leap_rl.config import ConfigError, RunConfig
from leap_rl.envs import num_actions
from leap_rl.messages import Segment, TaskResult, TaskSpec

SegmentCallback = Callable[[Segment], None]
ProgressCallback = Callable[[dict], None]
ENV_NAME = "leap_rl_atari"
RECENT_GAMES = 100  # the A2C path's window for episode_return_mean

CONFIG_CLASSES: dict[str, type[AlgorithmConfig]] = {"PPO": PPOConfig, "APPO": APPOConfig,
                                                    "IMPALA": IMPALAConfig}
MODULES = {"PPO": LeapActorCriticModule, "APPO": LeapActorCriticAPPOModule,
           "IMPALA": LeapActorCriticModule}


def check_settings(cfg: RunConfig) -> None:
    """ConfigError (one line) for a name in ``rllib.settings`` that the algorithm's config
    class does not have (RLlib's ``update_from_dict`` would set it silently)."""
    base = CONFIG_CLASSES[cfg.rllib.algorithm]()
    for key in cfg.rllib.algorithm_settings:
        if not hasattr(base, key):
            raise ConfigError(f"rllib.settings.{key} is not a setting of RLlib's "
                              f"{type(base).__name__} (ray {_ray_version()})")


def _ray_version() -> str:
    import ray
    return ray.__version__


def algorithm_config(cfg: RunConfig, spec: TaskSpec, phi: torch.Tensor | None,
                     learner_class: type | None = None) -> AlgorithmConfig:
    """The task's AlgorithmConfig: leap_rl's env, RLModule and Leap Learner, everything in this
    process, then ``rllib.settings``. ``learner_class`` replaces the algorithm's Leap Learner
    (a subclass, e.g. one that records the points)."""
    check_settings(cfg)
    # RLlib takes a custom env by registered name; registering again replaces the same creator.
    register_env(ENV_NAME, make_env)
    # RLlib re-registers its gymnasium id for every env it makes; gymnasium warns each time.
    warnings.filterwarnings("ignore", message=r".*Overriding environment rllib-single-agent-env")
    algorithm = cfg.rllib.algorithm
    num_envs = cfg.env.num_envs
    config = (
        CONFIG_CLASSES[algorithm]()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .framework("torch")
        .environment(env=ENV_NAME, env_config=env_config(spec.game, cfg.env, cfg.a2c))
        # the A2C path's vector env as one unit: RLlib must not wrap single envs itself
        .env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs,
                     gym_env_vectorize_mode="vector_entry_point")
        .learners(num_learners=0, learner_class=learner_class or LEARNERS[algorithm],
                  learner_config_dict={LEAP_KEY: leap_config_dict(cfg.leap)})
        .rl_module(rl_module_spec=RLModuleSpec(module_class=MODULES[algorithm],
                                               model_config=model_config(cfg.model, spec.seed, phi)))
        .debugging(seed=spec.seed)
    )
    config.update_from_dict(cfg.rllib.algorithm_settings)
    return config


def _take_scores(env_runner) -> list[float]:
    """Whole-game raw scores that the EnvRunner's env finished since the last call."""
    env = getattr(env_runner, "env", None)
    while env is not None and not isinstance(env, ClippedAtariVectorEnv):
        env = getattr(env, "env", None)
    return [] if env is None else env.take_scores()


class RLlibTaskRunner:
    """``leap_rl.task.TaskRunner``'s interface over an RLlib algorithm (module docstring)."""

    def __init__(self, cfg: RunConfig, learner_class: type | None = None) -> None:
        if cfg.inner != "rllib":
            raise ValueError(f"RLlibTaskRunner needs inner = 'rllib', got {cfg.inner!r}")
        check_settings(cfg)
        self.cfg = cfg
        self.learner_class = learner_class
        self.algorithm = None
        """The last task's Algorithm (stopped), for tests that read its Learner."""

    def run(self, spec: TaskSpec, phi: torch.Tensor | None,
            on_segment: SegmentCallback | None = None,
            on_progress: ProgressCallback | None = None, keep_encoder: bool = False) -> TaskResult:
        cfg = self.cfg
        num_actions(spec.game, cfg.env.full_action_space)  # an unknown ROM fails here, in Python
        config = algorithm_config(cfg, spec, phi, self.learner_class)
        algo = config.build_algo()
        self.algorithm = algo
        remote_runners = config.num_env_runners > 0
        returns_all: list[float] = []
        recent: deque[float] = deque(maxlen=RECENT_GAMES)
        path_length = 0.0
        segment_index = 0
        steps = 0
        points = points_at_segment = points_at_log = 0
        flushed: LeapFlush | None = None
        start = last_log_time = time.perf_counter()
        last_log_steps = 0

        def learner_call(fn):
            return next(iter(algo.learner_group.foreach_learner(fn))).get()

        def emit(final: bool, diverged: bool) -> None:
            nonlocal segment_index, path_length, flushed
            flushed = learner_call(lambda learner: learner.leap_flush(final))
            path_length += flushed.stats.path_length
            segment = Segment(spec.task_id, spec.game, spec.init_version, segment_index,
                              flushed.vector, flushed.stats, final, steps, diverged=diverged)
            segment_index += 1
            if on_segment is not None:
                on_segment(segment)

        inner = f"rllib:{cfg.rllib.algorithm}"  # tells these rows from the A2C path's
        diverged = False
        try:
            while steps < spec.env_steps:
                result = algo.train()
                steps = int(result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME])
                for scores in algo.env_runner_group.foreach_env_runner(
                        _take_scores, local_env_runner=not remote_runners):
                    returns_all.extend(scores)
                    recent.extend(scores)
                points, diverged = learner_call(lambda learner: learner.leap_progress())
                last = steps >= spec.env_steps or diverged
                if points - points_at_segment >= cfg.meta.segment_every or last:
                    emit(last, diverged)
                    points_at_segment = points
                if on_progress is not None and (points // cfg.runtime.log_every
                                                > points_at_log // cfg.runtime.log_every or last):
                    now = time.perf_counter()
                    losses = result.get(LEARNER_RESULTS, {}).get(DEFAULT_MODULE_ID, {})
                    on_progress({
                        "task_id": spec.task_id, "game": spec.game, "inner": inner,
                        "env_steps": steps, "updates": points, "episodes": len(returns_all),
                        "episode_return_mean": float(np.mean(recent)) if recent else float("nan"),
                        "fps": (steps - last_log_steps) / max(now - last_log_time, 1e-9),
                        "loss": float(losses.get("total_loss", math.nan)),
                        # IMPALA names its policy loss pi_loss
                        "policy_loss": float(losses.get("policy_loss", losses.get("pi_loss", math.nan))),
                        "value_loss": float(losses.get("vf_loss", math.nan)),
                        "entropy": float(losses.get("entropy", math.nan)),
                    })
                    last_log_time, last_log_steps, points_at_log = now, steps, points
                if diverged:
                    break
            encoder = learner_call(lambda learner: learner.leap_encoder()) if keep_encoder else None
        finally:
            algo.stop()

        return TaskResult(
            task_id=spec.task_id, game=spec.game, init_version=spec.init_version,
            env_steps=steps, updates=flushed.points if flushed else 0, segments=segment_index,
            diverged=diverged,
            seconds=time.perf_counter() - start, episode_returns=tuple(returns_all),
            path_length=path_length,
            param_part_norm=flushed.task_param_part_norm if flushed else 0.0,
            loss_part_norm=flushed.task_loss_part_norm if flushed else 0.0,
            final_return_mean=float(np.mean(recent)) if recent else float("nan"),
            encoder=encoder,
        )
