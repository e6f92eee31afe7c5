"""A task worker as a Ray actor: forwards to the plain ``TaskRunner`` unchanged.

Segments are sent to the learner without waiting for the reply, with at most
``max_segments_in_flight`` unanswered, so training never stalls on the network. Calls from one
worker to the learner run in the order they were sent (Ray's per-caller actor ordering), so
a task's segments arrive in order.
"""

from __future__ import annotations

import os
import threading

import ray
import torch

from leap_rl.config import RunConfig
from leap_rl.messages import Segment, TaskResult, TaskSpec
from leap_rl.task import TaskRunner


@ray.remote(max_concurrency=2)  # one thread trains, the other answers progress polls
class TaskWorker:
    def __init__(self, cfg: RunConfig, learner: ray.actor.ActorHandle) -> None:
        torch.set_num_threads(cfg.runtime.torch_threads)
        self.cfg = cfg
        self.learner = learner
        self.runner = TaskRunner(cfg)
        self._progress: list[dict] = []
        self._lock = threading.Lock()

    def pid(self) -> int:
        return os.getpid()

    def run(self, spec: TaskSpec, phi_ref: list[ray.ObjectRef]) -> TaskResult:
        phi = ray.get(phi_ref[0])
        in_flight: list[ray.ObjectRef] = []
        limit = self.cfg.runtime.max_segments_in_flight

        def send(segment: Segment) -> None:
            in_flight.append(self.learner.add_segment.remote(segment))
            while len(in_flight) >= limit:
                ready, rest = ray.wait(in_flight, num_returns=1)
                in_flight[:] = rest

        def progress(row: dict) -> None:
            with self._lock:
                self._progress.append({"version": spec.init_version, **row})

        # a probe measures φ like for like: its segments must never reach the learner
        result = self.runner.run(spec, phi, None if spec.probe else send, progress)
        ray.get(in_flight)  # every segment delivered before the task counts as done
        return result

    def take_progress(self) -> list[dict]:
        with self._lock:
            rows, self._progress = self._progress, []
        return rows
