"""Leap's `observe` and the update's forward + backward, before and after a change, in ONE process.

    python scripts/compare_before_after.py --before 5bad55f [--seconds 10] [--preset baselines]

Loads ``leap_rl/leap.py`` as it was at ``--before`` (``git show``) beside the current one and
times, inside real updates of the preset's network(s) on stored Atari frames:

- ``PathAccumulator.observe`` of either version, alternating update by update, each reading the
  encoder's raw gradient right after backward, as the loop does (caches as cold as in the loop);
- the training batch's forward + backward in contiguous layout against channels-last
  (``models.as_training_batch``), alternating likewise.

Prints medians per call and the after/before ratios; torch runs on one thread, as the workers do.
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

from leap_rl.bench import sample_frames
from leap_rl.config import load
from leap_rl.leap import PathAccumulator
from leap_rl.models import ActorCritic, as_training_batch
from leap_rl.task import bind_encoder_grads

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
    return {k: statistics.median(v) for k, v in times.items()} | {"encoder_params": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git commit of the 'before' leap.py")
    parser.add_argument("--preset", default="baselines")
    parser.add_argument("--game", default="seaquest")
    parser.add_argument("--seconds", type=float, default=10.0, help="per network and metric")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load(args.preset)
    frames = sample_frames(cfg, args.game, cfg.a2c.unroll)[:cfg.a2c.unroll].flatten(0, 1)
    before = leap_module_at(args.before)
    print(f"preset {args.preset}: {len(frames)} frames per update, loss term {cfg.leap.loss}, "
          f"stabilizer {cfg.leap.stabilizer}; leap.py before = {args.before}; medians per call")
    print(f"{'network, metric':<20}{'observe before':>16}{'after':>10}{'ratio':>8}"
          f"{'fwd+bwd contiguous':>21}{'channels-last':>15}{'ratio':>8}")
    for network in ("mnih2013", "nature"):
        for metric in ("energy", "length"):
            r = compare(dataclasses.replace(cfg, leap=dataclasses.replace(cfg.leap, metric=metric)),
                        network, frames, before, args.seconds)
            print(f"{network + ', ' + metric:<20}{1e3 * r['before']:>13.3f} ms{1e3 * r['after']:>7.3f} ms"
                  f"{r['after'] / r['before']:>8.2f}{1e3 * r['contiguous']:>18.2f} ms"
                  f"{1e3 * r['channels_last']:>12.2f} ms{r['channels_last'] / r['contiguous']:>8.2f}")


if __name__ == "__main__":
    main()
