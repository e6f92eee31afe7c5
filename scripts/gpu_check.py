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
from leap_rl.models import ActorCritic, as_training_batch, initial_encoder
from leap_rl.task import Rollout, TaskRunner, a2c_update, bind_encoder_grads


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


def update_timings(device: str, repeats: int = 50) -> dict[str, float]:
    """Seconds per call of: the loop's update (``a2c_update``, Leap included), Leap's observe
    alone, and forward + backward of the training batch in either memory layout."""
    cfg = preset("paper")
    T, N = cfg.a2c.unroll, cfg.env.num_envs
    model = ActorCritic(cfg.model, 18, device)
    opt = torch.optim.RMSprop(model.parameters(), lr=cfg.a2c.lr, alpha=cfg.a2c.rms_alpha,
                              eps=cfg.a2c.rms_eps)
    n = model.encoder_flat.numel()
    acc = PathAccumulator(n, cfg.leap, device)
    grad = bind_encoder_grads(model, torch.zeros(n, device=device))
    frames = torch.randint(0, 255, (T + 1, N, 4, 84, 84), dtype=torch.uint8, device=device)
    rollout = Rollout(frames[:T], torch.randint(0, 18, (T, N), device=device),
                      torch.zeros(T, N, device=device), torch.zeros(T, N, device=device), frames[T])
    batch = frames[:T].flatten(0, 1)

    def fwd_bwd(obs: torch.Tensor) -> None:
        logits, values = model(obs)
        (logits.logsumexp(-1).mean() + values.square().mean()).backward()

    calls = {
        "update": lambda: a2c_update(model, opt, rollout, cfg.a2c, acc, grad),
        "leap": lambda: acc.observe(0.5, model.encoder_flat, grad),
        "fwd_bwd_contiguous": lambda: fwd_bwd(batch),
        "fwd_bwd_channels_last": lambda: fwd_bwd(as_training_batch(batch)),
    }
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    out = {}
    for name, fn in calls.items():
        for _ in range(5):
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        out[name] = (time.perf_counter() - start) / repeats
    return out


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
    t = update_timings("cuda")
    upd, leap = t["update"] - t["leap"], t["leap"]
    print(f"paper network on the GPU: update {1e3 * upd:.2f} ms without Leap, Leap observe "
          f"{1e3 * leap:.3f} ms ({100 * leap / upd:.2f} % of an update)")
    print(f"training batch forward + backward: contiguous {1e3 * t['fwd_bwd_contiguous']:.2f} ms, "
          f"channels-last {1e3 * t['fwd_bwd_channels_last']:.2f} ms")
    gpu = task_rate("cuda", args.game, args.env_steps, args.threads)
    cpu = task_rate("cpu", args.game, args.env_steps, args.threads)
    print(f"A2C task, paper preset, {args.game}, {args.env_steps} env steps, {args.threads} threads: "
          f"GPU {gpu:.0f} env steps/s, CPU {cpu:.0f} env steps/s ({gpu / cpu:.2f}x)")


if __name__ == "__main__":
    main()
