"""Env steps per second of the flavoured Python vector env against ale-py's AtariVectorEnv.

Both built by ``leap_rl.envs.make_vec_env`` from the same EnvConfig (one C++ thread for the
vector env; the Python env is single-threaded), reset with the same seed, stepped with the same
random actions; wall-clock and this process's CPU time, medians of ``--repeat`` rounds, the two
envs alternating so that a change in the machine's load hits both.

    .venv/bin/python scripts/flavour_speed.py --game breakout --num-envs 8 --steps 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def rate(make, steps: int, seed: int) -> tuple[float, float]:
    """(env steps/s by wall clock, by process CPU time) over ``steps`` vector steps."""
    env = make()
    env.reset(seed=seed)
    n = env.num_envs
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, env.single_action_space.n, size=(steps, n))
    wall, cpu = time.perf_counter(), time.process_time()
    for a in actions:
        env.step(a)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    env.close()
    return steps * n / wall, steps * n / max(cpu, 1e-9)


def main() -> None:
    import torch

    from leap_rl.config import EnvConfig
    from leap_rl.envs import make_vec_env
    from leap_rl.flavours import normalize_spec

    torch.set_num_threads(1)  # nothing here uses torch; keep any import from taking both cores
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--game", default="breakout")
    p.add_argument("--flavour", default=None,
                   help="the flavoured spec to time (default: GAME:mode=0:difficulty=0, the default flavour)")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000, help="vector steps per round")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    cfg = EnvConfig(num_envs=args.num_envs, env_threads=1)
    plain = normalize_spec(args.game)
    flavour = normalize_spec(args.flavour or f"{plain}:mode=0:difficulty=0")
    results: dict[str, list[tuple[float, float]]] = {plain: [], flavour: []}
    for k in range(args.repeat):
        for spec in (plain, flavour):
            results[spec].append(rate(lambda: make_vec_env(spec, cfg), args.steps, seed=k))
    med = {s: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for s, rs in results.items()}
    for spec, (w, c) in med.items():
        kind = "AtariVectorEnv (C++)" if spec == plain else "FlavouredVectorEnv (Python)"
        print(f"{spec:<40} {kind:<28} {w:8.0f} env steps/s wall  {c:8.0f} per CPU second")
    print(f"flavoured / C++: {med[flavour][0] / med[plain][0]:.2f} (wall), "
          f"{med[flavour][1] / med[plain][1]:.2f} (CPU); {args.num_envs} envs, {args.steps} steps × "
          f"{args.repeat} rounds")


if __name__ == "__main__":
    main()
