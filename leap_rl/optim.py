"""The inner optimizer of each task (RMSProp, in either of its two common forms).

PyTorch's ``RMSprop`` starts the running average of g² at 0 and adds eps outside the root:

    v_i = α v_{i−1} + (1 − α) g_i²,   v_0 = 0,   θ_i = θ_{i−1} − lr · g_i / (sqrt(v_i) + eps)

so the first step is about lr · g / (sqrt(1 − α)·|g|) = 10·lr·sign(g) for α = 0.99, whatever the
gradient's size. TensorFlow 1's ``RMSPropOptimizer``, which OpenAI baselines' A2C (and the A2C
code of the paper's time) used, starts the average at 1 and puts eps inside the root:

    v_i = α v_{i−1} + (1 − α) g_i²,   v_0 = 1,   θ_i = θ_{i−1} − lr · g_i / sqrt(v_i + eps)

so its first steps are about lr · g: small. Stable-Baselines3 ships ``RMSpropTFLike`` for the
same reason. Under Leap's energy metric the early steps weigh most in Σ‖Δθ‖², so the choice
changes what Leap minimizes (LEAP.md §8; docs/RESULTS.md §3 measures it).

Both are written here (PyTorch's form with the arithmetic of ``torch.optim.RMSprop``'s
single-tensor path, in its order, so θ is the same bit for bit: tested) for one reason: they
can write the step they add to chosen parameters into given tensors (``step_out``). Leap needs
Δθ_i = θ_i − θ_{i−1} every update; read from there it costs no copy of θ and no subtraction
(``PathAccumulator.observe_step``).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from leap_rl.config import A2CConfig

StepOut = Mapping[torch.nn.Parameter, torch.Tensor]
_ZERO = torch.zeros(())  # broadcast: addcdiv reads no θ for the step


class _RMSpropBase(torch.optim.Optimizer):
    """RMSProp without momentum, not centered; subclasses say where v starts and where eps goes."""

    initial_square_avg = 0.0

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, alpha: float = 0.99,
                 eps: float = 1e-8, step_out: StepOut | None = None) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps))
        self.step_out = dict(step_out or {})
        """parameter → a tensor of its shape that each step() overwrites with the step it adds
        (the mapping may be replaced between steps: ``LeapInputs`` moves it along a ring)."""

    def _denominator(self, square_avg: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
        """The step's denominator from v, in a new tensor or in ``out``."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.full_like(p, self.initial_square_avg,
                                                          memory_format=torch.preserve_format)
                square_avg = state["square_avg"]
                square_avg.mul_(alpha).addcmul_(p.grad, p.grad, value=1.0 - alpha)
                out = self.step_out.get(p)
                if out is None:
                    p.addcdiv_(p.grad, self._denominator(square_avg, eps), value=-lr)
                else:
                    # addcdiv_ computes θ + (value·g)/d. Its own kernel on a zero θ gives the
                    # step (value·g)/d exactly (0 + x = x), and θ + step is then θ + (value·g)/d
                    # as before: bit for bit the same θ. d is made in ``out`` and the step
                    # overwrites it there, so the step costs no buffer of its own: ``out`` is
                    # still in the cache when θ (and Leap, for ‖Δθ‖) read it.
                    denominator = self._denominator(square_avg, eps, out)
                    torch.addcdiv(_ZERO, p.grad, denominator, value=-lr, out=out)
                    p.add_(out)
        return None


class RMSprop(_RMSpropBase):
    """PyTorch's form: v_0 = 0, θ −= lr · g / (sqrt(v) + eps); ``torch.optim.RMSprop``'s arithmetic."""

    def _denominator(self, square_avg: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sqrt(square_avg, out=out).add_(eps)


class TFRMSprop(_RMSpropBase):
    """RMSProp as TensorFlow 1 computes it: v_0 = 1, eps inside the root."""

    initial_square_avg = 1.0

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, alpha: float = 0.99,
                 eps: float = 1e-10, step_out: StepOut | None = None) -> None:
        super().__init__(params, lr, alpha, eps, step_out)

    def _denominator(self, square_avg: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.add(square_avg, eps, out=out).sqrt_()


def inner_optimizer(params: Iterable[torch.nn.Parameter], a2c: A2CConfig,
                    step_out: StepOut | None = None) -> torch.optim.Optimizer:
    """The task's optimizer named by ``a2c.optimizer``; ``step_out``: see ``_RMSpropBase``."""
    kind = TFRMSprop if a2c.optimizer == "rmsprop_tf" else RMSprop
    return kind(params, lr=a2c.lr, alpha=a2c.rms_alpha, eps=a2c.rms_eps, step_out=step_out)
