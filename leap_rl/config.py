"""Typed configuration: one frozen dataclass per concern, presets by name, TOML and overrides.

Everything is validated when it is built; a bad value raises ``ConfigError`` whose message is
one line naming the field and what is allowed. The command line turns that into exit code 2.

Where a default departs from the paper (LEAP.md §4) or the paper is silent, the field's
docstring says so.
"""

from __future__ import annotations

import copy
import re
import tomllib
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, Mapping

from leap_rl.leap import LeapConfig


class ConfigError(ValueError):
    """A configuration value is wrong. The message is one line meant for the user."""


def _require(ok: bool, name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class EnvConfig:
    """ALE through ale-py's C++ AtariVectorEnv with DeepMind preprocessing (84×84 grey, 4 frames)."""

    num_envs: int = 16
    frame_skip: int = 4
    """Not stated in the paper; 4 with max-pooling is the DeepMind convention."""
    noop_max: int = 30
    life_loss_terminal: bool = True
    """Cut bootstrapping at a life loss while the game goes on (baselines' 'episodic life').
    Episode statistics always report whole games."""
    repeat_action_probability: float = 0.0
    full_action_space: bool = False
    """True: 18-action heads for every game; False: the game's minimal action set."""
    max_episode_frames: int = 108_000
    env_threads: int = 1
    """C++ stepping threads per vector env; keep env + torch threads ≤ the worker's cores."""
    overlap: bool = False
    """Step the envs in two halves, each its own vector env, so that one half's emulation (on
    its C++ thread) runs while the network acts for the other half. Faster when a worker has
    a second core to give that thread (``leap-rl task``, ``--runtime sequential``, evaluate
    with ``--jobs 1``); no help where every core already runs a worker. Env i is seeded as
    without, and the actions are drawn in the same order (half A, then half B, every step), so
    a seed trains the same agent: bit for bit in tests/test_a2c.py (CPU, torch 2.13), as long
    as the network rounds a half batch as it rounds the whole one."""

    def __post_init__(self) -> None:
        _require(self.num_envs >= 1, "env.num_envs", "an integer ≥ 1", self.num_envs)
        _require(self.frame_skip >= 1, "env.frame_skip", "an integer ≥ 1", self.frame_skip)
        _require(self.noop_max >= 0, "env.noop_max", "an integer ≥ 0", self.noop_max)
        p = self.repeat_action_probability
        _require(0.0 <= p <= 1.0, "env.repeat_action_probability", "in [0, 1]", p)
        _require(self.max_episode_frames >= 1, "env.max_episode_frames", "≥ 1", self.max_episode_frames)
        _require(self.env_threads >= 1, "env.env_threads", "an integer ≥ 1", self.env_threads)
        _require(not self.overlap or self.num_envs >= 2, "env.num_envs", "≥ 2 with env.overlap (two halves)",
                 self.num_envs)


@dataclass(frozen=True)
class A2CConfig:
    """Advantage actor-critic. Defaults are OpenAI baselines' (LEAP.md §5)."""

    unroll: int = 5
    lr: float = 7e-4
    rms_alpha: float = 0.99
    rms_eps: float = 1e-5
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    """Not stated in the paper; 0.5 as in baselines."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip; 0 disables it. Not stated in the paper; 0.5 as in baselines."""
    gamma: float = 0.99
    reward_clip: Literal["sign", "clamp", "none"] = "sign"
    """'sign' (baselines), 'clamp' to ±reward_clip_bound (the paper: ±5), or 'none'."""
    reward_clip_bound: float = 5.0
    optimizer: Literal["rmsprop", "rmsprop_tf"] = "rmsprop"
    """'rmsprop' (PyTorch's: square average started at 0, eps outside the root, so the first
    steps are ≈10·lr·sign(g)) or 'rmsprop_tf' (TensorFlow 1's, as OpenAI baselines and the A2C
    code of the paper's time: average started at 1, eps inside the root). See leap_rl/optim.py."""

    def __post_init__(self) -> None:
        _require(self.optimizer in ("rmsprop", "rmsprop_tf"), "a2c.optimizer",
                 "one of 'rmsprop', 'rmsprop_tf'", self.optimizer)
        _require(self.unroll >= 1, "a2c.unroll", "an integer ≥ 1", self.unroll)
        _require(self.lr > 0, "a2c.lr", "> 0", self.lr)
        _require(0 < self.rms_alpha < 1, "a2c.rms_alpha", "in (0, 1)", self.rms_alpha)
        _require(self.rms_eps > 0, "a2c.rms_eps", "> 0", self.rms_eps)
        _require(self.entropy_coef >= 0, "a2c.entropy_coef", "≥ 0", self.entropy_coef)
        _require(self.value_coef >= 0, "a2c.value_coef", "≥ 0", self.value_coef)
        _require(self.max_grad_norm >= 0, "a2c.max_grad_norm", "≥ 0 (0 = no clipping)", self.max_grad_norm)
        _require(0 <= self.gamma <= 1, "a2c.gamma", "in [0, 1]", self.gamma)
        _require(self.reward_clip in ("sign", "clamp", "none"), "a2c.reward_clip",
                 "one of 'sign', 'clamp', 'none'", self.reward_clip)
        _require(self.reward_clip_bound > 0, "a2c.reward_clip_bound", "> 0", self.reward_clip_bound)


@dataclass(frozen=True)
class ModelConfig:
    network: Literal["mnih2013", "nature"] = "nature"
    """'mnih2013' (the paper's: 16×8×8/4, 32×4×4/2, FC-256) or 'nature' (Mnih et al. 2015)."""
    encoder_includes_fc: bool = True
    """Whether the FC layer is part of the meta-learned encoder (the paper does not say; it
    meta-learns "the convolutional encoder", LEAP.md §4)."""
    layer_norm: bool = False
    """LayerNorm before every ReLU of the trunk, a plasticity guard (Lyle et al. 2023/2024).
    Its gains and biases are part of the encoder where their layer is. Not in the paper."""

    def __post_init__(self) -> None:
        _require(self.network in ("mnih2013", "nature"), "model.network",
                 "one of 'mnih2013', 'nature'", self.network)


@dataclass(frozen=True)
class MetaConfig:
    """The outer loop: which games, how many tasks per meta-step, how φ is updated."""

    games: tuple[str, ...] = ()
    """Meta-training games (ALE ids such as 'seaquest'); empty means the derived pool."""
    tasks_per_step: int = 2
    meta_steps: int = 3
    env_steps_per_task: int = 20_000
    segment_every: int = 50
    """A2C updates between two Leap segments sent to the learner."""
    optimizer: Literal["adam", "sgd"] = "sgd"
    """SGD, as the paper (Adam in its multi-dataset experiment). Adam's steps are lr·sign(G) on
    every weight, which moves a unit with thousands of inputs coherently: in docs/RESULTS.md §4
    it raised φ's dormant units by 7.6 and 9.9 points in 6 meta-steps, where SGD on unit-norm
    task vectors lowered them by 2.0 and 5.3 while the probe path length fell."""
    max_unit_step: float = 0.0
    """Bound on each unit's meta-step: the change of a unit's incoming weights and bias is
    scaled down to at most this fraction of their norm, so its pre-activation cannot move by
    more than that fraction of ‖(w, b)‖·‖(x, 1)‖ for any input x. 0 = off (the paper)."""
    recycle_dormant: bool = False
    """After each meta-step, recycle φ's ReDo-dormant units (Sokar et al. 2023): fresh incoming
    weights, zero outgoing weights inside the encoder, meta-optimizer moments reset. Not in the
    paper."""
    recycle_tau: float = 0.1
    """A unit is recycled when its ReDo score (its mean |activation| on the probe frames over
    its layer's mean) is ≤ this."""
    lr: float = 0.1
    """The paper does not state it for Atari. With unit-norm task vectors ‖G‖ ≤ 1, so 0.1 moves
    φ by at most 0.1 per meta-step (φ_0 of the paper's network has norm ≈ 25); docs/RESULTS.md §4."""
    normalize_tasks: bool = True
    """Scale each task's vector to unit norm before averaging, so that no game steers φ (its
    raw norm ranged from 4.5 to 5.5e3 between meta-steps, LEAP.md §8) and plain SGD gets a
    bounded step. Off is the paper's estimator."""
    mode: Literal["sync", "async"] = "sync"
    max_staleness: int = 1
    """async only: a task whose init version is more than this many versions old is stale."""
    stale: Literal["weight", "drop"] = "weight"
    """async only, what a stale task's vector does. 'weight': it still counts, scaled by
    (1 + max_staleness) / (1 + s) for a task s versions old (staleness-aware asynchronous SGD
    scales a gradient's step by 1/s the same way), so no trained env step is thrown away.
    'drop': its segments are refused and its worker stops it."""

    def __post_init__(self) -> None:
        _require(isinstance(self.games, tuple), "meta.games", "a list of game ids", self.games)
        _require(self.tasks_per_step >= 1, "meta.tasks_per_step", "an integer ≥ 1", self.tasks_per_step)
        _require(self.meta_steps >= 1, "meta.meta_steps", "an integer ≥ 1", self.meta_steps)
        _require(self.env_steps_per_task >= 1, "meta.env_steps_per_task", "an integer ≥ 1",
                 self.env_steps_per_task)
        _require(self.segment_every >= 1, "meta.segment_every", "an integer ≥ 1", self.segment_every)
        _require(self.optimizer in ("adam", "sgd"), "meta.optimizer", "one of 'adam', 'sgd'", self.optimizer)
        _require(self.lr > 0, "meta.lr", "> 0", self.lr)
        _require(self.max_unit_step >= 0, "meta.max_unit_step", "≥ 0 (0 = off)", self.max_unit_step)
        _require(0 < self.recycle_tau < 1, "meta.recycle_tau", "in (0, 1)", self.recycle_tau)
        _require(self.mode in ("sync", "async"), "meta.mode", "one of 'sync', 'async'", self.mode)
        _require(self.max_staleness >= 0, "meta.max_staleness", "an integer ≥ 0", self.max_staleness)
        _require(self.stale in ("weight", "drop"), "meta.stale", "one of 'weight', 'drop'", self.stale)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where things run (Ray resources) and how chatty they are."""

    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    """Fractional values let several workers share one GPU."""
    learner_cpus: float = 0.0
    learner_gpus: float = 0.0
    max_segments_in_flight: int = 2
    """Segments a worker may have sent without a reply before it waits."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    torch_threads: int = 1
    """Per process. 2 processes × 2 threads ran 5–10× slower than 2 × 1 here (PLATFORM.md)."""
    update_threads: int = 0
    """torch threads of a task during its A2C update; 0: ``torch_threads``. The envs' C++
    threads have nothing to do during an update, so a worker given 2 cores can give the update
    both while acting keeps ``torch_threads`` beside the env threads. The update's reductions
    then split differently: a seed's results differ from a 1-thread run by float rounding."""
    log_every: int = 100
    """A2C updates between two progress rows of a task."""
    dead_unit_probe: int = 64
    """Frames in the fixed probe batch for the encoder's dead-unit and dormant fractions."""
    dormant_tau: float = 0.1
    """A unit of φ counts as dormant when its ReDo score is ≤ this (Sokar et al. 2023 use 0.1
    and 0.025)."""
    probe_tasks: int = 2
    """Fixed probe tasks (the same games and seeds every time) trained from φ to measure the
    path length like for like; 0 turns the probe off. Their segments never reach φ."""
    probe_every: int = 10
    """Meta-steps between two probe measurements; φ_0 and the final φ are always probed."""
    max_task_retries: int = 3
    """Re-runs of a task whose worker died, stalled or raised, before the task is dropped (and
    logged with its error): its meta-step goes on without it."""
    call_timeout_s: float = 300.0
    """Deadline of every remote call to the learner; a learner that misses it is restarted."""
    stall_timeout_s: float = 900.0
    """Seconds a running task may go without progress (a segment or a progress row) before its
    worker is treated as dead and the task re-run; longer than the slowest segment."""
    learner_restarts: int = 3
    """Times the learner is restarted from the last checkpoint after it died or missed a
    deadline, before the run stops."""

    def __post_init__(self) -> None:
        _require(self.workers >= 1, "runtime.workers", "an integer ≥ 1", self.workers)
        _require(self.cpus_per_worker >= 0, "runtime.cpus_per_worker", "≥ 0", self.cpus_per_worker)
        _require(self.gpus_per_worker >= 0, "runtime.gpus_per_worker", "≥ 0", self.gpus_per_worker)
        _require(self.learner_cpus >= 0, "runtime.learner_cpus", "≥ 0", self.learner_cpus)
        _require(self.learner_gpus >= 0, "runtime.learner_gpus", "≥ 0", self.learner_gpus)
        _require(self.max_segments_in_flight >= 1, "runtime.max_segments_in_flight", "an integer ≥ 1",
                 self.max_segments_in_flight)
        _require(self.device in ("cpu", "cuda", "auto"), "runtime.device", "one of 'cpu', 'cuda', 'auto'",
                 self.device)
        _require(self.torch_threads >= 1, "runtime.torch_threads", "an integer ≥ 1", self.torch_threads)
        _require(self.update_threads >= 0, "runtime.update_threads", "an integer ≥ 0 (0 = torch_threads)",
                 self.update_threads)
        _require(self.log_every >= 1, "runtime.log_every", "an integer ≥ 1", self.log_every)
        _require(self.dead_unit_probe >= 1, "runtime.dead_unit_probe", "an integer ≥ 1", self.dead_unit_probe)
        _require(0 < self.dormant_tau < 1, "runtime.dormant_tau", "in (0, 1)", self.dormant_tau)
        _require(self.probe_tasks >= 0, "runtime.probe_tasks", "an integer ≥ 0 (0 = off)", self.probe_tasks)
        _require(self.probe_every >= 1, "runtime.probe_every", "an integer ≥ 1", self.probe_every)
        _require(self.max_task_retries >= 0, "runtime.max_task_retries", "an integer ≥ 0", self.max_task_retries)
        _require(self.call_timeout_s > 0, "runtime.call_timeout_s", "> 0 seconds", self.call_timeout_s)
        _require(self.stall_timeout_s > 0, "runtime.stall_timeout_s", "> 0 seconds", self.stall_timeout_s)
        _require(self.learner_restarts >= 0, "runtime.learner_restarts", "an integer ≥ 0", self.learner_restarts)


RLLIB_ALGORITHMS: tuple[str, ...] = ("PPO", "APPO", "IMPALA")
RLLIB_RESERVED: tuple[str, ...] = (
    "env", "env_config", "num_envs_per_env_runner", "learner_class", "rl_module_spec",
    "seed", "framework", "enable_rl_module_and_learner", "enable_env_runner_and_connector_v2",
)
"""AlgorithmConfig settings leap_rl sets itself: the env and its count (env.*), the RLModule
(model.*), the Leap Learner, the task's seed and the new API stack."""


RLLIB_DEFAULTS: dict[str, dict[str, Any]] = {
    # OpenAI baselines' Atari PPO (ppo2's atari defaults: 8 envs × 128 steps, 4 epochs of 4
    # minibatches, lr 2.5e-4, clip 0.1, GAE λ 0.95, value 0.5, entropy 0.01, grad clip 0.5),
    # not RLlib's PPO defaults (lr 5e-5, 30 epochs, a KL penalty).
    "PPO": {"lr": 2.5e-4, "gamma": 0.99, "lambda_": 0.95, "clip_param": 0.1,
            "vf_loss_coeff": 0.5, "entropy_coeff": 0.01, "grad_clip": 0.5,
            "grad_clip_by": "global_norm", "use_kl_loss": False, "num_epochs": 4,
            "train_batch_size_per_learner": 1024, "minibatch_size": 256},
    # RLlib's own defaults, but the gradient clip of the A2C path and baselines, and one
    # training step per iteration: RLlib's 10 s minimum per iteration sampled 2,880 env steps of
    # a 400-step task.
    "APPO": {"grad_clip": 0.5, "grad_clip_by": "global_norm", "min_time_s_per_iteration": 0},
    "IMPALA": {"grad_clip": 0.5, "grad_clip_by": "global_norm", "min_time_s_per_iteration": 0},
}
"""What each algorithm starts from before ``rllib.settings`` is laid over it."""


def _check_toml_table(value: Any, name: str) -> None:
    """A pass-through table holds what TOML can: strings, numbers, booleans, arrays, tables."""
    _require(isinstance(value, Mapping), name, "a table of settings", value)
    for key, item in value.items():
        _require(isinstance(key, str) and key != "", name, "a table with string keys", key)
        _check_toml_value(item, f"{name}.{key}")


def _check_toml_value(value: Any, name: str) -> None:
    if isinstance(value, Mapping):
        _check_toml_table(value, name)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_toml_value(item, f"{name}[{i}]")
    else:
        _require(isinstance(value, (bool, int, float, str)), name,
                 "a string, number, boolean, array or table", value)


@dataclass(frozen=True)
class RLlibConfig:
    """The inner learner when ``inner = "rllib"``: one of RLlib's algorithms on its new API stack
    (actors/rllib_inner, docs/RLLIB.md). Not the paper's setting: the paper's agent is A2C."""

    algorithm: Literal["PPO", "APPO", "IMPALA"] = "PPO"
    settings: dict[str, Any] = field(default_factory=dict)
    """AlgorithmConfig attributes passed through by name (``lr``, ``num_epochs``,
    ``num_env_runners``, ``num_learners``, ``num_gpus_per_learner``, …), laid over
    RLLIB_DEFAULTS[algorithm]; a TOML file or --set changes single keys
    (``--set rllib.settings.lr=1e-4``). The names are checked against the algorithm's config
    class when a task starts. Not settable here: RLLIB_RESERVED."""

    def __post_init__(self) -> None:
        _require(self.algorithm in RLLIB_ALGORITHMS, "rllib.algorithm",
                 "one of " + ", ".join(repr(a) for a in RLLIB_ALGORITHMS), self.algorithm)
        _check_toml_table(self.settings, "rllib.settings")
        for key in self.settings:
            _require(key not in RLLIB_RESERVED, f"rllib.settings.{key}",
                     "left out: leap_rl sets it (the env from env.*, the RLModule from model.*, "
                     "the Leap Learner, the task's seed)", self.settings[key])

    @property
    def algorithm_settings(self) -> dict[str, Any]:
        """RLLIB_DEFAULTS[algorithm] with ``settings`` laid over it."""
        return {**copy.deepcopy(RLLIB_DEFAULTS[self.algorithm]), **copy.deepcopy(self.settings)}


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    inner: Literal["a2c", "rllib"] = "a2c"
    """The inner learner of each task: 'a2c' (this project's A2C, the paper's agent) or 'rllib'
    (an RLlib algorithm, the ``[rllib]`` section; actors/rllib_inner). 'rllib' runs only on the
    Ray runtime."""
    env: EnvConfig = field(default_factory=EnvConfig)
    a2c: A2CConfig = field(default_factory=A2CConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    leap: LeapConfig = field(default_factory=LeapConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    rllib: RLlibConfig = field(default_factory=RLlibConfig)

    def __post_init__(self) -> None:
        _require(isinstance(self.seed, int) and self.seed >= 0, "seed", "an integer ≥ 0", self.seed)
        _require(self.inner in ("a2c", "rllib"), "inner", "one of 'a2c', 'rllib'", self.inner)
        # RLlib's Learner reports one loss per step, the total: it has no value-loss signal.
        _require(self.inner == "a2c" or self.leap.loss_signal != "value", "leap.loss_signal",
                 "'total' or 'smoothed' with inner = 'rllib'", self.leap.loss_signal)
        # A flavoured game is a Python vector env (leap_rl.flavours) the RLlib env does not build.
        flavoured = [g for g in self.meta.games if ":" in g]
        _require(self.inner == "a2c" or not flavoured, "meta.games",
                 "plain game ids with inner = 'rllib' (flavours need the A2C path)", flavoured)

    @property
    def env_steps_per_update(self) -> int:
        return self.env.num_envs * self.a2c.unroll


def require_a2c_inner(cfg: RunConfig, command: str) -> None:
    """The commands that build this project's TaskRunner themselves (``task``, ``pretrain``,
    ``evaluate``, ``train --runtime sequential``) train A2C: refuse ``inner = "rllib"`` there
    rather than quietly train something else than asked."""
    if cfg.inner != "a2c":
        raise ConfigError(f"inner = {cfg.inner!r} runs only under `leap-rl train` on the Ray runtime; "
                          f"{command} trains this project's A2C (inner = 'a2c')")


# --------------------------------------------------------------------------------- presets

def _baselines() -> RunConfig:
    return RunConfig()


def _paper() -> RunConfig:
    """LEAP.md §4. Unstated by the paper and chosen here: value_coef 0.5, grad clip 0.5,
    frame skip 4, grey 4-frame stacks (the paper fed RGB), meta-optimizer SGD lr 0.1 on unit-norm
    task vectors (docs/RESULTS.md §4)."""
    return RunConfig(
        env=EnvConfig(num_envs=32),
        a2c=A2CConfig(lr=1e-4, rms_eps=1e-4, rms_alpha=0.99, entropy_coef=0.01,
                      reward_clip="clamp", reward_clip_bound=5.0, gamma=0.99),
        model=ModelConfig(network="mnih2013"),
        leap=LeapConfig(metric="energy"),
        meta=MetaConfig(tasks_per_step=16, meta_steps=100, env_steps_per_task=5_000_000,
                        segment_every=500),
        runtime=RuntimeConfig(workers=16, probe_tasks=4, probe_every=10),
    )


def _quick() -> RunConfig:
    """Minutes on a 2-core machine: the paper's network and metric, baselines' A2C settings."""
    return RunConfig(
        env=EnvConfig(num_envs=8),
        model=ModelConfig(network="mnih2013"),
        leap=LeapConfig(metric="energy"),
        meta=MetaConfig(games=("seaquest", "ms_pacman", "qbert"), tasks_per_step=2, meta_steps=3,
                        env_steps_per_task=20_000, segment_every=50),
        runtime=RuntimeConfig(workers=2, log_every=50, probe_tasks=2, probe_every=3),
    )


def _ci() -> RunConfig:
    """Seconds: every moving part once, nothing learned."""
    return RunConfig(
        env=EnvConfig(num_envs=4),
        model=ModelConfig(network="mnih2013"),
        leap=LeapConfig(metric="energy"),
        meta=MetaConfig(games=("pong", "qbert"), tasks_per_step=2, meta_steps=2,
                        env_steps_per_task=400, segment_every=5),
        runtime=RuntimeConfig(workers=2, log_every=10, dead_unit_probe=16, probe_tasks=1, probe_every=1),
        # inner = "rllib": batches small enough for several iterations in 400 env steps (IMPALA
        # and APPO want the minibatch a multiple of the rollout fragment)
        rllib=RLlibConfig(settings={"train_batch_size_per_learner": 64, "minibatch_size": 32,
                                    "num_epochs": 2, "rollout_fragment_length": 16}),
    )


PRESETS = {"ci": _ci, "quick": _quick, "baselines": _baselines, "paper": _paper}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]()


# ------------------------------------------------------------------ dicts, TOML, overrides

def to_dict(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, dict):  # a pass-through table (rllib.settings): a copy
            out[f.name] = copy.deepcopy(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Check a TOML value against a field's annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        _require(value in allowed, name, "one of " + ", ".join(repr(a) for a in allowed), value)
        return value
    if origin is tuple:
        _require(isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
                 name, "a list of strings", value)
        return tuple(value)
    if annotation is bool:
        _require(isinstance(value, bool), name, "true or false", value)
        return value
    if annotation is int:
        _require(isinstance(value, int) and not isinstance(value, bool), name, "an integer", value)
        return value
    if annotation is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), name, "a number", value)
        return float(value)
    if annotation is str:
        _require(isinstance(value, str), name, "a string", value)
        return value
    raise ConfigError(f"{name} has an unsupported type {annotation!r}")  # a bug, not user input


def merge(base: Any, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Return ``base`` with the values of ``data`` (nested dicts) applied and validated."""
    hints = typing.get_type_hints(type(base))
    known = {f.name for f in fields(base)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown setting {name!r}; allowed here: {', '.join(sorted(known))}")
        current = getattr(base, key)
        if is_dataclass(current):
            _require(isinstance(value, Mapping), name, "a table of settings", value)
            changes[key] = merge(current, value, prefix=f"{name}.")
        elif isinstance(current, dict):
            # A pass-through table merges key by key, so `--set rllib.settings.lr=…` keeps the
            # preset's other keys; its values are checked by the section's __post_init__.
            _require(isinstance(value, Mapping), name, "a table of settings", value)
            changes[key] = {**current, **value}
        else:
            changes[key] = _coerce(value, hints[key], name)
    try:
        return replace(base, **changes)
    except ConfigError:
        raise
    except ValueError as exc:  # LeapConfig (core, config-agnostic) raises plain ValueError
        raise ConfigError(str(exc).splitlines()[0]) from None


def parse_override(text: str) -> dict[str, Any]:
    """'a2c.lr=1e-4' → {'a2c': {'lr': 1e-4}}. The value is read as TOML, else as a string."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. a2c.lr=1e-4), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def load(preset_name: str = "baselines", toml_file: Path | None = None,
         overrides: tuple[str, ...] = ()) -> RunConfig:
    """Preset, then a TOML file, then KEY=VALUE overrides, each validated."""
    cfg = preset(preset_name)
    if toml_file is not None:
        try:
            data = tomllib.loads(Path(toml_file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"--config file {str(toml_file)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config file {str(toml_file)!r} is not valid TOML: {exc}") from None
        cfg = merge(cfg, data)
    for text in overrides:
        cfg = merge(cfg, parse_override(text))
    return cfg


def dumps_toml(cfg: RunConfig) -> str:
    """The resolved configuration as TOML (written into every run directory)."""
    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else value(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, Mapping):  # a pass-through table (rllib.settings), inline
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    data = to_dict(cfg)
    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{k} = {value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    return merge(RunConfig(), data)

