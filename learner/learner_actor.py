"""The Leap learner as a Ray actor: forwards to the plain ``MetaLearner``.

φ is put into the object store once per version; workers receive a reference to it, so a
meta-batch of 16 tasks costs one copy of φ, not 16.
"""

from __future__ import annotations

import ray
import torch

from leap_rl.config import RunConfig
from leap_rl.messages import Segment
from leap_rl.meta_learner import MetaLearner, MetaUpdate, Rejection
from leap_rl.meta_training import build_meta_learner


@ray.remote
class LearnerActor:
    def __init__(self, cfg: RunConfig, probe: torch.Tensor | None = None) -> None:
        """φ_0 and the plasticity guards come from ``cfg``; ``probe`` is the dormant-unit probe."""
        torch.set_num_threads(cfg.runtime.torch_threads)
        self.learner: MetaLearner = build_meta_learner(cfg, probe)
        self._published: tuple[int, ray.ObjectRef] | None = None

    def current(self) -> tuple[int, list[ray.ObjectRef]]:
        """(version, [ref to φ]); the list keeps Ray from resolving the inner reference."""
        if self._published is None or self._published[0] != self.learner.version:
            self._published = (self.learner.version, ray.put(self.learner.phi.detach().clone()))
        return self._published[0], [self._published[1]]

    def add_segment(self, segment: Segment) -> bool:
        return self.learner.add_segment(segment)

    def discard_task(self, task_id: str) -> None:
        self.learner.discard_task(task_id)

    def is_dropped(self, task_id: str) -> bool:
        return self.learner.is_dropped(task_id)

    def complete_tasks(self) -> list[str]:
        return self.learner.complete_tasks()

    def step(self, task_ids: list[str]) -> MetaUpdate:
        return self.learner.step(task_ids)

    def rejections(self, start: int = 0) -> list[Rejection]:
        return self.learner.rejections[start:]

    def state_dict(self) -> dict:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)

    def version(self) -> int:
        return self.learner.version
