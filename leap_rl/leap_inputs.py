"""What a training loop hands Leap every update without copying anything (LEAP.md §2, §6).

``PathAccumulator.observe_step`` needs, at the point θ_i: f_i, Δθ_i = θ_i − θ_{i−1} and the
raw g_{i−1}. The loop already has both vectors if it keeps them in the right places: the
optimizer writes the step it adds to the encoder into a buffer (``optim``'s ``step_out``), and
the encoder's gradient alternates between two buffers, so g_{i−1} is still there (clipped in
place, by a factor known exactly) while backward writes g_i. That takes Leap to its memory
floor: about one axpy per update under energy (``leap-rl bench`` measures it).
"""

from __future__ import annotations

import torch

from leap_rl.leap import PathAccumulator
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


class LeapInputs:
    """What the loop hands ``PathAccumulator.observe_step`` every update, held without copies.

    - The encoder's ``.grad`` tensors are views of one of two flat buffers, alternating every
      update: backward writes g_i into one while the other still holds g_{i−1}, scaled in place
      by the clipping factor c_{i−1} that the accumulator divides back out (a scalar).
    - ``step`` is where the optimizer writes Δθ, the step it adds to the encoder
      (``optim.inner_optimizer(..., step_out=inputs.step_out(model))``).
    """

    def __init__(self, num_params: int, device: torch.device | str = "cpu") -> None:
        self.grads = (torch.zeros(num_params, device=device), torch.zeros(num_params, device=device))
        self.step = torch.zeros(num_params, device=device)
        self.start_task()

    def start_task(self) -> None:
        self._updates = 0
        self._prev_scale = 1.0

    def step_out(self, model: ActorCritic) -> dict[torch.nn.Parameter, torch.Tensor]:
        return encoder_views(model, self.step)

    @property
    def grad(self) -> torch.Tensor:
        """The buffer this update's raw encoder gradient goes to."""
        return self.grads[self._updates % 2]

    def bind(self, model: ActorCritic) -> None:
        """Before an update's zero_grad and backward: the encoder's ``.grad`` → ``self.grad``
        (zero_grad zeroes it: it held g_{i−2}, which Leap no longer needs)."""
        for p, view in encoder_views(model, self.grad).items():
            p.grad = view

    def observe(self, acc: PathAccumulator, loss: float, model: ActorCritic,
                optimizer: torch.optim.Optimizer) -> None:
        """After backward, before clipping: the point (θ_i, f_i) with Δθ_i and g_{i−1}."""
        first = next(model.encoder.parameters())
        if first.grad is None or first.grad.data_ptr() != self.grad.data_ptr():
            raise RuntimeError("the encoder's gradients no longer live in the Leap buffer "
                               "(were they set to None?)")
        if self._updates == 0:
            out = getattr(optimizer, "step_out", {}).get(first)
            if out is None or out.data_ptr() != self.step.data_ptr():
                raise RuntimeError("the optimizer does not write the encoder's steps into LeapInputs.step: "
                                   "make it with inner_optimizer(..., step_out=inputs.step_out(model))")
            acc.observe_step(loss, model.encoder_flat, None, None)
        else:
            acc.observe_step(loss, model.encoder_flat, self.step, self.grads[(self._updates - 1) % 2],
                             self._prev_scale)

    def clipped(self, scale: float) -> None:
        """The update's gradient was scaled by ``scale``; the next update writes the other buffer."""
        self._prev_scale = scale
        self._updates += 1
