"""Train one A2C agent on one game from a given encoder initialization, streaming Leap segments.

This plain class is what the Ray worker wraps unchanged, and what the sequential meta-training
loop and ``leap-rl task`` call directly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from leap_rl.a2c import (A2CLoss, a2c_loss, clip_rewards, fold_in_time_limit_bootstrap,
                         n_step_returns, time_limit_cut)
from leap_rl.config import A2CConfig, RunConfig
from leap_rl.envs import EpisodeTracker, make_vec_env, num_actions
from leap_rl.leap import LeapConfig, PathAccumulator
from leap_rl.leap_inputs import LeapInputs, clip_gradients
from leap_rl.messages import Segment, TaskResult, TaskSpec
from leap_rl.models import ActorCritic, as_training_batch, encoder_size
from leap_rl.optim import inner_optimizer
from leap_rl.threads import torch_threads

SegmentCallback = Callable[[Segment], None]
ProgressCallback = Callable[[dict], None]
RECENT_GAMES = 100


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Rollout:
    """``unroll`` steps of ``num_envs`` envs, and the frames the next step starts from."""

    obs: torch.Tensor  # (T, N, 4, 84, 84) uint8
    actions: torch.Tensor  # (T, N) long
    rewards: torch.Tensor  # (T, N) clipped, time-limit bootstraps folded in
    dones: torch.Tensor  # (T, N) 1.0 where the episode ended after the step
    last_obs: torch.Tensor  # (N, 4, 84, 84) uint8


class LeapLoss:
    """f_i, the loss coordinate Leap sees (``leap.loss_signal``); one per task, since the
    smoothed signal keeps a running average."""

    def __init__(self, cfg: LeapConfig) -> None:
        self.cfg = cfg
        self._smoothed: float | None = None

    def __call__(self, loss: A2CLoss, total: float) -> float:
        """``total`` is ``loss.total`` as a float, which the update has already read."""
        if self.cfg.loss_signal == "value":
            return loss.value.item()
        if self.cfg.loss_signal == "total":
            return total
        beta = self.cfg.loss_smoothing
        self._smoothed = total if self._smoothed is None else beta * self._smoothed + (1 - beta) * total
        return self._smoothed


def a2c_update(model: ActorCritic, optimizer: torch.optim.Optimizer, rollout: Rollout,
               a2c: A2CConfig, acc: PathAccumulator, inputs: LeapInputs,
               leap_loss: Callable[[A2CLoss, float], float] | None = None,
               before_step: Callable[[], None] | None = None) -> A2CLoss | None:
    """One A2C update on ``rollout``; Leap observes the point θ_i it starts from.

    ``inputs`` holds the gradient buffers and the step buffer (``LeapInputs``; ``optimizer``
    writes its encoder steps there); ``leap_loss`` turns the loss terms into the f Leap sees
    (default: the total); ``before_step`` runs after Leap's observe and before clipping and
    the step (where a segment is flushed). Returns the loss terms, or None, touching neither
    the accumulator nor the parameters, when the loss is not finite.
    """
    with torch.no_grad():
        bootstrap = model(rollout.last_obs)[1]
    returns = n_step_returns(rollout.rewards, rollout.dones, bootstrap, a2c.gamma)
    logits, values = model(as_training_batch(rollout.obs.flatten(0, 1)))
    loss = a2c_loss(logits, values, rollout.actions.flatten(), returns.flatten(), a2c)

    # Order matters (LEAP.md §6): backward → Leap reads the loss, θ and the RAW gradient of
    # the encoder → clip → optimizer step.
    inputs.bind(model)
    optimizer.zero_grad(set_to_none=False)
    loss.total.backward()
    loss_value = loss.total.item()
    if not math.isfinite(loss_value):
        return None
    f = loss_value if leap_loss is None else leap_loss(loss, loss_value)
    inputs.observe(acc, f, model, optimizer)
    if before_step is not None:
        before_step()
    inputs.clipped(clip_gradients(model, a2c.max_grad_norm))
    optimizer.step()
    inputs.stepped()
    return loss


class _Rollouts:
    """The acting half of the loop: the env, the buffers of one rollout and the frames the
    next step starts from; ``collect`` fills one rollout with the current policy."""

    def __init__(self, spec: TaskSpec, cfg: RunConfig, model: ActorCritic, device: torch.device) -> None:
        T, N = cfg.a2c.unroll, cfg.env.num_envs
        self.a2c, self.model, self.device = cfg.a2c, model, device
        self.sampler = torch.Generator(device=device).manual_seed(spec.seed)
        self.tracker = EpisodeTracker(N)
        self.scores: list[float] = []
        """Raw scores of every finished game, in order."""
        self.recent: deque[float] = deque(maxlen=RECENT_GAMES)
        self.envs = self._make_envs(spec, cfg)
        shape = self.envs[0].single_observation_space.shape
        self.obs_buf = torch.zeros((T, N, *shape), dtype=torch.uint8, device=device)
        self.act_buf = torch.zeros((T, N), dtype=torch.long, device=device)
        self.rew_buf = torch.zeros((T, N), device=device)
        self.done_buf = torch.zeros((T, N), device=device)
        self.obs = torch.zeros((N, *shape), dtype=torch.uint8, device=device)
        for env, part in zip(self.envs, self.parts):
            # env i of the task is seeded spec.seed + i however the envs are split
            self.obs[part] = torch.from_numpy(env.reset(seed=spec.seed + part.start)[0]).to(device)

    def _make_envs(self, spec: TaskSpec, cfg: RunConfig) -> list:
        self.parts = [slice(0, cfg.env.num_envs)]
        return [make_vec_env(spec.game, cfg.env)]

    def _act(self, part: slice) -> torch.Tensor | None:
        """Actions for the envs of ``part`` from the current policy; None if its logits are not finite."""
        with torch.no_grad():
            logits, _ = self.model(self.obs[part])
        if not bool(torch.isfinite(logits).all()):
            return None
        with torch.no_grad():
            return torch.multinomial(torch.softmax(logits, -1), 1, generator=self.sampler).squeeze(1)

    def _record(self, t: int, part: slice, actions: torch.Tensor, result: tuple) -> None:
        """Step ``t`` of the envs of ``part``: into the rollout, and the frames move on."""
        a2c, device, model = self.a2c, self.device, self.model
        next_obs, raw_reward, terminated, truncated, info = result
        self.obs_buf[t, part] = self.obs[part]
        self.act_buf[t, part] = actions
        ended = self.tracker.update(raw_reward, terminated, truncated, info["episode_frame_number"], part)
        for score, _length in ended:
            self.scores.append(score)
            self.recent.append(score)
        reward = clip_rewards(torch.as_tensor(raw_reward, dtype=torch.float32), a2c).to(device)
        cut = time_limit_cut(terminated, truncated)
        if cut.any():  # a time limit is not a terminal state: bootstrap through it
            final = torch.from_numpy(info["final_obs"][cut]).to(device)
            with torch.no_grad():
                reward = fold_in_time_limit_bootstrap(
                    reward, torch.from_numpy(cut).to(device), model(final)[1], a2c.gamma)
        self.rew_buf[t, part] = reward
        self.done_buf[t, part] = torch.from_numpy(terminated | truncated).to(device, torch.float32)
        self.obs[part] = torch.from_numpy(next_obs).to(device)

    def _rollout(self) -> Rollout:
        return Rollout(self.obs_buf, self.act_buf, self.rew_buf, self.done_buf, last_obs=self.obs.clone())

    def collect(self) -> Rollout | None:
        """``unroll`` steps of every env; None when the policy's logits stop being finite."""
        env, part = self.envs[0], self.parts[0]
        for t in range(self.a2c.unroll):
            actions = self._act(part)
            if actions is None:
                return None
            self._record(t, part, actions, env.step(actions.cpu().numpy()))
        return self._rollout()

    def recent_mean(self) -> float:
        return float(np.mean(self.recent)) if self.recent else float("nan")

    def close(self) -> None:
        for env in self.envs:
            env.close()


class _OverlappedRollouts(_Rollouts):
    """``env.overlap``: the envs in two halves, A and B, each its own vector env with its own
    C++ thread, pipelined so that one half steps while the network acts for the other:

        act A(0), send A | act B(t), send B | recv A(t) | act A(t+1), send A | recv B(t) | …

    The rollout is the same shape and the same on-policy data: every action of it comes from
    the policy before the update, and both halves are received before it ends."""

    def _make_envs(self, spec: TaskSpec, cfg: RunConfig) -> list:
        n = cfg.env.num_envs
        half = n - n // 2
        self.parts = [slice(0, half), slice(half, n)]
        return [make_vec_env(spec.game, dataclasses.replace(cfg.env, num_envs=p.stop - p.start))
                for p in self.parts]

    def collect(self) -> Rollout | None:
        (env_a, env_b), (a, b) = self.envs, self.parts
        sent: list = []  # envs with a step in flight: received before returning, whatever happens
        try:
            actions_a = self._act(a)
            if actions_a is None:
                return None
            _send(env_a, actions_a, sent)
            for t in range(self.a2c.unroll):
                actions_b = self._act(b)
                if actions_b is None:
                    return None
                _send(env_b, actions_b, sent)
                self._record(t, a, actions_a, _recv(env_a, sent))
                if t + 1 < self.a2c.unroll:
                    actions_a = self._act(a)
                    if actions_a is None:
                        return None
                    _send(env_a, actions_a, sent)
                self._record(t, b, actions_b, _recv(env_b, sent))
            return self._rollout()
        finally:
            for env in list(sent):
                _recv(env, sent)


def _send(env, actions: torch.Tensor, sent: list) -> None:
    """Start a step: the C++ vector env's own async ``send``; a Python env (a flavoured game)
    has none and steps when received."""
    actions = actions.cpu().numpy()
    if hasattr(env, "send"):
        env.send(actions)
    else:
        env.pending_actions = actions
    sent.append(env)


def _recv(env, sent: list) -> tuple:
    sent.remove(env)
    if hasattr(env, "recv"):
        return env.recv()
    return env.step(env.pending_actions)


class _Segments:
    """The Leap half: flushes the accumulator into Segments and keeps the task's totals."""

    def __init__(self, spec: TaskSpec, acc: PathAccumulator, task_param_part: torch.Tensor,
                 task_loss_part: torch.Tensor, on_segment: SegmentCallback | None, steps_per_update: int) -> None:
        self.spec, self.acc, self.on_segment = spec, acc, on_segment
        self.param_part, self.loss_part = task_param_part.zero_(), task_loss_part.zero_()
        self.steps_per_update = steps_per_update
        self.path_length = 0.0
        self.count = 0

    def emit(self, update: int, final: bool, diverged: bool = False) -> None:
        """Before the optimizer's step (``observe_step`` reads θ live). A diverged task's last
        segment comes after one: the learner drops such a task whole, so its sum never counts."""
        acc, spec = self.acc, self.spec
        stats = acc.stats()
        self.param_part += acc.param_part
        self.loss_part += acc.loss_part
        self.path_length += stats.path_length
        segment = Segment(spec.task_id, spec.game, spec.init_version, self.count, acc.flush().cpu(),
                          stats, final, update * self.steps_per_update, diverged=diverged)
        self.count += 1
        if self.on_segment is not None:
            self.on_segment(segment)


def progress_row(spec: TaskSpec, update: int, env_steps: int, rollouts: _Rollouts, loss: A2CLoss,
                 fps: float) -> dict:
    """One ``progress`` row of the metrics: where the task is, its recent scores and losses."""
    return {
        "task_id": spec.task_id, "game": spec.game, "env_steps": env_steps,
        "updates": update, "episodes": len(rollouts.scores),
        "episode_return_mean": rollouts.recent_mean(), "fps": fps,
        "loss": loss.total.item(), "policy_loss": loss.policy.item(),
        "value_loss": loss.value.item(), "entropy": loss.entropy.item(),
    }


class TaskRunner:
    """Holds what can be reused across tasks (the Leap buffers); builds a fresh agent per task."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.runtime.device)
        n = encoder_size(cfg.model)
        self.accumulator = PathAccumulator(n, cfg.leap, device=self.device)
        self.inputs = LeapInputs(n, cfg.leap, device=self.device)
        self._task_param_part = torch.zeros(n, device=self.device)
        self._task_loss_part = torch.zeros(n, device=self.device)

    def run(self, spec: TaskSpec, phi: torch.Tensor | None,
            on_segment: SegmentCallback | None = None,
            on_progress: ProgressCallback | None = None, keep_encoder: bool = False) -> TaskResult:
        """Train for ``spec.env_steps``; ``phi`` None keeps the random encoder (a baseline).
        ``keep_encoder``: also return the trained encoder (``TaskResult.encoder``)."""
        cfg, a2c, device = self.cfg, self.cfg.a2c, self.device
        per_update = a2c.unroll * cfg.env.num_envs
        torch.manual_seed(spec.seed)  # heads (and the random encoder when phi is None)
        model = ActorCritic(cfg.model, num_actions(spec.game, cfg.env.full_action_space), device)
        if phi is not None:
            model.load_encoder(phi.to(device))
        inputs, acc = self.inputs, self.accumulator
        optimizer = inner_optimizer(model.parameters(), a2c, step_out=inputs.step_out(model))
        leap_loss = LeapLoss(cfg.leap)
        acc.reset()
        inputs.start_task()
        segments = _Segments(spec, acc, self._task_param_part, self._task_loss_part, on_segment, per_update)
        rollouts = (_OverlappedRollouts if cfg.env.overlap else _Rollouts)(spec, cfg, model, device)

        num_updates = math.ceil(spec.env_steps / per_update)
        diverged = False
        start = last_log_time = time.perf_counter()
        last_log_steps = 0
        update = 0
        try:
            for update in range(1, num_updates + 1):
                rollout = rollouts.collect()
                if rollout is None:
                    diverged = True
                    break
                last = update == num_updates
                flush = (lambda: segments.emit(update, last)) \
                    if update % cfg.meta.segment_every == 0 or last else None
                with torch_threads(cfg.runtime.update_threads):
                    loss = a2c_update(model, optimizer, rollout, a2c, acc, inputs, leap_loss, before_step=flush)
                if loss is None:
                    diverged = True
                    break
                if on_progress is not None and (update % cfg.runtime.log_every == 0 or last):
                    now, steps = time.perf_counter(), update * per_update
                    fps = (steps - last_log_steps) / max(now - last_log_time, 1e-9)
                    on_progress(progress_row(spec, update, steps, rollouts, loss, fps))
                    last_log_time, last_log_steps = now, steps
            if diverged:  # the learner drops a diverged task whole (its sum is no H_τ)
                segments.emit(update, final=True, diverged=True)
        finally:
            rollouts.close()

        return TaskResult(
            task_id=spec.task_id, game=spec.game, init_version=spec.init_version,
            env_steps=update * per_update, updates=update, segments=segments.count, diverged=diverged,
            seconds=time.perf_counter() - start, episode_returns=tuple(rollouts.scores),
            path_length=segments.path_length,
            param_part_norm=float(torch.linalg.vector_norm(segments.param_part)),
            loss_part_norm=float(torch.linalg.vector_norm(segments.loss_part)),
            final_return_mean=rollouts.recent_mean(),
            encoder=model.encoder_flat.detach().cpu().clone() if keep_encoder else None,
        )
