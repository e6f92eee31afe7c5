"""Env steps/s of the RLlib inner loop beside this project's TaskRunner, same game and network.

    python scripts/bench_rllib.py [--preset quick] [--game pong] [--env-steps 8192]
                                  [--algorithm PPO] [--set KEY=VALUE ...]

Both train one task from the same φ_0 with Leap streaming on (segments go nowhere), in this
process, on a local Ray bound to loopback (RLlib needs one even with everything in-process).
The preset's env and model settings apply to both; ``--set`` overrides apply to both too
(``--set rllib.settings.num_epochs=1``). What one env step costs differs by design: A2C takes
one gradient step per ``env.num_envs × a2c.unroll`` env steps, PPO ``num_epochs ×
train_batch/minibatch`` per ``train_batch`` env steps, so gradient steps/s is printed too.
The RLlib row's set-up (building the Algorithm) is printed apart: it is paid once per task.

A stand-in for a ``leap-rl bench`` row until the bench is restructured (issue 11).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--game", default="pong")
    parser.add_argument("--env-steps", type=int, default=8192)
    parser.add_argument("--algorithm", default="PPO")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from leap_rl.config import ConfigError, load
    try:
        if args.env_steps < 1:
            raise ConfigError(f"--env-steps must be a positive integer, got {args.env_steps}")
        a2c_cfg = load(args.preset, None, tuple(args.overrides))
        rllib_cfg = load(args.preset, None, (*args.overrides, 'inner="rllib"',
                                             f'rllib.algorithm="{args.algorithm}"'))
        from leap_rl.envs import normalize_game
        game = normalize_game(args.game)
        from actors.rllib_inner.runner import check_settings
        check_settings(rllib_cfg)
    except ConfigError as exc:
        print(f"bench_rllib: error: {exc}", file=sys.stderr)
        return 2

    torch.set_num_threads(a2c_cfg.runtime.torch_threads)
    from actors.rllib_inner.runner import RLlibTaskRunner
    from learner.driver import _init_ray
    from leap_rl.messages import TaskSpec
    from leap_rl.models import initial_encoder
    from leap_rl.task import TaskRunner

    _init_ray(rllib_cfg, None, False)
    phi = initial_encoder(a2c_cfg.model, a2c_cfg.seed)
    spec = TaskSpec("bench", game, 0, seed=a2c_cfg.seed, env_steps=args.env_steps)

    rows = []
    a2c = TaskRunner(a2c_cfg).run(spec, phi, on_segment=lambda segment: None)
    rows.append(("A2C (TaskRunner)", a2c, 0.0))
    start = time.perf_counter()
    rllib = RLlibTaskRunner(rllib_cfg).run(spec, phi, on_segment=lambda segment: None)
    setup = time.perf_counter() - start - rllib.seconds
    rows.append((f"{args.algorithm} (RLlib)", rllib, setup))

    print(f"{game}, {a2c_cfg.model.network}, {a2c_cfg.env.num_envs} envs, "
          f"torch threads {a2c_cfg.runtime.torch_threads}, preset {args.preset}")
    print(f"{'inner loop':<18} {'env steps':>9} {'grad steps':>10} {'env steps/s':>11} "
          f"{'grad steps/s':>12} {'set-up s':>8}")
    for name, result, setup_s in rows:
        print(f"{name:<18} {result.env_steps:>9} {result.updates:>10} "
              f"{result.env_steps / result.seconds:>11.0f} {result.updates / result.seconds:>12.1f} "
              f"{setup_s:>8.1f}")
    ratio = (rllib.env_steps / rllib.seconds) / (a2c.env_steps / a2c.seconds)
    print(f"RLlib / TaskRunner env steps/s: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
