"""Leap's `observe` and the update's forward + backward, before and after a change, in ONE process.

    python scripts/compare_before_after.py --before 5bad55f [--seconds 10] [--preset baselines]

Loads ``leap_rl/leap.py`` as it was at ``--before`` (``git show``) beside the current one and
times, inside real updates of the preset's network(s) on stored Atari frames:

- ``PathAccumulator.observe`` of either version, alternating update by update, each reading the
  encoder's raw gradient right after backward, as the loop does (caches as cold as in the loop);
- the training batch's forward + backward in contiguous layout against channels-last
  (``models.as_training_batch``), alternating likewise, and the acting forward (no grad,
  ``num_envs`` frames) in both layouts;
- with ``--loop-steps N``: ``TaskRunner.run`` itself for N env steps on the preset, training
  batch contiguous against channels-last, alternating runs (4 each): env steps per CPU-second
  of the whole call, and CPU time per update inside and outside ``a2c_update``.

Prints medians and the after/before ratios; torch runs on one thread, as the workers do.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.limits import sample_frames
from leap_rl.config import load
from leap_rl.leap import PathAccumulator
from leap_rl.messages import TaskSpec
from leap_rl.models import ActorCritic, as_training_batch, initial_encoder
from leap_rl.leap_inputs import bind_encoder_grads
from leap_rl.task import a2c_update

REPO = Path(__file__).resolve().parent.parent


def leap_module_at(commit: str):
    source = subprocess.run(["git", "show", f"{commit}:leap_rl/leap.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "leap_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("leap_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["leap_before"] = module
    spec.loader.exec_module(module)
    return module


def compare(cfg, network: str, frames: torch.Tensor, before_module, seconds: float) -> dict:
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, network=network))
    torch.manual_seed(0)
    model = ActorCritic(cfg.model, num_actions=18)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg.a2c.lr, alpha=cfg.a2c.rms_alpha,
                                    eps=cfg.a2c.rms_eps)
    n = model.encoder_flat.numel()
    grad = bind_encoder_grads(model, torch.zeros(n))
    accs = {"before": before_module.PathAccumulator(n, before_module.LeapConfig(
                metric=cfg.leap.metric, loss=cfg.leap.loss, stabilizer=cfg.leap.stabilizer)),
            "after": PathAccumulator(n, cfg.leap)}
    layouts = {"contiguous": frames, "channels_last": as_training_batch(frames)}
    times: dict[str, list[float]] = {k: [] for k in (*accs, *layouts)}
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    deadline, i = time.monotonic() + seconds, 0
    while time.monotonic() < deadline or i < 8:
        if i % 50 == 0:
            model.load_state_dict(saved)  # many steps on one batch must not drift
        layout = ("contiguous", "channels_last")[i % 2]
        version = ("before", "after")[(i // 2) % 2]  # each pairs with both layouts
        optimizer.zero_grad(set_to_none=False)
        t0 = time.perf_counter()
        logits, values = model(layouts[layout])
        loss = logits.logsumexp(-1).mean() + values.square().mean()
        loss.backward()
        t1 = time.perf_counter()
        accs[version].observe(loss.item(), model.encoder_flat, grad)
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.a2c.max_grad_norm)
        optimizer.step()
        if i >= 4:  # warm-up
            times[layout].append(t1 - t0)
            times[version].append(t2 - t1)
        i += 1
    acting = frames[:cfg.env.num_envs]
    for i in range(max(40, len(times["after"]))):
        layout = ("contiguous", "channels_last")[i % 2]
        batch = acting if layout == "contiguous" else as_training_batch(acting)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(batch)
        times.setdefault("act_" + layout, []).append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()} | {"encoder_params": n}


def compare_loop(cfg, game: str, env_steps: int, runs: int = 4) -> dict:
    """Median over ``runs`` alternating runs of each layout: env steps per CPU-second of the
    whole call, and CPU ms per update inside ``a2c_update`` and outside it (the rest of the
    loop). The in-loop update time is the steadier figure: the whole call includes env setup."""
    import leap_rl.task as task
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, log_every=10**9))
    phi = initial_encoder(cfg.model, cfg.seed)
    layouts = {"contiguous": lambda frames: frames, "channels_last": as_training_batch}
    rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in layouts}
    update_cpu = [0.0]

    def timed_update(*args, **kwargs):
        start = time.process_time()
        try:
            return a2c_update(*args, **kwargs)
        finally:
            update_cpu[0] += time.process_time() - start

    task.a2c_update = timed_update
    try:
        for _ in range(runs):
            for name, layout in layouts.items():
                task.as_training_batch = layout
                update_cpu[0] = 0.0
                start = time.process_time()
                result = task.TaskRunner(cfg).run(TaskSpec("compare", game, 0, 0, env_steps), phi)
                total = time.process_time() - start
                rows[name].append((result.env_steps / total, 1e3 * update_cpu[0] / result.updates,
                                   1e3 * (total - update_cpu[0]) / result.updates))
    finally:
        task.as_training_batch, task.a2c_update = as_training_batch, a2c_update
    return {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git commit of the 'before' leap.py")
    parser.add_argument("--preset", default="baselines")
    parser.add_argument("--game", default="seaquest")
    parser.add_argument("--seconds", type=float, default=10.0, help="per network and metric")
    parser.add_argument("--loop-steps", type=int, default=0,
                        help="also time TaskRunner.run for this many env steps in either layout")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load(args.preset)
    frames = sample_frames(cfg, args.game, cfg.a2c.unroll)[:cfg.a2c.unroll].flatten(0, 1)
    before = leap_module_at(args.before)
    print(f"preset {args.preset}: {len(frames)} frames per update, loss term {cfg.leap.loss}, "
          f"stabilizer {cfg.leap.stabilizer}; leap.py before = {args.before}; medians per call")
    print(f"{'network, metric':<20}{'observe before':>16}{'after':>10}{'ratio':>8}"
          f"{'fwd+bwd contiguous':>21}{'channels-last':>15}{'ratio':>8}"
          f"{'acting contiguous':>20}{'channels-last':>15}{'ratio':>8}")
    for network in ("mnih2013", "nature"):
        for metric in ("energy", "length"):
            r = compare(dataclasses.replace(cfg, leap=dataclasses.replace(cfg.leap, metric=metric)),
                        network, frames, before, args.seconds)
            print(f"{network + ', ' + metric:<20}{1e3 * r['before']:>13.3f} ms{1e3 * r['after']:>7.3f} ms"
                  f"{r['after'] / r['before']:>8.2f}{1e3 * r['contiguous']:>18.2f} ms"
                  f"{1e3 * r['channels_last']:>12.2f} ms{r['channels_last'] / r['contiguous']:>8.2f}"
                  f"{1e3 * r['act_contiguous']:>17.2f} ms{1e3 * r['act_channels_last']:>12.2f} ms"
                  f"{r['act_channels_last'] / r['act_contiguous']:>8.2f}")

    if args.loop_steps:
        r = compare_loop(cfg, args.game, args.loop_steps)
        print(f"single-worker loop ({cfg.model.network}, {args.loop_steps} env steps, medians of 4 "
              f"alternating runs, CPU time): env steps per CPU-s of the whole call; ms per update "
              f"inside a2c_update; ms per update outside it")
        for name, (rate, update, rest) in r.items():
            print(f"  {name:<14}{rate:>8.0f} env steps/s{update:>10.2f} ms{rest:>10.2f} ms")
        c, l = r["contiguous"], r["channels_last"]
        print(f"  channels-last / contiguous: rate {l[0] / c[0]:.2f}x, update {l[1] / c[1]:.2f}x, "
              f"rest {l[2] / c[2]:.2f}x")


if __name__ == "__main__":
    main()
