"""``leap-rl bench``: how fast each part of the system runs, all measured in one run on one machine.

What is measured (docs/BENCH.md explains each number and shows a table from a 2-core machine):

- the limits of one worker: env stepping alone (the same ``make_vec_env`` as training, random
  actions), acting alone (no-grad forward + sampling on ``num_envs`` frames) and the A2C update
  alone (bootstrap value, n-step returns, forward + backward + clip + RMSProp on a stored batch
  of ``num_envs × unroll`` frames), each as the env steps per second it alone would allow;
- the single-worker A2C loop (``TaskRunner.run``) as a fraction of the limit those imply. One
  worker does the three things one after the other on one core, so per env step the times add
  up: limit = 1 / (1/env + 1/act + 1/update) env steps/s;
- Leap's cost per update (``PathAccumulator.observe``; for comparison also the gradient copy
  ``model.encoder_grad_into`` that the loop no longer makes) against the update it rides on,
  for the paper's network (mnih2013) and the Nature network;
- total env steps/s with 1..``--workers-max`` Ray workers on a local Ray, and the scaling
  efficiency rate_w / (w · rate_1);
- the learner's ingest rate (segments/s) for an encoder's segment, in process and through the
  Ray ``LearnerActor``, and so how many workers one learner can feed;
- with ``--sb3``: Stable-Baselines3's A2C on the same game, network, envs and machine.

Rates are given by wall-clock time and, for the parts that run in this process, also by this
process's CPU time: on a shared machine the CPU-time figures move much less. Every ratio is
formed from numbers measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from leap_rl.cli import _set_threads
from leap_rl.config import RunConfig, load
from leap_rl.envs import make_vec_env, normalize_game, num_actions
from leap_rl.jsonio import dump_json
from leap_rl.leap import PathAccumulator
from leap_rl.messages import Segment, TaskSpec
from leap_rl.models import ActorCritic, encoder_size, initial_encoder
from leap_rl.task import Rollout, TaskRunner, a2c_update, bind_encoder_grads

NETWORKS = ("mnih2013", "nature")
DEFAULT_SECONDS = 10.0
SB3_ENVS = ("ale", "make_atari_env")

Echo = Callable[[str], None]


# ------------------------------------------------------------------------------ timing

@dataclass(frozen=True)
class Timing:
    """``iters`` repetitions took ``wall`` seconds of wall clock and ``cpu`` of process CPU."""

    iters: int
    wall: float
    cpu: float

    def rate(self, per_iter: float, clock: str = "wall") -> float:
        seconds = self.wall if clock == "wall" else self.cpu
        return self.iters * per_iter / max(seconds, 1e-12)


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _repeat(step: Callable[[], Any], seconds: float, warmup: int = 2, min_iters: int = 3) -> Timing:
    """Run ``step`` for about ``seconds`` (at least ``min_iters`` times) after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    w0, c0 = _clocks()
    iters = 0
    while True:
        step()
        iters += 1
        w, c = _clocks()
        if iters >= min_iters and w - w0 >= seconds:
            return Timing(iters, w - w0, c - c0)


def _median_timing(timings: list[Timing], per_iter: float) -> tuple[float, float]:
    """Median wall and CPU rates over repetitions."""
    return (statistics.median(t.rate(per_iter, "wall") for t in timings),
            statistics.median(t.rate(per_iter, "cpu") for t in timings))


def _with_network(cfg: RunConfig, network: str) -> RunConfig:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, network=network))


def serial_limit(*rates: float) -> float:
    """Env steps/s when work at these rates (env steps/s each) runs one after the other."""
    return 1.0 / sum(1.0 / r for r in rates)


# ------------------------------------------------------------------- the three limits

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

        return _repeat(step, seconds, warmup=5)
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

    return _repeat(step, seconds)


@dataclass(frozen=True)
class UpdateTiming:
    """One update split into the A2C work and Leap's part (timed inside the same updates)."""

    update: Timing
    """Bootstrap value, returns, forward, backward, clip, RMSProp step: everything but Leap."""
    leap: Timing
    """``PathAccumulator.observe`` on the gradient buffer, as the loop calls it."""
    gather: Timing
    """``model.encoder_grad_into``: the copy of the encoder gradient the loop made before
    ``bind_encoder_grads`` (timed for comparison; the loop no longer pays it)."""
    encoder_params: int


class _TimedAccumulator:
    """Stands in for the loop's ``PathAccumulator`` inside ``a2c_update`` and times its part:
    ``observe`` itself, first, with the gradient as cold in the caches as the loop has it; then
    the gradient copy the loop made before ``bind_encoder_grads`` (for comparison only; its
    result is unused)."""

    def __init__(self, acc: PathAccumulator, model: ActorCritic) -> None:
        self.acc, self.model = acc, model
        self.scratch = torch.zeros(acc.num_params)
        self.sums = {"gather": [0.0, 0.0], "leap": [0.0, 0.0]}  # [wall, cpu]

    def _add(self, key: str, a: tuple[float, float], b: tuple[float, float]) -> None:
        self.sums[key][0] += b[0] - a[0]
        self.sums[key][1] += b[1] - a[1]

    def observe(self, loss: float, params: torch.Tensor, grad: torch.Tensor) -> None:
        t0 = _clocks()
        self.acc.observe(loss, params, grad)
        t1 = _clocks()
        self.model.encoder_grad_into(self.scratch)
        t2 = _clocks()
        self._add("leap", t0, t1)
        self._add("gather", t1, t2)


def bench_update(cfg: RunConfig, game: str, frames: torch.Tensor, seconds: float) -> UpdateTiming:
    """The loop's update (``task.a2c_update``, the very function ``TaskRunner.run`` calls) on a
    stored batch of ``unroll × num_envs`` frames, with Leap's part timed separately. The model
    is restored every 50 updates so repeated steps on one batch never drift into a degenerate
    (or non-finite) regime."""
    a2c, T, N = cfg.a2c, cfg.a2c.unroll, cfg.env.num_envs
    torch.manual_seed(cfg.seed)
    n_act = num_actions(game, cfg.env.full_action_space)
    model = ActorCritic(cfg.model, n_act)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=a2c.lr, alpha=a2c.rms_alpha, eps=a2c.rms_eps)
    n = model.encoder_flat.numel()
    acc = _TimedAccumulator(PathAccumulator(n, cfg.leap), model)
    grad = bind_encoder_grads(model, torch.zeros(n))
    rng = torch.Generator().manual_seed(cfg.seed)
    rollout = Rollout(
        obs=frames[:T].contiguous(),
        actions=torch.randint(0, n_act, (T, N), generator=rng),
        rewards=torch.randint(-1, 2, (T, N), generator=rng).float(),
        dones=(torch.rand((T, N), generator=rng) < 0.02).float(),
        last_obs=frames[T],
    )
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    total = [0.0, 0.0]  # [wall, cpu] of whole updates; Leap's part is subtracted at the end
    count = 0

    def step() -> None:
        nonlocal count
        if count % 50 == 0:
            model.load_state_dict(saved)
        count += 1
        t0 = _clocks()
        if a2c_update(model, optimizer, rollout, a2c, acc, grad) is None:
            raise RuntimeError("bench: the update's loss is not finite")
        t1 = _clocks()
        total[0] += t1[0] - t0[0]
        total[1] += t1[1] - t0[1]

    _repeat(step, 0.0, warmup=2, min_iters=1)  # warm-up, then count only what follows
    for v in (total, *acc.sums.values()):
        v[0] = v[1] = 0.0
    iters = _repeat(step, seconds, warmup=0).iters
    leap, gather = acc.sums["leap"], acc.sums["gather"]
    update = Timing(iters, total[0] - leap[0] - gather[0], total[1] - leap[1] - gather[1])
    return UpdateTiming(update, Timing(iters, *leap), Timing(iters, *gather), n)


# ------------------------------------------------------------------------- the loop

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
        marks.append((row["env_steps"], *_clocks()))

    spec = TaskSpec("bench", game, 0, cfg.seed if seed is None else seed, updates * per_update)
    w0, c0 = _clocks()
    result = runner(cfg).run(spec, None, on_progress=progress)
    w1, c1 = _clocks()
    (s0, mw0, mc0), (s1, mw1, mc1) = marks[0], marks[-1]
    return LoopTiming(Timing(1, mw1 - mw0, mc1 - mc0), s1 - s0, Timing(1, w1 - w0, c1 - c0),
                      result.env_steps)


def bench_env_setup(cfg: RunConfig, game: str) -> dict:
    """What every task pays before its first step: ``make_vec_env`` (construction) and the
    seeded reset that ``TaskRunner.run`` does to get the first frames."""
    a = _clocks()
    env = make_vec_env(game, cfg.env)
    b = _clocks()
    env.reset(seed=cfg.seed)
    c = _clocks()
    env.close()
    return {"make_vec_env_s": b[0] - a[0], "make_vec_env_cpu_s": b[1] - a[1],
            "seeded_reset_s": c[0] - b[0], "seeded_reset_cpu_s": c[1] - b[1]}


# --------------------------------------------------------------------- learner ingest

def _segment_template(cfg: RunConfig, network: str) -> Segment:
    """Segment 0 of a task for ``network``'s encoder (later ones differ only in their index)."""
    from leap_rl.leap import PathStats

    n = encoder_size(dataclasses.replace(cfg.model, network=network))
    vector = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 1e-3
    stats = PathStats(cfg.meta.segment_every, 1.0, 1.0, 1.0, 1.0, 1.0)
    return Segment("ingest", "bench", 0, 0, vector, stats, False, 0)


def bench_ingest_plain(cfg: RunConfig, network: str, seconds: float) -> Timing:
    """``MetaLearner.add_segment`` in this process (finiteness check + add into the task's sum)."""
    from leap_rl.meta_learner import MetaLearner

    model_cfg = dataclasses.replace(cfg.model, network=network)
    learner = MetaLearner(initial_encoder(model_cfg, cfg.seed), cfg.meta)
    template = _segment_template(cfg, network)
    i = 0

    def step() -> None:
        nonlocal i
        if not learner.add_segment(dataclasses.replace(template, index=i, env_steps=i)):
            raise RuntimeError(f"the learner refused segment {i}: {learner.rejections[-1:]}")
        i += 1

    return _repeat(step, seconds)


def bench_ingest_ray(cfg: RunConfig, network: str, seconds: float, window: int = 8) -> Timing:
    """Segments sent from this process to a ``LearnerActor`` with up to ``window`` unanswered
    (each one serialized and moved through Ray's object store, as a worker's would be)."""
    import ray

    from learner.learner_actor import LearnerActor

    model_cfg = dataclasses.replace(cfg.model, network=network)
    learner = LearnerActor.options(num_cpus=0).remote(dataclasses.replace(cfg, model=model_cfg))
    try:
        ray.get(learner.version.remote())
        template = _segment_template(cfg, network)
        in_flight: list = []
        i = 0

        def step() -> None:
            nonlocal i
            in_flight.append(learner.add_segment.remote(dataclasses.replace(template, index=i, env_steps=i)))
            i += 1
            while len(in_flight) >= window:
                ready, rest = ray.wait(in_flight, num_returns=1)
                if not ray.get(ready[0]):
                    raise RuntimeError("the LearnerActor refused a segment")
                in_flight[:] = rest

        timing = _repeat(step, seconds, warmup=window)
        w0, c0 = _clocks()
        if not all(ray.get(in_flight)):  # the ones still in flight count too
            raise RuntimeError("the LearnerActor refused a segment")
        w1, c1 = _clocks()
        return Timing(timing.iters, timing.wall + (w1 - w0), timing.cpu + (c1 - c0))
    finally:
        ray.kill(learner)


# ----------------------------------------------------------------------------- Ray

def _proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a local process (Linux), None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _machine_busy() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat (Linux), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return float(sum(values) - idle), float(sum(values))
    except (OSError, ValueError, IndexError):
        return None


def bench_ray_workers(cfg: RunConfig, game: str, workers: int, env_steps_per_worker: int) -> dict:
    """``workers`` TaskWorker actors (the training runtime's) each run one task of
    ``env_steps_per_worker`` at once, streaming segments to a LearnerActor.

    rate = all env steps / wall time from submit to the last result (env creation and segment
    delivery included); busy_rate = Σ each task's env steps / its own loop seconds."""
    import ray

    from actors.task_worker import TaskWorker
    from learner.learner_actor import LearnerActor

    learner = LearnerActor.options(num_cpus=cfg.runtime.learner_cpus).remote(cfg)
    actors = [TaskWorker.options(num_cpus=cfg.runtime.cpus_per_worker).remote(cfg, learner)
              for _ in range(workers)]
    try:
        pids = ray.get([a.pid.remote() for a in actors])  # built and warm before the clock starts
        _version, phi_ref = ray.get(learner.current.remote())
        specs = [TaskSpec(f"bench-w{workers}-{i}", game, 0, cfg.seed + i, env_steps_per_worker)
                 for i in range(workers)]
        cpu0, busy0 = [_proc_cpu_seconds(p) for p in pids], _machine_busy()
        start = time.perf_counter()
        results = ray.get([a.run.remote(s, phi_ref) for a, s in zip(actors, specs)])
        wall = time.perf_counter() - start
        cpu1, busy1 = [_proc_cpu_seconds(p) for p in pids], _machine_busy()
        steps = sum(r.env_steps for r in results)
        row = {"workers": workers, "env_steps": steps, "seconds": wall,
               "env_steps_per_s": steps / wall,
               "busy_env_steps_per_s": sum(r.env_steps / r.seconds for r in results)}
        # How much CPU the workers got, and how busy the whole machine was (other jobs too):
        # on a shared machine these say whether a poor scaling figure is ours or the load's.
        if None not in cpu0 and None not in cpu1:
            row["worker_cores_used"] = sum(b - a for a, b in zip(cpu0, cpu1)) / wall
        if busy0 is not None and busy1 is not None and busy1[1] > busy0[1]:
            row["machine_busy_fraction"] = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1])
        return row
    finally:
        for a in actors:
            ray.kill(a)
        ray.kill(learner)


def _start_ray(cpus: int) -> bool:
    import ray

    from learner.driver import _init_ray

    if ray.is_initialized():
        return False
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, workers=cpus, cpus_per_worker=1.0))
    return _init_ray(cfg, None, False)


# ----------------------------------------------------------------------------- SB3

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
            marks.append((self.num_timesteps, *_clocks()))

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


# --------------------------------------------------------------------------- driver

@dataclass(frozen=True)
class BenchOptions:
    game: str = "seaquest"
    seconds: float = DEFAULT_SECONDS
    preset: str = "baselines"
    overrides: tuple[str, ...] = ()
    repeat: int = 1
    workers_max: int = 2
    ray: bool = True
    sb3: bool = False
    sb3_envs: tuple[str, ...] = ("ale", "make_atari_env")
    torch_threads: int = 1


def machine_info() -> dict:
    import ale_py

    return {"date": _dt.date.today().isoformat(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "ale_py": ale_py.__version__, "cuda": torch.cuda.is_available(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def run_bench(opts: BenchOptions, echo: Echo = lambda line: None) -> dict:
    """Every measurement; returns the nested dict that ``--json`` writes."""
    torch.set_num_threads(opts.torch_threads)  # deliberately: oversubscription costs 5-10x
    cfg = load(opts.preset, None, opts.overrides)
    game = normalize_game(opts.game)
    secs, T, N = opts.seconds, cfg.a2c.unroll, cfg.env.num_envs
    out: dict[str, Any] = {
        "machine": machine_info(),
        "setup": {"game": game, "preset": opts.preset, "overrides": list(opts.overrides),
                  "network": cfg.model.network, "encoder_includes_fc": cfg.model.encoder_includes_fc,
                  "num_envs": N, "unroll": T, "env_threads": cfg.env.env_threads,
                  "segment_every": cfg.meta.segment_every, "seconds_per_measurement": secs,
                  "repeat": opts.repeat},
    }

    busy_start = _machine_busy()

    # --- limits and the loop, interleaved ``repeat`` times so that load changes hit all alike
    echo("frames for the stored batch ...")
    frames = sample_frames(cfg, game, T)
    envs, acts, ups, leaps, loops = [], [], [], [], []
    loop_steps = 0
    for r in range(opts.repeat):
        echo(f"[{r + 1}/{opts.repeat}] env stepping alone ...")
        envs.append(bench_env(cfg, game, secs))
        echo(f"[{r + 1}/{opts.repeat}] acting alone ...")
        acts.append(bench_act(cfg, game, frames, secs))
        echo(f"[{r + 1}/{opts.repeat}] update alone ({cfg.model.network}) ...")
        u = bench_update(cfg, game, frames, secs)
        ups.append(u.update)
        leaps.append(u)
        limit = serial_limit(envs[-1].rate(N), acts[-1].rate(N), u.update.rate(N * T))
        loop_steps = loop_steps or int(limit * secs)
        echo(f"[{r + 1}/{opts.repeat}] single-worker loop, {loop_steps} env steps ...")
        loops.append(bench_loop(cfg, game, loop_steps))

    env_w, env_c = _median_timing(envs, N)
    act_w, act_c = _median_timing(acts, N)
    upd_w, upd_c = _median_timing(ups, N * T)
    loop_w = statistics.median(lp.timing.rate(lp.env_steps, "wall") for lp in loops)
    loop_c = statistics.median(lp.timing.rate(lp.env_steps, "cpu") for lp in loops)
    lim_w, lim_c = serial_limit(env_w, act_w, upd_w), serial_limit(env_c, act_c, upd_c)
    out["limits"] = {
        "env_steps_per_s": {"env": env_w, "act": act_w, "update": upd_w, "limit": lim_w},
        "env_steps_per_cpu_s": {"env": env_c, "act": act_c, "update": upd_c, "limit": lim_c},
        "update_ms": 1e3 * statistics.median(t.wall / t.iters for t in ups),
        "act_ms": 1e3 * statistics.median(t.wall / t.iters for t in acts),
        "env_step_ms": 1e3 * statistics.median(t.wall / t.iters for t in envs),
    }
    out["loop"] = {"env_steps_per_s": loop_w, "env_steps_per_cpu_s": loop_c,
                   "fraction_of_limit": loop_w / lim_w, "fraction_of_limit_cpu": loop_c / lim_c,
                   "env_steps_timed": loops[0].env_steps,
                   "whole_call_env_steps": loops[0].whole_env_steps,
                   "whole_call_env_steps_per_s": statistics.median(
                       lp.whole.rate(lp.whole_env_steps) for lp in loops),
                   "whole_call_env_steps_per_cpu_s": statistics.median(
                       lp.whole.rate(lp.whole_env_steps, "cpu") for lp in loops)}
    echo("task setup (env creation, seeded reset) ...")
    out["task_setup"] = bench_env_setup(cfg, game)

    # --- Leap's overhead for both networks (the preset's one is already measured)
    overhead = {}
    for network in NETWORKS:
        if network == cfg.model.network:
            timings = leaps
        else:
            echo(f"update + Leap ({network}) ...")
            net_cfg = _with_network(cfg, network)
            timings = [bench_update(net_cfg, game, frames, secs) for _ in range(opts.repeat)]

        def ms(part: str, clock: str) -> float:
            return statistics.median(1e3 * getattr(getattr(t, part), clock) / getattr(t, part).iters
                                     for t in timings)

        up, leap, gather = ms("update", "wall"), ms("leap", "wall"), ms("gather", "wall")
        up_c, leap_c, gather_c = ms("update", "cpu"), ms("leap", "cpu"), ms("gather", "cpu")
        overhead[network] = {
            "encoder_params": timings[0].encoder_params, "frames_per_update": N * T,
            "update_ms": up, "leap_ms": leap, "fraction": leap / up,
            "update_cpu_ms": up_c, "leap_cpu_ms": leap_c,
            "fraction_cpu": leap_c / up_c if up_c > 0 else float("nan"),
            "old_gather_ms": gather, "old_fraction": (leap + gather) / up,
            "old_fraction_cpu": (leap_c + gather_c) / up_c if up_c > 0 else float("nan"),
        }
    out["leap_overhead"] = overhead
    out["leap_metric"] = cfg.leap.metric

    # --- learner ingest, in process
    ingest: dict[str, Any] = {}
    for network in NETWORKS:
        echo(f"learner ingest, in process ({network}) ...")
        t = bench_ingest_plain(cfg, network, secs / 2)
        n = encoder_size(dataclasses.replace(cfg.model, network=network))
        ingest[network] = {"encoder_params": n, "segment_mib": n * 4 / 2**20,
                           "plain_segments_per_s": t.rate(1)}
    # a worker of this preset sends one segment per segment_every updates
    seg_per_worker = loop_w / (cfg.meta.segment_every * N * T)
    out["ingest"] = ingest

    # --- Ray: workers and ingest through the actor
    if opts.ray:
        import ray

        started = _start_ray(max(opts.workers_max, 1))
        try:
            per_worker = max(4 * N * T, int(loop_w * secs))
            runs: dict[int, list[dict]] = {w: [] for w in range(1, opts.workers_max + 1)}
            for r in range(opts.repeat):  # interleaved, like the single-process measurements
                for w in runs:
                    echo(f"[{r + 1}/{opts.repeat}] Ray: {w} worker(s), {per_worker} env steps each ...")
                    runs[w].append(bench_ray_workers(cfg, game, w, per_worker))
            rows = []
            for w, reps in runs.items():
                row = {"workers": w, "env_steps": reps[0]["env_steps"]}
                for key in reps[0]:
                    if key not in row and all(key in x for x in reps):
                        row[key] = statistics.median(x[key] for x in reps)
                rows.append(row)
            for key in ("env_steps_per_s", "busy_env_steps_per_s"):
                base = rows[0][key]
                for row in rows:
                    eff = "scaling_efficiency" if key == "env_steps_per_s" else "busy_scaling_efficiency"
                    row[eff] = row[key] / (row["workers"] * base)
            out["ray"] = {"workers": rows}
            for network in NETWORKS:
                echo(f"learner ingest through the LearnerActor ({network}) ...")
                ingest[network]["ray_segments_per_s"] = bench_ingest_ray(cfg, network, secs / 2).rate(1)
        finally:
            if started:
                ray.shutdown()
    for network, row in ingest.items():
        best = row.get("ray_segments_per_s", row["plain_segments_per_s"])
        row["workers_fed_at_1_segment_per_s"] = best
    out["ingest_context"] = {
        "preset_segment_interval_s": 1.0 / seg_per_worker,
        "preset_segments_per_s_per_worker": seg_per_worker,
        "note": "workers one learner can feed = ingest rate x a worker's seconds between segments",
    }
    net = cfg.model.network
    key = "ray_segments_per_s" if "ray_segments_per_s" in ingest[net] else "plain_segments_per_s"
    ingest[net]["workers_fed_at_preset_interval"] = ingest[net][key] / seg_per_worker

    # --- SB3, side by side with our loop on the nature network
    if opts.sb3:
        nat = _with_network(cfg, "nature")
        nat = dataclasses.replace(nat, model=dataclasses.replace(nat.model, encoder_includes_fc=True))
        sb3_rows = []
        ours = []
        steps = int(loop_w * secs) if net == "nature" else 0
        for r in range(opts.repeat):
            echo(f"[{r + 1}/{opts.repeat}] our loop (nature) for SB3 comparison ...")
            if not steps:
                u = bench_update(nat, game, frames, secs / 2)
                steps = int(serial_limit(env_w, act_w, u.update.rate(N * T)) * secs)
            lp = bench_loop(nat, game, steps)
            ours.append((lp.timing.rate(lp.env_steps), lp.timing.rate(lp.env_steps, "cpu")))
            for kind in opts.sb3_envs:
                echo(f"[{r + 1}/{opts.repeat}] SB3 A2C ({kind} env) ...")
                sb3_rows.append(bench_sb3(nat, game, steps, kind))
        ours_w = statistics.median(o[0] for o in ours)
        ours_c = statistics.median(o[1] for o in ours)
        result = {"version": sb3_rows[0]["version"], "ours_env_steps_per_s": ours_w,
                  "ours_env_steps_per_cpu_s": ours_c, "envs": {}}
        for kind in opts.sb3_envs:
            rows_k = [s for s in sb3_rows if s["env"] == kind]
            w = statistics.median(s["env_steps_per_s"] for s in rows_k)
            c = statistics.median(s["env_steps_per_cpu_s"] for s in rows_k)
            result["envs"][kind] = {"env_steps_per_s": w, "env_steps_per_cpu_s": c,
                                    "ours_over_sb3": ours_w / w, "ours_over_sb3_cpu": ours_c / c}
        out["sb3"] = result
    busy_end = _machine_busy()
    if busy_start is not None and busy_end is not None and busy_end[1] > busy_start[1]:
        # all CPUs, all processes (other jobs included), over the whole bench
        out["machine"]["busy_fraction_during_run"] = (busy_end[0] - busy_start[0]) / (busy_end[1] - busy_start[1])
    return out


# ----------------------------------------------------------------------------- table

def format_table(res: dict) -> str:
    s, m = res["setup"], res["machine"]
    lim_w, lim_c = res["limits"]["env_steps_per_s"], res["limits"]["env_steps_per_cpu_s"]
    lines = [
        f"leap-rl bench  {m['date']}  {m['cpus']} cpus, {'CUDA' if m['cuda'] else 'no GPU'}, "
        f"torch {m['torch']} ({m['torch_threads']} thread(s)), ale-py {m['ale_py']}",
        f"game {s['game']}, preset {s['preset']}: {s['network']} network, {s['num_envs']} envs x "
        f"unroll {s['unroll']}, {s['env_threads']} env thread(s); {s['seconds_per_measurement']:g} s per "
        f"measurement, median of {s['repeat']}; machine: load {m.get('loadavg_1min_at_start') or 0:.1f} at start, "
        f"CPUs {100 * m.get('busy_fraction_during_run', float('nan')):.0f} % busy during the run (all processes)",
        "",
        f"{'measurement':<52}{'steps/s wall':>14}{'per CPU-s':>12}  note",
    ]

    def row(name: str, wall: float, cpu: float | None = None, note: str = "") -> None:
        c = f"{cpu:12.0f}" if cpu is not None else " " * 12
        lines.append(f"{name:<52}{wall:14.0f}{c}  {note}")

    L = res["limits"]
    row("env stepping alone (random actions)", lim_w["env"], lim_c["env"], f"{L['env_step_ms']:.2f} ms / step of all envs")
    row("acting alone (no-grad forward + sampling)", lim_w["act"], lim_c["act"], f"{L['act_ms']:.2f} ms / step of all envs")
    row("update alone (value+returns+fwd+bwd+clip+RMSProp)", lim_w["update"], lim_c["update"], f"{L['update_ms']:.1f} ms / update")
    row("limit 1/(1/env + 1/act + 1/update)", lim_w["limit"], lim_c["limit"], "one core, serial")
    lp = res["loop"]
    row("single-worker loop (TaskRunner.run)", lp["env_steps_per_s"], lp["env_steps_per_cpu_s"],
        f"{100 * lp['fraction_of_limit']:.1f} % of limit ({100 * lp['fraction_of_limit_cpu']:.1f} % by CPU)")
    row(f"  the whole call ({lp['whole_call_env_steps']} steps, env and model creation included)",
        lp["whole_call_env_steps_per_s"], lp["whole_call_env_steps_per_cpu_s"])
    su = res["task_setup"]
    lines.append(f"  task setup: make_vec_env {su['make_vec_env_s']:.2f} s ({su['make_vec_env_cpu_s']:.2f} CPU-s), "
                 f"then the seeded reset {su['seeded_reset_s']:.2f} s ({su['seeded_reset_cpu_s']:.2f} CPU-s)")
    lines.append("")
    title = f"Leap per update (observe, {res['leap_metric']} metric)"
    lines.append(f"{title:<52}{'update ms':>14}{'Leap ms':>12}  "
                 f"fraction wall; CPU  (with the old gather copy)")
    for net, o in res["leap_overhead"].items():
        name = f"{net} ({o['encoder_params']:,} encoder params)"
        lines.append(f"{name:<52}{o['update_ms']:14.2f}{o['leap_ms']:12.3f}  "
                     f"{100 * o['fraction']:.2f} %; {100 * o['fraction_cpu']:.2f} %  "
                     f"({100 * o['old_fraction']:.2f} %; {100 * o['old_fraction_cpu']:.2f} %)")
    if "ray" in res:
        lines.append("")
        lines.append(f"{'Ray, local (all workers together)':<52}{'end to end':>14}{'steady':>12}  "
                     f"scaling (end to end; steady); cores the workers got; machine busy")
        for r in res["ray"]["workers"]:
            name = f"{r['workers']} worker(s), {r['env_steps'] // r['workers']} env steps each"
            cores = f"{r['worker_cores_used']:.2f}" if "worker_cores_used" in r else "?"
            busy = f"{100 * r['machine_busy_fraction']:.0f} %" if "machine_busy_fraction" in r else "?"
            lines.append(f"{name:<52}{r['env_steps_per_s']:14.0f}{r['busy_env_steps_per_s']:12.0f}  "
                         f"{100 * r['scaling_efficiency']:.0f} %; {100 * r['busy_scaling_efficiency']:.0f} %; "
                         f"{cores}; {busy}")
    lines.append("")
    ctx = res["ingest_context"]
    lines.append(f"{'learner ingest (segments/s)':<52}{'in process':>14}{'via Ray':>12}  "
                 f"workers fed at 1 segment/s each")
    for net, g in res["ingest"].items():
        ray_rate = g.get("ray_segments_per_s")
        rc = f"{ray_rate:12.1f}" if ray_rate is not None else f"{'-':>12}"
        name = f"{net} ({g['segment_mib']:.2f} MiB / segment)"
        lines.append(f"{name:<52}"
                     f"{g['plain_segments_per_s']:14.1f}{rc}  {g['workers_fed_at_1_segment_per_s']:.0f}")
    net = res["setup"]["network"]
    lines.append(f"  a {s['preset']} worker sends a segment every {ctx['preset_segment_interval_s']:.1f} s "
                 f"(segment_every {s['segment_every']}): one learner feeds about "
                 f"{res['ingest'][net]['workers_fed_at_preset_interval']:.0f} such workers")
    if "sb3" in res:
        sb = res["sb3"]
        lines.append("")
        lines.append(f"{'Stable-Baselines3 ' + sb['version'] + ' A2C vs ours (nature)':<52}{'steps/s wall':>14}{'per CPU-s':>12}  ours / SB3")
        row("ours (TaskRunner.run, nature)", sb["ours_env_steps_per_s"], sb["ours_env_steps_per_cpu_s"])
        for kind, e in sb["envs"].items():
            row(f"SB3 A2C CnnPolicy, {kind} env", e["env_steps_per_s"], e["env_steps_per_cpu_s"],
                f"{e['ours_over_sb3']:.2f}x ({e['ours_over_sb3_cpu']:.2f}x by CPU)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--game", default="seaquest", help="ALE game id (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help="seconds per measurement (default: %(default)s)")
    parser.add_argument("--preset", default="baselines",
                        help="config preset whose network/envs/unroll are measured: ci | quick | "
                             "baselines | paper (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting of the preset (repeatable)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="interleaved repetitions of the measurements (all but the learner's "
                             "ingest and the task setup); medians are reported (default: %(default)s)")
    parser.add_argument("--workers-max", type=int, default=2,
                        help="Ray runs with 1..N workers (default: %(default)s)")
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="skip the Ray measurements")
    parser.add_argument("--sb3", action="store_true",
                        help="also run Stable-Baselines3's A2C (pip install 'leap-rl[bench]')")
    parser.add_argument("--sb3-env", dest="sb3_envs", action="append", choices=SB3_ENVS,
                        help="SB3's env: 'ale' (our AtariVectorEnv behind SB3's VecEnv API) and/or "
                             "'make_atari_env' (SB3's own pipeline, needs opencv); default: both")
    parser.add_argument("--threads", dest="torch_threads", type=int, default=1,
                        help="torch threads in this process (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    from leap_rl.config import ConfigError

    threads = args.torch_threads
    if threads < 1:
        raise ConfigError(f"--threads must be ≥ 1, got {threads}")
    if args.seconds <= 0:
        raise ConfigError(f"--seconds must be > 0, got {args.seconds}")
    if args.repeat < 1:
        raise ConfigError(f"--repeat must be ≥ 1, got {args.repeat}")
    if args.workers_max < 1:
        raise ConfigError(f"--workers-max must be ≥ 1, got {args.workers_max}")
    _set_threads(threads)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sb3_envs = tuple(args.sb3_envs) if args.sb3_envs else SB3_ENVS
    if args.sb3:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            raise ConfigError("--sb3 needs stable-baselines3: pip install 'leap-rl[bench]'") from None
        if "make_atari_env" in sb3_envs:
            try:
                import cv2  # noqa: F401
            except ImportError:
                raise ConfigError("--sb3-env make_atari_env needs OpenCV: pip install "
                                  "opencv-python-headless (or pass --sb3-env ale)") from None
    opts = BenchOptions(game=args.game, seconds=args.seconds, preset=args.preset,
                        overrides=tuple(args.overrides), repeat=args.repeat,
                        workers_max=args.workers_max, ray=args.ray, sb3=args.sb3,
                        sb3_envs=sb3_envs, torch_threads=threads)
    res = run_bench(opts, echo=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_table(res))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(dump_json(res, indent=2))  # a NaN (no CPU time measured) becomes null
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m leap_rl.bench``: the same as ``leap-rl bench``."""
    parser = argparse.ArgumentParser(prog="leap-rl bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
