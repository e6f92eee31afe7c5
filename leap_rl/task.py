"""Train one A2C agent on one game from a given encoder initialization, streaming Leap segments.

This plain class is what the Ray worker wraps unchanged, and what the sequential meta-training
loop and ``leap-rl task`` call directly.
"""

from __future__ import annotations

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
from leap_rl.messages import Segment, TaskResult, TaskSpec
from leap_rl.models import ActorCritic, as_training_batch, encoder_size
from leap_rl.optim import inner_optimizer

SegmentCallback = Callable[[Segment], None]
ProgressCallback = Callable[[dict], None]
RECENT_GAMES = 100


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bind_encoder_grads(model: ActorCritic, flat: torch.Tensor) -> torch.Tensor:
    """Make the encoder's ``.grad`` tensors views of ``flat`` (zeroed) and return ``flat``.

    Backward accumulates into an existing ``.grad`` in place, so with the gradients zeroed (not
    set to None) every update, ``flat`` holds the encoder's raw gradient right after backward:
    Leap reads it there instead of gathering a copy with ``model.encoder_grad_into`` (one pass
    over the encoder less per update), and reads the same values, bit for bit.
    """
    flat.zero_()
    offset = 0
    for p in model.encoder.parameters():
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p)
        offset += n
    if offset != flat.numel():
        raise ValueError(f"encoder has {offset} parameters, the gradient buffer {flat.numel()}")
    return flat


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
               a2c: A2CConfig, acc: PathAccumulator, grad: torch.Tensor,
               leap_loss: Callable[[A2CLoss, float], float] | None = None) -> A2CLoss | None:
    """One A2C update on ``rollout``; Leap observes the point θ_i it starts from.

    ``grad`` is the flat buffer the encoder's ``.grad`` tensors are views of
    (``bind_encoder_grads``); ``leap_loss`` turns the loss terms into the f Leap sees (default:
    the total). Returns the loss terms, or None, touching neither the accumulator nor the
    parameters, when the loss is not finite.
    """
    with torch.no_grad():
        bootstrap = model(rollout.last_obs)[1]
    returns = n_step_returns(rollout.rewards, rollout.dones, bootstrap, a2c.gamma)
    logits, values = model(as_training_batch(rollout.obs.flatten(0, 1)))
    loss = a2c_loss(logits, values, rollout.actions.flatten(), returns.flatten(), a2c)

    # Order matters (LEAP.md §6): backward → Leap reads the loss, θ and the RAW gradient of
    # the encoder → clip → optimizer step.
    optimizer.zero_grad(set_to_none=False)
    loss.total.backward()
    loss_value = loss.total.item()
    if not math.isfinite(loss_value):
        return None
    first_grad = next(model.encoder.parameters()).grad
    if first_grad is None or first_grad.data_ptr() != grad.data_ptr():
        raise RuntimeError("the encoder's gradients no longer live in the Leap buffer "
                           "(were they set to None?)")
    f = loss_value if leap_loss is None else leap_loss(loss, loss_value)
    acc.observe(f, model.encoder_flat, grad)  # raw: clipped in place below
    if a2c.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), a2c.max_grad_norm)
    optimizer.step()
    return loss


class TaskRunner:
    """Holds what can be reused across tasks (the Leap buffers); builds a fresh agent per task."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.runtime.device)
        n = encoder_size(cfg.model)
        self.accumulator = PathAccumulator(n, cfg.leap, device=self.device)
        self._grad = torch.zeros(n, device=self.device)
        self._task_param_part = torch.zeros(n, device=self.device)
        self._task_loss_part = torch.zeros(n, device=self.device)

    def run(self, spec: TaskSpec, phi: torch.Tensor | None,
            on_segment: SegmentCallback | None = None,
            on_progress: ProgressCallback | None = None, keep_encoder: bool = False) -> TaskResult:
        """Train for ``spec.env_steps``; ``phi`` None keeps the random encoder (a baseline).
        ``keep_encoder``: also return the trained encoder (``TaskResult.encoder``)."""
        cfg, a2c, device = self.cfg, self.cfg.a2c, self.device
        T, N = a2c.unroll, cfg.env.num_envs
        torch.manual_seed(spec.seed)  # heads (and the random encoder when phi is None)
        sampler = torch.Generator(device=device).manual_seed(spec.seed)
        model = ActorCritic(cfg.model, num_actions(spec.game, cfg.env.full_action_space), device)
        if phi is not None:
            model.load_encoder(phi.to(device))
        optimizer = inner_optimizer(model.parameters(), a2c)
        leap_loss = LeapLoss(cfg.leap)
        grad = bind_encoder_grads(model, self._grad)
        env = make_vec_env(spec.game, cfg.env)
        tracker = EpisodeTracker(N)
        acc = self.accumulator
        acc.reset()
        self._task_param_part.zero_()
        self._task_loss_part.zero_()

        obs_buf = torch.zeros((T, N, *env.single_observation_space.shape), dtype=torch.uint8, device=device)
        act_buf = torch.zeros((T, N), dtype=torch.long, device=device)
        rew_buf = torch.zeros((T, N), device=device)
        done_buf = torch.zeros((T, N), device=device)
        obs = torch.from_numpy(env.reset(seed=spec.seed)[0]).to(device)

        num_updates = math.ceil(spec.env_steps / (T * N))
        returns_all: list[float] = []
        recent: deque[float] = deque(maxlen=RECENT_GAMES)
        path_length = 0.0
        segment_index = 0
        diverged = False
        start = last_log_time = time.perf_counter()
        last_log_steps = 0

        def emit(final: bool, update: int) -> None:
            nonlocal segment_index, path_length
            stats = acc.stats()
            self._task_param_part += acc.param_part
            self._task_loss_part += acc.loss_part
            path_length += stats.path_length
            segment = Segment(spec.task_id, spec.game, spec.init_version, segment_index,
                              acc.flush().cpu(), stats, final, update * T * N, diverged=diverged)
            segment_index += 1
            if on_segment is not None:
                on_segment(segment)

        update = 0
        try:
            for update in range(1, num_updates + 1):
                for t in range(T):
                    with torch.no_grad():
                        logits, _ = model(obs)
                    if not bool(torch.isfinite(logits).all()):
                        diverged = True
                        break
                    with torch.no_grad():
                        actions = torch.multinomial(torch.softmax(logits, -1), 1, generator=sampler).squeeze(1)
                    obs_buf[t] = obs
                    act_buf[t] = actions
                    next_obs, raw_reward, terminated, truncated, info = env.step(actions.cpu().numpy())
                    for score, _length in tracker.update(raw_reward, terminated, truncated,
                                                         info["episode_frame_number"]):
                        returns_all.append(score)
                        recent.append(score)
                    reward = clip_rewards(torch.as_tensor(raw_reward, dtype=torch.float32), a2c).to(device)
                    cut = time_limit_cut(terminated, truncated)
                    if cut.any():  # a time limit is not a terminal state: bootstrap through it
                        final = torch.from_numpy(info["final_obs"][cut]).to(device)
                        with torch.no_grad():
                            reward = fold_in_time_limit_bootstrap(
                                reward, torch.from_numpy(cut).to(device), model(final)[1], a2c.gamma)
                    rew_buf[t] = reward
                    done_buf[t] = torch.from_numpy(terminated | truncated).to(device, torch.float32)
                    obs = torch.from_numpy(next_obs).to(device)
                if diverged:
                    break

                rollout = Rollout(obs_buf, act_buf, rew_buf, done_buf, last_obs=obs)
                loss = a2c_update(model, optimizer, rollout, a2c, acc, grad, leap_loss)
                if loss is None:
                    diverged = True
                    break

                last = update == num_updates
                if update % cfg.meta.segment_every == 0 or last:
                    emit(last, update)
                if on_progress is not None and (update % cfg.runtime.log_every == 0 or last):
                    now = time.perf_counter()
                    steps = update * T * N
                    on_progress({
                        "task_id": spec.task_id, "game": spec.game, "env_steps": steps,
                        "updates": update, "episodes": len(returns_all),
                        "episode_return_mean": float(np.mean(recent)) if recent else float("nan"),
                        "fps": (steps - last_log_steps) / max(now - last_log_time, 1e-9),
                        "loss": loss.total.item(), "policy_loss": loss.policy.item(),
                        "value_loss": loss.value.item(), "entropy": loss.entropy.item(),
                    })
                    last_log_time, last_log_steps = now, steps
            if diverged:  # the learner drops a diverged task whole (its sum is no H_τ)
                emit(True, update)
        finally:
            env.close()

        return TaskResult(
            task_id=spec.task_id, game=spec.game, init_version=spec.init_version,
            env_steps=update * T * N, updates=update, segments=segment_index, diverged=diverged,
            seconds=time.perf_counter() - start, episode_returns=tuple(returns_all),
            path_length=path_length,
            param_part_norm=float(torch.linalg.vector_norm(self._task_param_part)),
            loss_part_norm=float(torch.linalg.vector_norm(self._task_loss_part)),
            final_return_mean=float(np.mean(recent)) if recent else float("nan"),
            encoder=model.encoder_flat.detach().cpu().clone() if keep_encoder else None,
        )
