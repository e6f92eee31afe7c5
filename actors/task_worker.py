"""A task worker as a Ray actor: forwards to the plain ``TaskRunner`` unchanged.

Segments are sent to the learner without waiting for the reply, with at most
``max_segments_in_flight`` unanswered, so training never stalls on the network. Calls from one
worker to the learner run in the order they were sent (Ray's per-caller actor ordering), so
a task's segments arrive in order.

A refused segment (its task stale or dropped at the learner) means nothing more this task
trains can reach φ: the worker stops the task at its next segment and returns a
``TaskStopped`` instead of a result, so a worker never trains for nothing.

The driver watches each running task through ``take_progress``: every segment and progress
row is a beat, and a task without a beat for ``runtime.stall_timeout_s`` is treated as dead.
"""

from __future__ import annotations

import os
import threading

import ray
import torch

from leap_rl.config import RunConfig
from leap_rl.messages import Segment, TaskResult, TaskSpec, TaskStopped
from leap_rl.task import TaskRunner


class _Refused(Exception):
    """Raised from the segment callback to leave ``TaskRunner.run`` once a segment is refused."""

    def __init__(self, segment: Segment) -> None:
        super().__init__(segment.task_id)
        self.segment = segment


def _quiet_ale() -> None:
    """ALE prints a banner to stderr when its first ROM loads; Ray copies every worker's stderr
    to the driver, one banner per worker. Errors are still printed."""
    import ale_py
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)


@ray.remote(max_concurrency=2)  # one thread trains, the other answers progress polls
class TaskWorker:
    def __init__(self, cfg: RunConfig, learner: ray.actor.ActorHandle) -> None:
        torch.set_num_threads(cfg.runtime.torch_threads)
        _quiet_ale()
        self.cfg = cfg
        self.learner = learner
        self._runner: TaskRunner | None = None
        self._progress: list[dict] = []
        self._beats = 0
        self._lock = threading.Lock()

    def pid(self) -> int:
        return os.getpid()

    def _beat(self, row: dict | None = None) -> None:
        with self._lock:
            self._beats += 1
            if row is not None:
                self._progress.append(row)

    def run(self, spec: TaskSpec, phi_ref: list[ray.ObjectRef]) -> TaskResult | TaskStopped:
        # Built here rather than in __init__: an error building it (no CUDA where runtime.device
        # asks for it) then comes back as this task's error, with its message, and is retried
        # and dropped like any task error, instead of killing the actor before it can say why.
        if self._runner is None and self.cfg.inner == "rllib":  # RLlib imported only when used
            from actors.rllib_inner.runner import RLlibTaskRunner
            self._runner = RLlibTaskRunner(self.cfg)
        elif self._runner is None:
            self._runner = TaskRunner(self.cfg)
        self._beat()  # the task has started: the stall clock runs from here
        phi = ray.get(phi_ref[0])
        in_flight: list[ray.ObjectRef] = []
        limit = self.cfg.runtime.max_segments_in_flight

        def check(replies: list[ray.ObjectRef], segment: Segment) -> None:
            # ray.get raises if the learner died: the task fails, and the driver restarts it
            if not all(ray.get(replies)):
                raise _Refused(segment)

        def send(segment: Segment) -> None:
            in_flight.append(self.learner.add_segment.remote(segment))
            self._beat()
            answered, rest = ray.wait(in_flight, num_returns=len(in_flight), timeout=0)
            while len(rest) >= limit:
                more, rest = ray.wait(rest, num_returns=1)
                answered += more
            in_flight[:] = rest
            check(answered, segment)

        def progress(row: dict) -> None:
            # the pid says which process to look at (top, py-spy) for a slow or stuck task
            self._beat({"version": spec.init_version, "worker_pid": os.getpid(), **row})

        try:
            # a probe measures φ like for like: its segments must never reach the learner
            result = self._runner.run(spec, phi, None if spec.probe else send, progress)
        except _Refused as refused:
            ray.wait(in_flight, num_returns=len(in_flight))  # let the last replies land
            seg = refused.segment
            return TaskStopped(spec.task_id, spec.game, spec.init_version, seg.env_steps, seg.index + 1)
        if not all(ray.get(in_flight)):  # every segment delivered before the task counts as done
            return TaskStopped(spec.task_id, spec.game, spec.init_version, result.env_steps, result.segments)
        return result

    def take_progress(self) -> tuple[list[dict], int]:
        """(progress rows since the last call, beats so far)."""
        with self._lock:
            rows, self._progress = self._progress, []
            return rows, self._beats
