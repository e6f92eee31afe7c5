"""Leap inside an RLlib Learner: every gradient step is one point of the task's path.

Symbols as in LEAP.md and leap_rl/leap.py: θ_i the encoder's parameters before step i, g_i the
RAW gradient of the Learner's total loss at θ_i, f_i that loss (or its moving average,
``leap.loss_signal``).

RLlib's TorchLearner runs each minibatch of each epoch as

    forward_train → compute_losses → compute_gradients → postprocess_gradients → apply_gradients

``postprocess_gradients`` clips the gradient tensors in place (``grad_clip``), and
``apply_gradients`` steps the optimizer. So the mixin copies the encoder's raw gradients at
the end of ``compute_gradients``, and reads θ at the start of ``apply_gradients``, before the
step; the point (f_i, θ_i, g_i) goes to a PathAccumulator. The order is the A2C path's
(LEAP.md §6): backward → Leap reads → clip → step.

The accumulator lives in the Learner; the task runner takes segments out of it between
training iterations (``leap_flush``), locally or from a remote Learner. With several Learners
(DDP) every one sees the same all-reduced gradient and the same θ, and the first one's path is
the task's (its f is its own shard's loss).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass

import torch
from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
from ray.rllib.algorithms.impala.torch.impala_torch_learner import IMPALATorchLearner
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core import DEFAULT_MODULE_ID

from actors.rllib_inner.module import encoder_parameters
from leap_rl.leap import LeapConfig, PathAccumulator, PathStats
from leap_rl.task import LeapLoss

LEAP_KEY = "leap"
"""Where the Learner finds its LeapConfig (as a dict) in ``learner_config_dict``."""


@dataclass(frozen=True)
class LeapFlush:
    """What one ``leap_flush`` hands the task runner (picklable, on the CPU)."""

    vector: torch.Tensor
    """M_seg = Σ (Δθ_i + Δf̃_i·g_{i−1}) / w_i since the previous flush."""
    stats: PathStats
    points: int
    """Gradient steps observed so far in the task."""
    diverged: bool
    """A step had a non-finite loss or gradient; it was not observed."""
    task_param_part_norm: float
    """‖Σ_task Δθ/w‖ up to this flush."""
    task_loss_part_norm: float
    """‖Σ_task Δf̃·g/w‖ up to this flush."""


class LeapLearnerMixin:
    """Put first in the bases, before the algorithm's TorchLearner (its hooks call super())."""

    def build(self) -> None:
        super().build()
        leap = LeapConfig(**self.config.learner_config_dict[LEAP_KEY])
        self._leap_params = encoder_parameters(self.module[DEFAULT_MODULE_ID].unwrapped())
        n = sum(p.numel() for p in self._leap_params)
        device = self._leap_params[0].device
        self._leap_acc = PathAccumulator(n, leap, device=device)
        self._leap_signal = LeapLoss(leap)
        self._leap_grad = torch.zeros(n, device=device)
        self._leap_theta = torch.zeros(n, device=device)
        self._leap_task_param_part = torch.zeros(n, device=device)
        self._leap_task_loss_part = torch.zeros(n, device=device)
        self._leap_loss: float | None = None
        self._leap_points = 0
        self._leap_diverged = False
        # IMPALA and APPO update in a Learner thread while the runner flushes from its own.
        self._leap_lock = threading.Lock()

    def compute_gradients(self, loss_per_module, **kwargs):
        grads = super().compute_gradients(loss_per_module, **kwargs)
        self._leap_loss = float(loss_per_module[DEFAULT_MODULE_ID].detach())
        # g_i, raw: copied now because postprocess_gradients clips these tensors in place.
        torch.cat([p.grad.reshape(-1) for p in self._leap_params], out=self._leap_grad)
        return grads

    def apply_gradients(self, gradients_dict) -> None:
        # θ_i: the parameters the gradient was taken at; the step below moves them.
        with torch.no_grad():
            torch.cat([p.reshape(-1) for p in self._leap_params], out=self._leap_theta)
        self._leap_observe(self._leap_loss, self._leap_theta, self._leap_grad)
        super().apply_gradients(gradients_dict)

    def _leap_observe(self, loss: float, theta: torch.Tensor, grad: torch.Tensor) -> None:
        """One point of the path; a non-finite one is not observed and flags the task."""
        with self._leap_lock:
            if not math.isfinite(loss) or not bool(torch.isfinite(grad).all()):
                self._leap_diverged = True
                return
            # LeapLoss reads only the total for 'total' and 'smoothed' (config rejects 'value').
            self._leap_acc.observe(self._leap_signal(None, loss), theta, grad)
            self._leap_points += 1

    def leap_flush(self, final: bool = False) -> LeapFlush:
        """Hand over M_seg and its statistics, and zero them (the last point is kept).

        ``final``: the task is over. IMPALA and APPO update in a background thread that may
        still hold batches; it is shut down first (RLlib's ``Learner.shutdown``, idempotent, which
        ``Algorithm.stop`` calls again), so that no point comes after the last segment.
        """
        if final:
            self.shutdown()
        with self._leap_lock:
            acc = self._leap_acc
            stats = acc.stats()
            self._leap_task_param_part += acc.param_part
            self._leap_task_loss_part += acc.loss_part
            vector = acc.flush().cpu()
            return LeapFlush(
                vector=vector, stats=stats, points=self._leap_points, diverged=self._leap_diverged,
                task_param_part_norm=float(torch.linalg.vector_norm(self._leap_task_param_part)),
                task_loss_part_norm=float(torch.linalg.vector_norm(self._leap_task_loss_part)))

    def leap_progress(self) -> tuple[int, bool]:
        """(gradient steps observed so far, whether a step was non-finite)."""
        with self._leap_lock:
            return self._leap_points, self._leap_diverged

    def leap_encoder(self) -> torch.Tensor:
        """The encoder θ now, flat, on the CPU (the layout of φ)."""
        with torch.no_grad():
            return torch.cat([p.reshape(-1) for p in self._leap_params]).cpu()


class LeapPPOTorchLearner(LeapLearnerMixin, PPOTorchLearner):
    pass


class LeapAPPOTorchLearner(LeapLearnerMixin, APPOTorchLearner):
    pass


class LeapIMPALATorchLearner(LeapLearnerMixin, IMPALATorchLearner):
    pass


LEARNERS = {"PPO": LeapPPOTorchLearner, "APPO": LeapAPPOTorchLearner, "IMPALA": LeapIMPALATorchLearner}


def leap_config_dict(leap: LeapConfig) -> dict:
    return dataclasses.asdict(leap)
