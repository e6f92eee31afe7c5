"""What a training loop hands Leap every update without copying anything (LEAP.md §2, §6).

``PathAccumulator.observe_step`` needs, at the point θ_i: f_i, Δθ_i = θ_i − θ_{i−1} and the
raw g_{i−1}. The loop already has both vectors if it keeps them in the right places: the
optimizer writes the step it adds to the encoder into a buffer (``optim``'s ``step_out``), and
the encoder's gradient moves to the next row of a small matrix every update, so g_{i−1} is
still there (clipped in place, by a factor known exactly) while backward writes g_i. Nothing
is copied, and the accumulator adds the rows a block at a time (``PathAccumulator.defer``):
``leap-rl bench`` measures what is left in axpys (docs/BENCH.md rounds 3 and 4).
"""

from __future__ import annotations

import torch

from leap_rl.leap import LeapConfig, PathAccumulator
from leap_rl.models import ActorCritic


def bind_encoder_grads(model: ActorCritic, flat: torch.Tensor) -> torch.Tensor:
    """Make the encoder's ``.grad`` tensors views of ``flat`` (zeroed) and return ``flat``.

    Backward accumulates into an existing ``.grad`` in place, so with the gradients zeroed (not
    set to None) every update, ``flat`` holds the encoder's raw gradient right after backward:
    Leap reads it there instead of gathering a copy with ``model.encoder_grad_into``.
    """
    flat.zero_()
    for p, view in encoder_views(model, flat).items():
        p.grad = view
    return flat


def encoder_views(model: ActorCritic, flat: torch.Tensor) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Each encoder parameter → its piece of ``flat`` (the layout of ``model.encoder_flat``)."""
    views, offset = {}, 0
    for p in model.encoder.parameters():
        views[p] = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    if offset != flat.numel():
        raise ValueError(f"encoder has {offset} parameters, the buffer {flat.numel()}")
    return views


def clip_gradients(model: ActorCritic, max_norm: float) -> float:
    """Clip all gradients to total norm ``max_norm`` in place (0: off); return the factor applied.

    The factor is ``torch.nn.utils.clip_grad_norm_``'s own, recomputed from the norm it returns
    with its arithmetic (its 1e-6 and clamp, in float32), so dividing it back out of a clipped
    gradient is exact up to one rounding (tests/test_a2c.py checks it against the raw gradient).
    """
    if max_norm <= 0:
        return 1.0
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(torch.clamp(max_norm / (total + 1e-6), max=1.0))


DEFER_BLOCK = 4
"""Gradients (and, under the length metric, steps) Leap adds in one matrix–vector product.
In a profile of the update on this project's machines, blocks of 2 and of 8 were slower than
4 (a one-off measurement, not a bench row). Twice this many rows of each are kept, so that a
block waits while the next is written."""


MEASURED_FIRST = 25
"""With ``leap.path_stats_every`` > 1, a task's first updates still measure every step: the
first RMSProp steps are the largest (torch's form starts v at 0, so its first step is about
10·lr·sign(g)), and holding one of them over several updates would overstate the path
(docs/BENCH.md round 4 measures what is left of the error)."""


class LeapInputs:
    """What the loop hands ``PathAccumulator.observe_step`` every update, held without copies.

    - The encoder's ``.grad`` tensors are views of one row of ``grads`` (2·DEFER_BLOCK rows),
      the next row every update: backward writes g_i into its row while g_{i−1} (and the
      gradients before it that Leap has not added yet) stay in theirs, scaled in place by the
      clipping factor, which the accumulator divides back out (a scalar).
    - ``steps``: where the optimizer writes Δθ, the step it adds to the encoder
      (``optim.inner_optimizer(..., step_out=inputs.step_out(model))``). Under the length
      metric Leap adds the steps too, so they take turns in rows like the gradients; under
      energy only the step's norm is read and one row serves.
    - With ``leap.path_stats_every`` = n > 1 (energy), after the task's first MEASURED_FIRST
      updates only every n-th step is written out and handed over; the optimizer's fused step
      does the others.
    - The accumulator is told (``PathAccumulator.defer``) that it may add the rows a block at a
      time: a row is rewritten 2·DEFER_BLOCK updates after it was written, and a block is
      added at the latest when its last row is handed over.
    """

    def __init__(self, num_params: int, leap: LeapConfig = LeapConfig(), device: torch.device | str = "cpu") -> None:
        rows = 2 * DEFER_BLOCK
        self.grads = torch.zeros(rows, num_params, device=device)
        self.steps = torch.zeros(rows if leap.metric == "length" else 1, num_params, device=device)
        self.stats_every = leap.path_stats_every
        self._step_views: list[dict[torch.nn.Parameter, torch.Tensor]] | None = None
        self.start_task()

    def start_task(self) -> None:
        self._updates = 0
        self._prev_scale = 1.0
        self._step_norm: float | None = None  # ‖Δθ‖ of the step the last update wrote out

    def step_out(self, model: ActorCritic) -> dict[torch.nn.Parameter, torch.Tensor]:
        """The encoder's step views for the optimizer (``step_out``); ``observe`` moves it on to
        the next row of ``steps`` every update."""
        self._step_views = [encoder_views(model, row) for row in self.steps]
        return self._step_views[0]

    def _row(self, rows: torch.Tensor, update: int) -> torch.Tensor:
        return rows[update % rows.shape[0]]

    @property
    def grad(self) -> torch.Tensor:
        """The buffer this update's raw encoder gradient goes to."""
        return self._row(self.grads, self._updates)

    def bind(self, model: ActorCritic) -> None:
        """Before an update's zero_grad and backward: the encoder's ``.grad`` → ``self.grad``
        (zero_grad zeroes it: it held a gradient Leap has added already)."""
        for p, view in encoder_views(model, self.grad).items():
            p.grad = view

    def observe(self, acc: PathAccumulator, loss: float, model: ActorCritic,
                optimizer: torch.optim.Optimizer) -> None:
        """After backward, before clipping: the point (θ_i, f_i) with Δθ_i and g_{i−1}; then
        points the optimizer's step output at this update's row."""
        first = next(model.encoder.parameters())
        if first.grad is None or first.grad.data_ptr() != self.grad.data_ptr():
            raise RuntimeError("the encoder's gradients no longer live in the Leap buffer "
                               "(were they set to None?)")
        u = self._updates
        if u == 0:
            out = getattr(optimizer, "step_out", {}).get(first)
            if self._step_views is None or out is None or out.data_ptr() != self.steps[0].data_ptr():
                raise RuntimeError("the optimizer does not write the encoder's steps into LeapInputs.steps: "
                                   "make it with inner_optimizer(..., step_out=inputs.step_out(model))")
            acc.defer(self.grads, DEFER_BLOCK)
            if self.steps.shape[0] > 1:
                acc.defer(self.steps, DEFER_BLOCK)
            acc.observe_step(loss, model.encoder_flat, None, None)
        else:
            step = self._row(self.steps, u - 1) if self._measured(u) else None
            acc.observe_step(loss, model.encoder_flat, step, self._row(self.grads, u - 1), self._prev_scale,
                             step_norm=self._step_norm if step is not None else None)
        # this update's step is Δθ at the next point: written out only if that one is measured
        optimizer.step_out = self._step_views[u % len(self._step_views)] if self._measured(u + 1) else {}

    def _measured(self, update: int) -> bool:
        """Whether the point of ``update`` (≥ 1) is handed its step Δθ."""
        return update <= MEASURED_FIRST or (update - 1) % self.stats_every == 0

    def clipped(self, scale: float) -> None:
        """The update's gradient was scaled by ``scale``; the next update writes the next rows."""
        self._prev_scale = scale
        self._updates += 1

    def stepped(self) -> None:
        """After the optimizer's step: ‖Δθ‖ of the step it wrote out, read now, while the
        optimizer's last passes have left it in the cache (the next point is handed the norm)."""
        written = self._measured(self._updates)
        self._step_norm = float(torch.linalg.vector_norm(self._row(self.steps, self._updates - 1))) if written else None
