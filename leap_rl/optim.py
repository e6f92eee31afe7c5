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
"""

from __future__ import annotations

from typing import Iterable

import torch

from leap_rl.config import A2CConfig


class TFRMSprop(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1 computes it (no momentum, not centered): v_0 = 1, eps inside the root."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, alpha: float = 0.99,
                 eps: float = 1e-10) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                square_avg = state["square_avg"]
                square_avg.mul_(alpha).addcmul_(p.grad, p.grad, value=1.0 - alpha)
                p.addcdiv_(p.grad, square_avg.add(eps).sqrt_(), value=-lr)
        return None


def inner_optimizer(params: Iterable[torch.nn.Parameter], a2c: A2CConfig) -> torch.optim.Optimizer:
    """The task's optimizer named by ``a2c.optimizer``."""
    if a2c.optimizer == "rmsprop_tf":
        return TFRMSprop(params, lr=a2c.lr, alpha=a2c.rms_alpha, eps=a2c.rms_eps)
    return torch.optim.RMSprop(params, lr=a2c.lr, alpha=a2c.rms_alpha, eps=a2c.rms_eps)
