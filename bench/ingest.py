"""The learner's ingest rate: segments per second into a MetaLearner, in process and through Ray."""

from __future__ import annotations

import dataclasses

import torch

from bench.timing import Timing, clocks, repeat
from leap_rl.config import RunConfig
from leap_rl.messages import Segment
from leap_rl.models import encoder_size, initial_encoder


def _segment_template(cfg: RunConfig, network: str) -> Segment:
    """Segment 0 of a task for ``network``'s encoder (later ones differ only in their index)."""
    from leap_rl.leap import PathStats

    n = encoder_size(dataclasses.replace(cfg.model, network=network))
    vector = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 1e-3
    stats = PathStats(cfg.meta.segment_every, 1.0, 1.0, cfg.meta.segment_every, 1.0, 1.0, 1.0)
    return Segment("ingest", "bench", 0, 0, vector, stats, False, 0)


def bench_ingest_plain(cfg: RunConfig, network: str, seconds: float) -> Timing:
    """``MetaLearner.add_segment`` in this process (finiteness check + add into the task's sum)."""
    from leap_rl.meta_learner import MetaLearner

    model_cfg = dataclasses.replace(cfg.model, network=network)
    learner = MetaLearner(initial_encoder(model_cfg, cfg.seed), cfg.meta)
    template = _segment_template(cfg, network)
    i = 0

    def step() -> None:
        nonlocal i
        if not learner.add_segment(dataclasses.replace(template, index=i, env_steps=i)):
            raise RuntimeError(f"the learner refused segment {i}: {learner.rejections[-1:]}")
        i += 1

    return repeat(step, seconds)


def bench_ingest_ray(cfg: RunConfig, network: str, seconds: float, window: int = 8) -> Timing:
    """Segments sent from this process to a ``LearnerActor`` with up to ``window`` unanswered
    (each one serialized and moved through Ray's object store, as a worker's would be)."""
    import ray

    from learner.learner_actor import LearnerActor

    model_cfg = dataclasses.replace(cfg.model, network=network)
    learner = LearnerActor.options(num_cpus=0).remote(dataclasses.replace(cfg, model=model_cfg))
    try:
        ray.get(learner.version.remote())
        template = _segment_template(cfg, network)
        in_flight: list = []
        i = 0

        def step() -> None:
            nonlocal i
            in_flight.append(learner.add_segment.remote(dataclasses.replace(template, index=i, env_steps=i)))
            i += 1
            while len(in_flight) >= window:
                ready, rest = ray.wait(in_flight, num_returns=1)
                if not ray.get(ready[0]):
                    raise RuntimeError("the LearnerActor refused a segment")
                in_flight[:] = rest

        timing = repeat(step, seconds, warmup=window)
        w0, c0 = clocks()
        if not all(ray.get(in_flight)):  # the ones still in flight count too
            raise RuntimeError("the LearnerActor refused a segment")
        w1, c1 = clocks()
        return Timing(timing.iters, timing.wall + (w1 - w0), timing.cpu + (c1 - c0))
    finally:
        ray.kill(learner)
