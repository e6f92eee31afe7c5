"""A short check of the CUDA path, for a machine with a GPU (prints figures, asserts agreement).

    python scripts/gpu_check.py [--env-steps 20000] [--game seaquest]

1. The Leap accumulator on the GPU equals the CPU one on the same path (float64).
2. One A2C task with the paper's settings (32 envs, Mnih-2013 network) on the GPU and on the
   CPU: env steps per second of each, and Leap's share of an update on the GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from leap_rl.config import RuntimeConfig, preset
from leap_rl.leap import LeapConfig, PathAccumulator
from leap_rl.messages import TaskSpec
from leap_rl.models import ActorCritic, initial_encoder
from leap_rl.task import TaskRunner


def accumulator_agreement(n: int = 200_000, steps: int = 50) -> float:
    gen = torch.Generator().manual_seed(0)
    points = [(float(torch.rand(1, generator=gen)), torch.randn(n, generator=gen, dtype=torch.float64),
               torch.randn(n, generator=gen, dtype=torch.float64)) for _ in range(steps)]
    worst = 0.0
    for metric in ("length", "energy"):
        cfg = LeapConfig(metric=metric)
        cpu = PathAccumulator(n, cfg, "cpu", torch.float64)
        gpu = PathAccumulator(n, cfg, "cuda", torch.float64)
        for loss, theta, grad in points:
            cpu.observe(loss, theta, grad)
            gpu.observe(loss, theta.cuda(), grad.cuda())
        worst = max(worst, float((cpu.flush() - gpu.flush().cpu()).abs().max()))
    return worst


def leap_share_of_update(device: str, repeats: int = 50) -> tuple[float, float]:
    cfg = preset("paper")
    model = ActorCritic(cfg.model, 18, device)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    obs = torch.randint(0, 255, (cfg.env.num_envs * cfg.a2c.unroll, 4, 84, 84), dtype=torch.uint8, device=device)
    acc = PathAccumulator(model.encoder_flat.numel(), cfg.leap, device)
    grad = torch.zeros_like(model.encoder_flat)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def update() -> None:
        logits, values = model(obs)
        opt.zero_grad(set_to_none=False)
        (logits.logsumexp(-1).mean() + values.square().mean()).backward()
        opt.step()

    def leap() -> None:
        acc.observe(0.5, model.encoder_flat, model.encoder_grad_into(grad))

    timings = []
    for fn in (update, leap):
        for _ in range(5):
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        timings.append((time.perf_counter() - start) / repeats)
    return timings[0], timings[1]


def task_rate(device: str, game: str, env_steps: int, threads: int) -> float:
    base = preset("paper")
    cfg = dataclasses.replace(
        base, env=dataclasses.replace(base.env, env_threads=threads),
        runtime=RuntimeConfig(device=device, torch_threads=threads, log_every=10_000))
    torch.set_num_threads(threads)
    spec = TaskSpec("gpu-check", game, 0, 0, env_steps)
    result = TaskRunner(cfg).run(spec, initial_encoder(cfg.model, 0))
    return result.env_steps / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env-steps", type=int, default=20_000)
    parser.add_argument("--game", default="seaquest")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    diff = accumulator_agreement()
    print(f"Leap accumulator, GPU vs CPU (float64): max |difference| {diff:.3g}")
    assert diff < 1e-9
    upd, leap = leap_share_of_update("cuda")
    print(f"paper network on the GPU: update {1e3 * upd:.2f} ms, Leap observe {1e3 * leap:.3f} ms "
          f"({100 * leap / upd:.2f} % of an update)")
    gpu = task_rate("cuda", args.game, args.env_steps, args.threads)
    cpu = task_rate("cpu", args.game, args.env_steps, args.threads)
    print(f"A2C task, paper preset, {args.game}, {args.env_steps} env steps, {args.threads} threads: "
          f"GPU {gpu:.0f} env steps/s, CPU {cpu:.0f} env steps/s ({gpu / cpu:.2f}x)")


if __name__ == "__main__":
    main()
