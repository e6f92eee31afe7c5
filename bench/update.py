"""The A2C update alone, with Leap's part of it timed separately, and the axpy it is measured in."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.timing import Timing, clocks, repeat
from leap_rl.config import RunConfig
from leap_rl.envs import num_actions
from leap_rl.leap import PathAccumulator
from leap_rl.models import ActorCritic
from leap_rl.task import Rollout, a2c_update, bind_encoder_grads


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
        t0 = clocks()
        self.acc.observe(loss, params, grad)
        t1 = clocks()
        self.model.encoder_grad_into(self.scratch)
        t2 = clocks()
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
        t0 = clocks()
        if a2c_update(model, optimizer, rollout, a2c, acc, grad) is None:
            raise RuntimeError("bench: the update's loss is not finite")
        t1 = clocks()
        total[0] += t1[0] - t0[0]
        total[1] += t1[1] - t0[1]

    repeat(step, 0.0, warmup=2, min_iters=1)  # warm-up, then count only what follows
    for v in (total, *acc.sums.values()):
        v[0] = v[1] = 0.0
    iters = repeat(step, seconds, warmup=0).iters
    leap, gather = acc.sums["leap"], acc.sums["gather"]
    update = Timing(iters, total[0] - leap[0] - gather[0], total[1] - leap[1] - gather[1])
    return UpdateTiming(update, Timing(iters, *leap), Timing(iters, *gather), n)
