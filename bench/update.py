"""The A2C update alone, with Leap's part of it timed separately, and the axpy it is measured in.

Leap is memory-bound, so its share of an update moves with the machine; counted in axpys (one
``a.add_(b, alpha=c)`` of an encoder-sized vector, timed in the same run) it does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.timing import Timing, clocks, repeat
from leap_rl.config import RunConfig
from leap_rl.envs import num_actions
from leap_rl.leap import PathAccumulator
from leap_rl.leap_inputs import MEASURED_FIRST, LeapInputs
from leap_rl.models import ActorCritic
from leap_rl.optim import inner_optimizer
from leap_rl.task import Rollout, a2c_update


@dataclass(frozen=True)
class UpdateTiming:
    """One update split into the A2C work and Leap's part (timed inside the same updates)."""

    update: Timing
    """Bootstrap value, returns, forward, backward, clip, RMSProp step: everything but Leap."""
    leap: Timing
    """``PathAccumulator.observe_step`` as the loop calls it, and the ‖Δθ‖ that ``LeapInputs``
    takes after the optimizer's step."""
    reference: Timing
    """``PathAccumulator.observe`` on the same points (the reference form, which copies θ and
    g): timed for comparison, the loop does not pay it."""
    encoder_params: int


class _TimedAccumulator:
    """Stands in for the loop's ``PathAccumulator`` inside ``a2c_update`` and times its part:
    ``observe_step`` first, with the buffers as cold in the caches as the loop has them; then
    the reference ``observe`` on the same point, into an accumulator of its own."""

    def __init__(self, acc: PathAccumulator, inputs: LeapInputs) -> None:
        self.acc, self.inputs = acc, inputs
        self.reference = PathAccumulator(acc.num_params, acc.config)
        self.sums = {"leap": [0.0, 0.0], "reference": [0.0, 0.0]}  # [wall, cpu]

    def _add(self, key: str, a: tuple[float, float], b: tuple[float, float]) -> None:
        self.sums[key][0] += b[0] - a[0]
        self.sums[key][1] += b[1] - a[1]

    def observe_step(self, loss: float, params: torch.Tensor, step: torch.Tensor | None,
                     prev_grad: torch.Tensor | None, prev_grad_scale: float = 1.0,
                     step_norm: float | None = None) -> None:
        t0 = clocks()
        self.acc.observe_step(loss, params, step, prev_grad, prev_grad_scale, step_norm)
        t1 = clocks()
        self.reference.observe(loss, params, self.inputs.grad)  # g_i, raw: clipping comes next
        t2 = clocks()
        self._add("leap", t0, t1)
        self._add("reference", t1, t2)

    def defer(self, rows: torch.Tensor, block: int) -> None:
        self.acc.defer(rows, block)

    def restart(self) -> None:
        """The model was restored: a new path starts. The accumulator's last block of deferred
        rows is added here, timed as Leap's. The loop's inputs go on counting updates, so the
        bench times a long task's steady state (after ``leap_inputs.MEASURED_FIRST``)."""
        t0 = clocks()
        self.acc.loss_part, self.acc.param_part  # noqa: B018 (reading them adds what waits)
        self._add("leap", t0, clocks())
        self.acc.reset()
        self.reference.reset()


class _TimedInputs(LeapInputs):
    """The loop's ``LeapInputs``; the ‖Δθ‖ it takes right after the optimizer's step is timed
    as Leap's part too."""

    timer: _TimedAccumulator

    def stepped(self) -> None:
        t0 = clocks()
        super().stepped()
        self.timer._add("leap", t0, clocks())


def bench_update(cfg: RunConfig, game: str, frames: torch.Tensor, seconds: float) -> UpdateTiming:
    """The loop's update (``task.a2c_update``, the very function ``TaskRunner.run`` calls, with
    its optimizer and Leap inputs) on a stored batch of ``unroll × num_envs`` frames, with
    Leap's part timed separately. The model is restored every 50 updates so repeated steps on
    one batch never drift into a degenerate (or non-finite) regime."""
    a2c, T, N = cfg.a2c, cfg.a2c.unroll, cfg.env.num_envs
    torch.manual_seed(cfg.seed)
    n_act = num_actions(game, cfg.env.full_action_space)
    model = ActorCritic(cfg.model, n_act)
    n = model.encoder_flat.numel()
    inputs = _TimedInputs(n, cfg.leap)
    optimizer = inner_optimizer(model.parameters(), a2c, step_out=inputs.step_out(model))
    acc = inputs.timer = _TimedAccumulator(PathAccumulator(n, cfg.leap), inputs)
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
            acc.restart()
        count += 1
        t0 = clocks()
        if a2c_update(model, optimizer, rollout, a2c, acc, inputs) is None:
            raise RuntimeError("bench: the update's loss is not finite")
        t1 = clocks()
        total[0] += t1[0] - t0[0]
        total[1] += t1[1] - t0[1]

    # warm-up (past a task's first updates, which measure every step), then count what follows
    warmup = MEASURED_FIRST + 1 if cfg.leap.path_stats_every > 1 else 2
    repeat(step, 0.0, warmup=warmup, min_iters=1)
    for v in (total, *acc.sums.values()):
        v[0] = v[1] = 0.0
    iters = repeat(step, seconds, warmup=0).iters
    leap, ref = acc.sums["leap"], acc.sums["reference"]
    update = Timing(iters, total[0] - leap[0] - ref[0], total[1] - leap[1] - ref[1])
    return UpdateTiming(update, Timing(iters, *leap), Timing(iters, *ref), n)


COLD_BYTES = 256 * 2**20
"""Vectors rotated through by the cold axpy: more than any last-level cache holds."""


def bench_axpy(num_params: int, seconds: float, cold: bool = True) -> Timing:
    """One axpy, ``a.add_(b, alpha=c)``, on vectors of ``num_params`` floats: Leap's unit.

    ``cold``: every axpy on a different pair of a rotation larger than the caches, so both
    vectors come from memory, as Leap's do in the loop (written an update earlier, with the
    whole forward and backward pass in between). Hot: the same pair every time, in cache.
    """
    pairs = max(1, -(-COLD_BYTES // (8 * num_params))) if cold else 1
    vectors = [(torch.zeros(num_params), torch.full((num_params,), 1e-3)) for _ in range(pairs)]
    i = 0

    def step() -> None:
        nonlocal i
        a, b = vectors[i % pairs]
        a.add_(b, alpha=-0.5)
        i += 1

    return repeat(step, seconds, warmup=max(5, pairs))


def bench_step_out(num_params: int, seconds: float) -> tuple[Timing, Timing]:
    """The optimizer's passes after v's update, two ways, on ``num_params`` floats from memory
    (a rotation like the cold axpy's): PyTorch's ``d = sqrt(v) + eps; θ.addcdiv_(g, d, value=-lr)``,
    and optim.RMSprop's with ``step_out``, which makes d in the step buffer s and overwrites it
    with the step there (``sqrt(v, out=s) + eps``; ``addcdiv(0, g, s, value=-lr, out=s)``;
    ``θ.add_(s)``). The difference is what writing Δθ out costs the optimizer: Leap's share of
    the update outside ``observe_step``."""
    sets = max(1, -(-COLD_BYTES // (16 * num_params)))
    vectors = [(torch.zeros(num_params), torch.full((num_params,), 1e-3), torch.full((num_params,), 4.0),
                torch.zeros(num_params)) for _ in range(sets)]
    lr, eps = 1e-4, 1e-5
    i = 0

    def fused() -> None:
        nonlocal i
        theta, g, v, _s = vectors[i % sets]
        theta.addcdiv_(g, v.sqrt().add_(eps), value=-lr)
        i += 1

    zero = torch.zeros(())

    def kept() -> None:
        nonlocal i
        theta, g, v, s = vectors[i % sets]
        torch.sqrt(v, out=s).add_(eps)
        torch.addcdiv(zero, g, s, value=-lr, out=s)
        theta.add_(s)
        i += 1

    return repeat(fused, seconds, warmup=sets), repeat(kept, seconds, warmup=sets)
