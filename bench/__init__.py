"""``leap-rl bench``: how fast each part of the system runs, all measured in one run on one machine.

What is measured (docs/BENCH.md explains each number and shows a table from a 2-core machine):

- the limits of one worker: env stepping alone (the same ``make_vec_env`` as training, random
  actions), acting alone (no-grad forward + sampling on ``num_envs`` frames) and the A2C update
  alone (bootstrap value, n-step returns, forward + backward + clip + RMSProp on a stored batch
  of ``num_envs × unroll`` frames), each as the env steps per second it alone would allow;
- the single-worker A2C loop (``TaskRunner.run``) as a fraction of the limit those imply. One
  worker does the three things one after the other on one core, so per env step the times add
  up: limit = 1 / (1/env + 1/act + 1/update) env steps/s; and the same loop with the env
  stepping overlapped with acting (``env.overlap``: two half envs in a pipeline), which can
  beat that limit when a second core runs the env's C++ thread;
- Leap's cost per update (``PathAccumulator.observe_step``, as the loop calls it) against the
  update it rides on and in axpys (one ``a.add_(b, alpha=c)`` of an encoder-sized vector, timed
  in the same run), plus what writing Δθ out costs the optimizer, and the reference
  ``observe`` on the same points for comparison; for the paper's network (mnih2013) and the
  Nature network;
- total env steps/s with 1..``--workers-max`` Ray workers on a local Ray, and the scaling
  efficiency rate_w / (w · rate_1);
- the learner's ingest rate (segments/s) for an encoder's segment, in process and through the
  Ray ``LearnerActor``, and so how many workers one learner can feed;
- with ``--sb3``: Stable-Baselines3's A2C on the same game, network, envs and machine;
- with ``--rllib ALGORITHM``: Leap over RLlib's PPO, APPO or IMPALA (``inner = "rllib"``)
  beside this project's A2C loop, one task each on a local Ray.

Rates are given by wall-clock time and, for the parts that run in this process, also by this
process's CPU time: on a shared machine the CPU-time figures move much less. Every ratio is
formed from numbers measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Defined here, not in bench.suite, so that `leap-rl --help` and `leap-rl bench --help` need no torch.
DEFAULT_SECONDS = 10.0
SB3_ENVS = ("ale", "make_atari_env")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--game", default="seaquest", help="ALE game id (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help="seconds per measurement (default: %(default)s)")
    parser.add_argument("--preset", default="baselines",
                        help="config preset whose network/envs/unroll are measured: ci | quick | "
                             "baselines | paper (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting of the preset (repeatable)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="interleaved repetitions of the measurements (all but the learner's "
                             "ingest and the task setup); medians are reported (default: %(default)s)")
    parser.add_argument("--workers-max", type=int, default=2,
                        help="Ray runs with 1..N workers (default: %(default)s)")
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="skip the Ray measurements")
    parser.add_argument("--sb3", action="store_true",
                        help="also run Stable-Baselines3's A2C (pip install 'leap-rl[bench]')")
    parser.add_argument("--sb3-env", dest="sb3_envs", action="append", choices=SB3_ENVS,
                        help="SB3's env: 'ale' (our AtariVectorEnv behind SB3's VecEnv API) and/or "
                             "'make_atari_env' (SB3's own pipeline, needs opencv); default: both")
    parser.add_argument("--rllib", dest="rllib", action="append", default=[], metavar="ALGORITHM",
                        help="also time the RLlib inner loop (PPO, APPO or IMPALA) beside ours (repeatable)")
    parser.add_argument("--rllib-env-steps", type=int, default=8192,
                        help="env steps of each --rllib comparison task (default: %(default)s)")
    parser.add_argument("--threads", dest="torch_threads", type=int, default=1,
                        help="torch threads in this process (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    from bench.suite import BenchOptions, run_bench
    from bench.table import format_table
    from leap_rl.config import ConfigError
    from leap_rl.jsonio import dump_json
    from leap_rl.threads import set_torch_threads

    threads = args.torch_threads
    if threads < 1:
        raise ConfigError(f"--threads must be ≥ 1, got {threads}")
    if args.seconds <= 0:
        raise ConfigError(f"--seconds must be > 0, got {args.seconds}")
    if args.repeat < 1:
        raise ConfigError(f"--repeat must be ≥ 1, got {args.repeat}")
    if args.workers_max < 1:
        raise ConfigError(f"--workers-max must be ≥ 1, got {args.workers_max}")
    set_torch_threads(threads)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sb3_envs = tuple(args.sb3_envs) if args.sb3_envs else SB3_ENVS
    if args.sb3:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            raise ConfigError("--sb3 needs stable-baselines3: pip install 'leap-rl[bench]'") from None
        if "make_atari_env" in sb3_envs:
            try:
                import cv2  # noqa: F401
            except ImportError:
                raise ConfigError("--sb3-env make_atari_env needs OpenCV: pip install "
                                  "opencv-python-headless (or pass --sb3-env ale)") from None
    from leap_rl.config import RLLIB_ALGORITHMS
    bad = [a for a in args.rllib if a not in RLLIB_ALGORITHMS]
    if bad:
        raise ConfigError(f"--rllib {bad[0]!r}: the algorithm must be one of {', '.join(RLLIB_ALGORITHMS)}")
    if args.rllib and args.rllib_env_steps < 1:
        raise ConfigError(f"--rllib-env-steps must be ≥ 1, got {args.rllib_env_steps}")
    opts = BenchOptions(game=args.game, seconds=args.seconds, preset=args.preset,
                        overrides=tuple(args.overrides), repeat=args.repeat,
                        workers_max=args.workers_max, ray=args.ray, sb3=args.sb3,
                        sb3_envs=sb3_envs, torch_threads=threads, rllib=tuple(args.rllib),
                        rllib_env_steps=args.rllib_env_steps)
    res = run_bench(opts, echo=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_table(res))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(dump_json(res, indent=2))  # a NaN (no CPU time measured) becomes null
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bench``: the same as ``leap-rl bench``."""
    from leap_rl.config import ConfigError
    from leap_rl.usage import EXIT_USAGE, UsageParser

    parser = UsageParser(prog="leap-rl bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except ConfigError as exc:
        print(f"leap-rl bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

