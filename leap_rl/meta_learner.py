"""The learner side of Leap: sums the segments of each task and steps the shared φ.

    G = −(1/|B|) Σ_τ M_τ,   M_τ = Σ_segments M_seg          (LEAP.md §3)

then any torch optimizer steps φ with G as its gradient, and the version goes up by one.
The meta-gradient lives in this class's own buffers, never accumulated in ``.grad`` (the
reference code's PyTorch-2 pitfall, LEAP.md §6).

Policies (documented in the README):
- a segment with NaN/inf is rejected and its whole task is dropped: a partial sum is not that
  task's H_τ, so mixing it in would break the estimator;
- a task's segments only count once its final segment arrived; ``discard_task`` forgets a task
  whose worker died, so a retried task never doubles up;
- async mode: a task that started s > ``max_staleness`` versions ago is stale. With
  ``meta.stale = "weight"`` it still counts, its (normalized) vector scaled by
  (1 + max_staleness) / (1 + s); with ``"drop"`` its segments are refused and it never counts.

Plasticity guards (leap_rl/plasticity.py), when configured, act inside ``step``: the bound on
each unit's step right after the optimizer's step, then the recycling of dormant units of the
new φ, whose meta-optimizer moments are reset here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leap_rl.config import MetaConfig
from leap_rl.leap import meta_gradient, normalized
from leap_rl.messages import Segment
from leap_rl.models import LayerSlice
from leap_rl.plasticity import DormantRecycler, bound_unit_steps


@dataclass
class _TaskSum:
    game: str
    init_version: int
    vector: torch.Tensor
    segments: int = 0
    complete: bool = False


@dataclass(frozen=True)
class MetaUpdate:
    version: int
    """The new version of φ."""
    tasks: tuple[str, ...]
    games: tuple[str, ...]
    meta_grad_norm: float
    dropped_stale: tuple[str, ...] = ()
    staleness: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()
    """Each used task's weight in G (1 unless it was stale and ``meta.stale = "weight"``)."""
    units_bounded: int = 0
    """Units whose step ``meta.max_unit_step`` scaled down."""
    recycled: dict[str, list[int]] | None = None
    """Units of the new φ that were recycled, by layer (None: recycling is off)."""


@dataclass
class Rejection:
    task_id: str
    game: str
    reason: str


class MetaLearner:
    def __init__(self, phi: torch.Tensor, cfg: MetaConfig, layout: tuple[LayerSlice, ...] = (),
                 recycler: DormantRecycler | None = None) -> None:
        """``layout`` (the encoder's layers in φ) is needed by ``meta.max_unit_step``;
        ``recycler`` by ``meta.recycle_dormant``."""
        if cfg.max_unit_step > 0 and not layout:
            raise ValueError("meta.max_unit_step needs the encoder's layout")
        if cfg.recycle_dormant and recycler is None:
            raise ValueError("meta.recycle_dormant needs a DormantRecycler")
        self.cfg = cfg
        self.layout = layout
        self.recycler = recycler if cfg.recycle_dormant else None
        self.phi = torch.nn.Parameter(phi.detach().clone().float())
        if cfg.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam([self.phi], lr=cfg.lr)
        else:
            self.optimizer = torch.optim.SGD([self.phi], lr=cfg.lr)
        self.version = 0
        self._tasks: dict[str, _TaskSum] = {}
        self._dropped: set[str] = set()
        self.rejections: list[Rejection] = []

    # ---------------------------------------------------------------- segments in
    def add_segment(self, seg: Segment) -> bool:
        """Add a segment to its task's sum; False (and a logged rejection) if refused."""
        if seg.task_id in self._dropped:
            return False
        if seg.diverged or not seg.is_finite:
            reason = ("the agent diverged (non-finite loss or policy)" if seg.diverged
                      else "non-finite values (NaN or inf) in the segment vector")
            self._drop(seg, reason)
            return False
        if seg.init_version > self.version:
            self._drop(seg, f"init version {seg.init_version} is newer than the learner's {self.version}")
            return False
        if self.version - seg.init_version > self._max_age and not self._weights_stale:
            self._drop(seg, f"stale: started at version {seg.init_version}, learner at {self.version}")
            return False
        task = self._tasks.get(seg.task_id)
        if task is None:
            task = self._tasks[seg.task_id] = _TaskSum(seg.game, seg.init_version, torch.zeros_like(self.phi.data))
        if seg.index != task.segments:
            self._drop(seg, f"segment {seg.index} arrived when {task.segments} was expected")
            return False
        task.vector += seg.vector.to(task.vector.device)
        task.segments += 1
        task.complete = seg.final
        return True

    @property
    def _max_age(self) -> int:
        # sync: tasks of the current version only; the driver never mixes versions
        return self.cfg.max_staleness if self.cfg.mode == "async" else 0

    @property
    def _weights_stale(self) -> bool:
        return self.cfg.mode == "async" and self.cfg.stale == "weight"

    def staleness_weight(self, staleness: int) -> float:
        """A task's weight in G: 1 within ``max_staleness``, then (1 + max_staleness) / (1 + s)."""
        if staleness <= self._max_age:
            return 1.0
        return (1 + self._max_age) / (1 + staleness)

    def _drop(self, seg: Segment, reason: str) -> None:
        """Refuse the segment and its whole task: a partial sum is not the task's H_τ."""
        self.rejections.append(Rejection(seg.task_id, seg.game, reason))
        self._dropped.add(seg.task_id)
        self._tasks.pop(seg.task_id, None)

    def discard_task(self, task_id: str) -> None:
        """Forget a task (its worker died): its sum is dropped and late segments are refused.

        A retry runs under a new task id, so a segment still in flight from the dead worker
        can never be mixed into the retry's sum.
        """
        self._tasks.pop(task_id, None)
        self._dropped.add(task_id)

    def complete_tasks(self) -> list[str]:
        return sorted(t for t, s in self._tasks.items() if s.complete)

    def is_dropped(self, task_id: str) -> bool:
        return task_id in self._dropped

    # ---------------------------------------------------------------- φ out
    def step(self, task_ids: list[str] | None = None) -> MetaUpdate:
        """Apply the meta-gradient of the given complete tasks (default: all complete ones)."""
        ids = sorted(task_ids if task_ids is not None else self.complete_tasks())
        fresh, stale = [], []
        for t in ids:
            task = self._tasks[t]
            if not task.complete:
                raise ValueError(f"task {t} has not sent its final segment")
            too_old = self.version - task.init_version > self._max_age
            (stale if too_old and not self._weights_stale else fresh).append(t)
        vectors = [self._tasks[t].vector for t in fresh]
        if self.cfg.normalize_tasks:
            vectors = [normalized(v) for v in vectors]
        weights = [self.staleness_weight(self.version - self._tasks[t].init_version) for t in fresh]
        vectors = [v if w == 1.0 else w * v for v, w in zip(vectors, weights)]
        grad_norm, bounded, recycled = 0.0, 0, None
        if vectors:
            grad = meta_gradient(vectors)
            grad_norm = float(torch.linalg.vector_norm(grad))
            before = self.phi.detach().clone() if self.cfg.max_unit_step > 0 else None
            self.optimizer.zero_grad(set_to_none=True)
            self.phi.grad = grad
            self.optimizer.step()
            self.phi.grad = None
            if before is not None:
                with torch.no_grad():
                    bounded = bound_unit_steps(before, self.phi.data, self.layout, self.cfg.max_unit_step)
            if self.recycler is not None:  # a step without tasks leaves φ as it was
                with torch.no_grad():
                    recycled, touched = self.recycler(self.phi.data, self.version + 1)
                self._reset_moments(touched)
        update = MetaUpdate(
            version=self.version + 1, tasks=tuple(fresh),
            games=tuple(self._tasks[t].game for t in fresh), meta_grad_norm=grad_norm,
            dropped_stale=tuple(stale),
            staleness=tuple(self.version - self._tasks[t].init_version for t in fresh),
            weights=tuple(weights), units_bounded=bounded, recycled=recycled,
        )
        for t in ids:
            del self._tasks[t]
        self.version += 1
        return update

    def _reset_moments(self, index: torch.Tensor) -> None:
        """Zero the optimizer's per-coordinate state (Adam's moments) at ``index``."""
        for value in self.optimizer.state.get(self.phi, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == self.phi.shape:
                value[index] = 0.0

    def current(self) -> tuple[int, torch.Tensor]:
        return self.version, self.phi.detach().clone()

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"phi": self.phi.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.phi.copy_(state["phi"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
        self._tasks.clear()
