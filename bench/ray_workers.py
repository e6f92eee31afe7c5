"""Total env steps/s of 1..N TaskWorkers on a local Ray, and the machine's load while they ran."""

from __future__ import annotations

import dataclasses
import time

from bench.timing import machine_busy, proc_cpu_seconds
from leap_rl.config import RunConfig
from leap_rl.messages import TaskSpec


def bench_ray_workers(cfg: RunConfig, game: str, workers: int, env_steps_per_worker: int) -> dict:
    """``workers`` TaskWorker actors (the training runtime's) each run one task of
    ``env_steps_per_worker`` at once, streaming segments to a LearnerActor.

    rate = all env steps / wall time from submit to the last result (env creation and segment
    delivery included); busy_rate = Σ each task's env steps / its own loop seconds."""
    import ray

    from actors.task_worker import TaskWorker
    from learner.learner_actor import LearnerActor

    learner = LearnerActor.options(num_cpus=cfg.runtime.learner_cpus).remote(cfg)
    actors = [TaskWorker.options(num_cpus=cfg.runtime.cpus_per_worker).remote(cfg, learner)
              for _ in range(workers)]
    try:
        pids = ray.get([a.pid.remote() for a in actors])  # built and warm before the clock starts
        _version, phi_ref = ray.get(learner.current.remote())
        specs = [TaskSpec(f"bench-w{workers}-{i}", game, 0, cfg.seed + i, env_steps_per_worker)
                 for i in range(workers)]
        cpu0, busy0 = [proc_cpu_seconds(p) for p in pids], machine_busy()
        start = time.perf_counter()
        results = ray.get([a.run.remote(s, phi_ref) for a, s in zip(actors, specs)])
        wall = time.perf_counter() - start
        cpu1, busy1 = [proc_cpu_seconds(p) for p in pids], machine_busy()
        steps = sum(r.env_steps for r in results)
        row = {"workers": workers, "env_steps": steps, "seconds": wall,
               "env_steps_per_s": steps / wall,
               "busy_env_steps_per_s": sum(r.env_steps / r.seconds for r in results)}
        # How much CPU the workers got, and how busy the whole machine was (other jobs too):
        # on a shared machine these say whether a poor scaling figure is ours or the load's.
        if None not in cpu0 and None not in cpu1:
            row["worker_cores_used"] = sum(b - a for a, b in zip(cpu0, cpu1)) / wall
        if busy0 is not None and busy1 is not None and busy1[1] > busy0[1]:
            row["machine_busy_fraction"] = (busy1[0] - busy0[0]) / (busy1[1] - busy0[1])
        return row
    finally:
        for a in actors:
            ray.kill(a)
        ray.kill(learner)


def start_ray(cpus: int) -> bool:
    import ray

    from learner.driver import _init_ray

    if ray.is_initialized():
        return False
    cfg = RunConfig()
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, workers=cpus, cpus_per_worker=1.0))
    return _init_ray(cfg, None, False)
