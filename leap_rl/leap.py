"""The Leap meta-gradient (Flennerhag et al., ICLR 2019), streamed one step at a time.

Symbols, as in the project's LEAP.md (sections 2 and 3):

    params        θ_i        meta-learned parameters after step i (1-D, one flat vector)
    grad          g_i        RAW gradient of the loss at θ_i (before clipping and the step)
    loss          f_i        the mini-batch loss at θ_i, a detached float
    delta_theta   Δθ_i       θ_i − θ_{i−1}
    delta_loss    Δf_i       f_i − f_{i−1}
    loss_term     Δf̃_i       −|Δf_i| with the stabilizer, Δf_i without it, 0 with loss=False
    weight        w_i        sqrt(Δf̃_i² + ‖Δθ_i‖²) for the length metric, 1 for energy

Each consecutive pair (i−1, i) adds (Δθ_i + Δf̃_i · g_{i−1}) / w_i to an accumulator M.
The task's Leap increment is h = −M, and the meta-gradient of a meta-batch of tasks that
started from the same initialization φ is G = −(1/|B|) Σ_τ M_τ.

K observed points give K−1 increments, as in the reference code (the last point is never the
earlier half of a pair). Flushing hands M over and zeroes it but keeps the previous point, so
the pair straddling a segment boundary is counted exactly once and the sum of all segments of
a task equals the unsegmented result.

Under the energy metric every w_i is 1, so Σ Δθ_i telescopes to θ_last − θ_first: that part is
read off two points at flush time instead of being summed step by step.

Two ways to show the accumulator a point:

- ``observe(f_i, θ_i, g_i)``: the reference form. It copies θ_i and g_i (the caller changes
  both afterwards), so Δθ_i is a subtraction and g_{i−1} a copy: about five passes over the
  vector per step.
- ``observe_step(f_i, θ_i, Δθ_i, g_{i−1}, c_{i−1})``: the same sum at its memory floor, for a
  training loop that already holds Δθ_i (the step its optimizer added, ``optim.RMSprop``'s
  ``step_out``) and g_{i−1} (its gradient alternates between two buffers, and clipping scaled
  the old one in place by c_{i−1}, which is divided back out of a scalar). Per step: ‖Δθ_i‖
  and the loss term's axpy under energy, plus the Δθ_i/w_i axpy under length.
  ``leap-rl bench`` measures both in axpys.

Deferred adds (``defer``): a loop that writes its gradients (and steps) into the rows of a
matrix in turn can let the accumulator wait and add a whole block of rows in one matrix–vector
product, Σ_j c_j·v_j = Vᵀc: the accumulator is then read and written once per block instead of
once per step, which is most of an axpy's memory traffic. Same sum, other rounding order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

Metric = Literal["length", "energy"]
METRICS: tuple[str, ...] = ("length", "energy")
LossSignal = Literal["total", "value", "smoothed"]
LOSS_SIGNALS: tuple[str, ...] = ("total", "value", "smoothed")


@dataclass(frozen=True)
class LeapConfig:
    """How the path is measured. Defaults are the reference code's (length, loss, stabilizer)."""

    metric: Metric = "length"
    """'length' (d1: each step weighted by 1/w_i) or 'energy' (d2: w_i = 1, used on Atari)."""
    loss: bool = True
    """Include the loss as a coordinate of the task manifold (Δf̃ term)."""
    stabilizer: bool = True
    """Use Δf̃ = −|Δf| so the loss term never points uphill."""
    eps: float = 1e-12
    """Floor on w_i: a step that changes nothing must not divide by zero."""
    loss_signal: LossSignal = "total"
    """Which f is the loss coordinate of the manifold: 'total' (the A2C loss being minimized,
    the paper's), 'value' (the value loss alone: the policy loss of consecutive on-policy
    batches is mostly noise, LEAP.md §6), or 'smoothed' (an exponential moving average of the
    total with factor ``loss_smoothing``). The task computes f; the accumulator takes a float."""
    loss_smoothing: float = 0.9
    """'smoothed' only: f̄_i = β f̄_{i−1} + (1 − β) f_i with β = this, f̄_1 = f_1."""
    path_stats_every: int = 1
    """Energy only: measure ‖Δθ_i‖, which only the path statistics use under energy (the vector
    telescopes), at every n-th point, and hold the last measured value in between (Δf̃_i is
    exact at every point; the A2C loop measures a task's first 25 points all, where the steps
    shrink fast: ``leap_inputs.MEASURED_FIRST``). The loop then writes Δθ out and reads it only
    on those updates, which takes Leap from about 2.7 axpys per update to about 1.1 (docs/BENCH.md
    round 4). The path statistics become an estimate, too high where the steps shrink: the
    task's path length +6 % / +10 % (n = 4 / 8) on a 16k-step quick Seaquest task, +4 % / +1 %
    on a 48k-step paper Breakout one.
    The vector stays exact; 1 (the default) measures every step. Length needs every w_i. The
    reference ``observe`` (RLlib's inner loop) always measures every step."""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"leap.metric must be one of {METRICS}, got {self.metric!r}")
        if self.loss_signal not in LOSS_SIGNALS:
            raise ValueError(f"leap.loss_signal must be one of {LOSS_SIGNALS}, got {self.loss_signal!r}")
        if not 0 <= self.loss_smoothing < 1:
            raise ValueError(f"leap.loss_smoothing must be in [0, 1), got {self.loss_smoothing!r}")
        if not self.eps > 0:
            raise ValueError(f"leap.eps must be > 0, got {self.eps!r}")
        if not (isinstance(self.path_stats_every, int) and self.path_stats_every >= 1):
            raise ValueError(f"leap.path_stats_every must be an integer ≥ 1, got {self.path_stats_every!r}")
        if self.metric == "length" and self.path_stats_every != 1:
            raise ValueError("leap.path_stats_every must be 1 with metric 'length' (every weight w_i needs "
                             f"‖Δθ_i‖), got {self.path_stats_every!r}")

    @property
    def is_reptile(self) -> bool:
        """Energy without the loss term telescopes to θ_0 − θ_K: Reptile."""
        return self.metric == "energy" and not self.loss


@dataclass(frozen=True)
class PathStats:
    """Free statistics of the path since the last flush (LEAP.md §3)."""

    increments: int
    path_length: float
    """Σ w_i: the quantity Leap lowers (for energy, Σ sqrt(Δf̃² + ‖Δθ‖²) is still reported)."""
    step_norm_sum: float
    """Σ ‖Δθ_i‖."""
    measured_steps: int
    """Increments whose ‖Δθ_i‖ was measured: all of them unless ``path_stats_every`` > 1, when
    the others count the last measured ‖Δθ‖ in the two sums above."""
    abs_loss_change_sum: float
    """Σ |Δf_i|."""
    param_part_norm: float
    """‖Σ Δθ_i / w_i‖: the parameter-displacement part of the vector."""
    loss_part_norm: float
    """‖Σ Δf̃_i · g_{i−1} / w_i‖: the loss-gradient part of the vector."""


class _DeferredSum:
    """``target += c·v`` for each ``add(v, c)``; a v that is a row of a deferred matrix waits,
    and a run of consecutive rows of one block is added in one ``addmv`` when the block's last
    row arrives or ``drain`` is called. Anything else (another vector, a row out of turn) first
    drains what waits, so the sum is always the one asked for."""

    def __init__(self, target: torch.Tensor) -> None:
        self.target = target
        self._run: tuple[torch.Tensor, int, list[float]] | None = None  # matrix, first row, coefs

    def add(self, vector: torch.Tensor, coef: float, where: tuple[torch.Tensor, int, int] | None) -> None:
        if where is None:
            self.drain()
            self.target.add_(vector, alpha=coef)
            return
        matrix, block, row = where
        run = self._run
        if run is not None and (run[0] is not matrix or row != run[1] + len(run[2])):
            self.drain()
            run = None
        if run is None:
            run = self._run = (matrix, row, [])
        run[2].append(coef)
        if (row + 1) % block == 0:
            self.drain()

    def drain(self) -> None:
        if self._run is None:
            return
        matrix, first, coefs = self._run
        self._run = None
        if len(coefs) == 1:
            self.target.add_(matrix[first], alpha=coefs[0])
        else:
            c = torch.tensor(coefs, dtype=self.target.dtype, device=self.target.device)
            self.target.addmv_(matrix[first:first + len(coefs)].t(), c)


class PathAccumulator:
    """Reduces one task's gradient path into a single vector, one step at a time.

    Usage (the order inside a training step matters, see LEAP.md §6)::

        acc = PathAccumulator(num_params=n, config=LeapConfig(metric="energy"))
        for batch in task:
            loss.backward()
            acc.observe(loss.item(), flat_params, flat_raw_grads)   # before clip and step
            clip_grad_norm_(...); optimizer.step()
            if time_to_send:
                stats = acc.stats()
                send(acc.flush(), stats)
        acc.reset()   # next task

    With ``observe_step`` (what ``TaskRunner`` does), flush between observing and the step::

            acc.observe_step(loss.item(), flat_params, last_step, prev_raw_grads_buffer, prev_clip_coef)
            if time_to_send:
                stats = acc.stats()
                send(acc.flush(), stats)             # θ is still the point just observed
            clip_grad_norm_(...); optimizer.step()   # writes the next Δθ into last_step

    All vectors are preallocated on ``device``; both forms only do in-place vector ops.
    """

    def __init__(
        self,
        num_params: int,
        config: LeapConfig = LeapConfig(),
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if num_params <= 0:
            raise ValueError(f"num_params must be positive, got {num_params}")
        self.config = config
        self.num_params = num_params
        make = lambda: torch.zeros(num_params, device=device, dtype=dtype)  # noqa: E731
        self._prev_params = make()
        self._prev_grad = make()
        self._delta_theta = make()
        self._param_part = make()  # Σ Δθ_i / w_i (length metric only; energy telescopes)
        self._first_params = make()  # energy: θ at the start of the segment, Σ Δθ_i = θ_last − this
        self._loss_part = make()  # Σ Δf̃_i · g_{i−1} / w_i
        self._param_sum, self._loss_sum = _DeferredSum(self._param_part), _DeferredSum(self._loss_part)
        self._deferred: list[tuple[torch.Tensor, int]] = []  # (matrix, block) from defer()
        self._prev_loss = 0.0
        self._held_step_norm = 0.0  # the last measured ‖Δθ‖ (path_stats_every > 1)
        self._has_prev = False
        self._last_params = self._prev_params  # θ of the last point: a copy, or observe_step's live θ
        self._form: str | None = None  # 'observe' or 'observe_step', fixed per task
        self._zero_stats()

    def defer(self, rows: torch.Tensor, block: int) -> None:
        """Let ``observe_step`` wait with the rows of ``rows`` (R × num_params, contiguous) it is
        handed as Δθ_i or g_{i−1}, and add the rows of each block of ``block`` (rows 0…block−1,
        block…2·block−1, …) in one matrix–vector product when the block's last row is handed
        over, or at ``flush``, ``reset`` and any read of the parts.

        The caller promises a row it handed over stays unchanged until then, as a loop does
        that writes row u mod R at update u with R ≥ 2·block (``LeapInputs``)."""
        if rows.dim() != 2 or rows.shape[1] != self.num_params or not rows.is_contiguous():
            raise ValueError(f"defer needs a contiguous (rows, {self.num_params}) matrix, got {tuple(rows.shape)}")
        if not 1 <= block <= rows.shape[0]:
            raise ValueError(f"defer's block must be in [1, {rows.shape[0]}], got {block}")
        if all(m is not rows for m, _ in self._deferred):
            self._deferred.append((rows, block))

    def _row_of(self, vector: torch.Tensor) -> tuple[torch.Tensor, int, int] | None:
        """(matrix, block, row) when ``vector`` is a row of a deferred matrix, else None."""
        for matrix, block in self._deferred:
            offset = vector.data_ptr() - matrix.data_ptr()
            size = self.num_params * matrix.element_size()
            if (0 <= offset < matrix.shape[0] * size and offset % size == 0 and vector.is_contiguous()
                    and vector.dtype == matrix.dtype == self._loss_part.dtype):
                return matrix, block, offset // size
        return None

    def _drain(self) -> None:
        self._param_sum.drain()
        self._loss_sum.drain()

    def _zero_stats(self) -> None:
        self._increments = 0
        self._measured = 0
        self._path_length = 0.0
        self._step_norm_sum = 0.0
        self._abs_loss_change_sum = 0.0

    def observe(self, loss: float, params: torch.Tensor, grad: torch.Tensor) -> None:
        """Record the point (θ_i, f_i) and the raw gradient g_i at it (both copied)."""
        self._check(loss, "observe", params=params, grad=grad)
        if self._has_prev:
            delta_theta = torch.sub(params, self._prev_params, out=self._delta_theta)
            self._add_increment(loss, delta_theta, self._prev_grad, 1.0)
        elif self._telescopes:
            self._first_params.copy_(params)
        self._prev_params.copy_(params)
        self._prev_grad.copy_(grad)
        self._last_params = self._prev_params
        self._prev_loss = loss
        self._has_prev = True

    def observe_step(self, loss: float, params: torch.Tensor, step: torch.Tensor | None,
                     prev_grad: torch.Tensor | None, prev_grad_scale: float = 1.0,
                     step_norm: float | None = None) -> None:
        """Record the point (θ_i, f_i) from what the training loop already holds, copying nothing:

        - ``step``: Δθ_i, the step the optimizer added to θ since the previous point (None at
          a task's first point, and at points whose step is not measured when
          ``path_stats_every`` > 1);
        - ``prev_grad``: a buffer still holding the raw g_{i−1}, since scaled in place by
          ``prev_grad_scale`` (gradient clipping's coefficient); None at the first point;
        - ``step_norm``: ‖Δθ_i‖ if the caller already took it (then ``step`` is not read for
          it; under energy it is not read at all);
        - ``params``: θ_i, live. It is read at a segment's first point and by ``flush`` (and
          ``param_part``), which therefore come before the optimizer moves θ again.

        The same sum as ``observe`` on the same path, up to float rounding (Δθ_i is the step
        as computed, not the difference of two rounded θ)."""
        self._check(loss, "observe_step", params=params, grad=step if step is not None else prev_grad)
        if self._has_prev:
            if prev_grad is None or (step is None and self.config.path_stats_every == 1):
                raise ValueError("observe_step needs the step and the previous gradient after the first point"
                                 " (the step may be None only with leap.path_stats_every > 1)")
            self._add_increment(loss, step, prev_grad, prev_grad_scale, step_norm)
        elif self._telescopes:
            self._first_params.copy_(params)
        self._last_params = params
        self._prev_loss = loss
        self._has_prev = True

    def _check(self, loss: float, form: str, **vectors: torch.Tensor | None) -> None:
        if not isinstance(loss, float):
            # A live tensor would drag its autograd graph along (LEAP.md §2).
            raise TypeError(f"loss must be a detached Python float, got {type(loss).__name__}")
        bad = {k: tuple(v.shape) for k, v in vectors.items() if v is not None and v.shape != (self.num_params,)}
        if bad:
            raise ValueError(f"{' and '.join(bad)} must be 1-D of length {self.num_params}, got "
                             f"{' and '.join(str(v) for v in bad.values())}")
        if self._form not in (None, form):
            raise ValueError(f"{form}() after {self._form}() in one task: reset() between tasks")
        self._form = form

    def _add_increment(self, loss: float, delta_theta: torch.Tensor | None, prev_grad: torch.Tensor,
                       prev_grad_scale: float, step_norm: float | None = None) -> None:
        """Add (Δθ_i + Δf̃_i · g_{i−1}) / w_i, where g_{i−1} = prev_grad / prev_grad_scale.
        ``delta_theta`` None: energy (w_i = 1, Δθ telescopes) with this step not measured."""
        cfg = self.config
        delta_loss = loss - self._prev_loss
        if not cfg.loss:
            loss_term = 0.0
        elif cfg.stabilizer:
            loss_term = -abs(delta_loss)
        else:
            loss_term = delta_loss
        if delta_theta is not None:
            self._held_step_norm = float(torch.linalg.vector_norm(delta_theta)) if step_norm is None else step_norm
            self._measured += 1
        step_norm = self._held_step_norm
        length = math.sqrt(loss_term * loss_term + step_norm * step_norm)
        weight = 1.0 if cfg.metric == "energy" else max(length, cfg.eps)

        if not self._telescopes:
            self._param_sum.add(delta_theta, 1.0 / weight, self._row_of(delta_theta))
        if loss_term != 0.0:
            self._loss_sum.add(prev_grad, loss_term / (weight * prev_grad_scale), self._row_of(prev_grad))

        self._increments += 1
        self._path_length += length
        self._step_norm_sum += step_norm
        self._abs_loss_change_sum += abs(delta_loss)

    @property
    def _telescopes(self) -> bool:
        return self.config.metric == "energy"

    @property
    def param_part(self) -> torch.Tensor:
        """Σ Δθ_i / w_i since the last flush (read-only; valid until the next call)."""
        self._drain()
        if self._telescopes:
            if self._increments == 0:
                return self._param_part  # zeros: no pair since the last flush
            return torch.sub(self._last_params, self._first_params, out=self._param_part)
        return self._param_part

    @property
    def loss_part(self) -> torch.Tensor:
        """Σ Δf̃_i · g_{i−1} / w_i since the last flush (read-only view)."""
        self._drain()
        return self._loss_part

    def stats(self) -> PathStats:
        """Statistics of the increments accumulated since the last flush."""
        return PathStats(
            increments=self._increments,
            path_length=self._path_length,
            step_norm_sum=self._step_norm_sum,
            measured_steps=self._measured,
            abs_loss_change_sum=self._abs_loss_change_sum,
            param_part_norm=float(torch.linalg.vector_norm(self.param_part)),
            loss_part_norm=float(torch.linalg.vector_norm(self.loss_part)),
        )

    def flush(self) -> torch.Tensor:
        """Return M = Σ (Δθ_i + Δf̃_i·g_{i−1}) / w_i since the last flush, then zero it.

        The previous point is kept, so the next increment pairs it with the next observe().
        After ``observe_step``, call it before the optimizer moves θ (energy reads θ_last live).
        """
        vector = self.param_part + self.loss_part
        self._param_part.zero_()
        self._loss_part.zero_()
        if self._telescopes:
            self._first_params.copy_(self._last_params)  # the kept point starts the next sum
        self._zero_stats()
        return vector

    def reset(self) -> None:
        """A new task starts: forget the previous point and zero the accumulator."""
        self.flush()
        self._has_prev = False
        self._held_step_norm = 0.0
        self._last_params = self._prev_params
        self._form = None


def meta_gradient(task_vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """G = −(1/|B|) Σ_τ M_τ for the summed vectors M_τ of the tasks of one meta-batch."""
    if len(task_vectors) == 0:
        raise ValueError("meta_gradient needs at least one task vector")
    return -torch.stack(list(task_vectors)).mean(dim=0)


def normalized(vector: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale a task's vector to unit norm so that no single task steers φ (optional, LEAP.md §7)."""
    return vector / torch.linalg.vector_norm(vector).clamp_min(eps)

