"""``leap-rl``: the one entry point behind the local run, ``ray job submit`` and the image.

Every user error ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from leap_rl.usage import EXIT_USAGE, UsageParser


def _config_args(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset,
                   help="ci | quick | baselines | paper (default: %(default)s)")
    p.add_argument("--config", type=Path, help="a TOML file applied on top of the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set a2c.lr=1e-4 (repeatable)")
    p.add_argument("--seed", type=int, help="run seed (same as --set seed=N)")


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(prog="leap-rl", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=UsageParser)

    p = sub.add_parser("pool", help="list the installed games and the meta-training pool")
    p.add_argument("--all", action="store_true", help="also list games outside the pool")
    p.add_argument("--flavours", action="store_true",
                   help="also list each game's modes and difficulties (game specs GAME:mode=M:difficulty=D)")

    p = sub.add_parser("task", help="train one A2C agent on one game")
    _config_args(p, "baselines")
    p.add_argument("--game", required=True,
                   help="ALE game id, e.g. seaquest or MsPacman, or a flavour, e.g. space_invaders:mode=3")
    p.add_argument("--env-steps", type=int, required=True)
    p.add_argument("--init", type=Path, help="encoder init: a run directory or checkpoint.pt")
    p.add_argument("--run-dir", type=Path, required=True)

    p = sub.add_parser("train", help="meta-train the shared encoder initialization")
    _config_args(p, "quick")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--runtime", choices=("ray", "sequential"), default="ray",
                   help="ray (workers in parallel) or sequential (one process)")
    p.add_argument("--address", help="Ray address to join (e.g. auto); default: start a local Ray")
    p.add_argument("--dashboard", action="store_true", help="start Ray's dashboard (local Ray only)")

    p = sub.add_parser("pretrain", help="the fine-tuning baseline: one encoder trained through the "
                                        "meta-training tasks one after another")
    _config_args(p, "quick")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir at its next task")
    p.add_argument("--tasks", type=int, help="stop after this many tasks in all (continue with --resume)")

    p = sub.add_parser("evaluate", help="compare initializations: fresh agents, same games and seeds")
    from leap_rl.evaluate import add_arguments as evaluate_arguments
    evaluate_arguments(p)

    p = sub.add_parser("bench", help="measure speed: limits, the A2C loop, Leap's overhead, Ray workers, the learner")
    from bench import add_arguments as bench_arguments
    bench_arguments(p)

    p = sub.add_parser("plot", help="plot a run's learning curves to PNG")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, help="PNG path (default: RUN_DIR/curves.png)")
    p.add_argument("--title")
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as a Ctrl-C (Ray's processes are ended by the
    driver's own shutdown instead of dumping their stacks)."""


_received: set[int] = set()
"""Signals received: Ray's blocking calls turn an exception raised in a signal handler into a
plain KeyboardInterrupt, so which signal it was is kept here."""


def _raise_terminated(signum, frame) -> None:
    _received.add(signum)
    raise _Terminated()


def _resume_hint(args: argparse.Namespace) -> str:
    """How to go on with an interrupted run: the checkpoint of its last meta-step is on disk."""
    run_dir = getattr(args, "run_dir", None)
    if args.command not in ("train", "pretrain") or run_dir is None or not (Path(run_dir) / "config.toml").exists():
        return ""
    runtime = " --runtime sequential" if getattr(args, "runtime", None) == "sequential" else ""
    return f"; go on with: leap-rl {args.command} --resume{runtime} --run-dir {run_dir}"


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    from leap_rl.config import ConfigError
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    # Python leaves SIGINT ignored when it starts with it ignored, as every `cmd &` of a
    # non-interactive shell (and nohup) does: a Ctrl-C or `kill -INT` must still stop a run.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"leap-rl {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated) or signal.SIGTERM in _received
        print(f"leap-rl {args.command}: {'terminated' if terminated else 'interrupted'}{_resume_hint(args)}",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _load_config(args: argparse.Namespace):
    from leap_rl.config import load
    overrides = tuple(args.overrides) + ((f"seed={args.seed}",) if args.seed is not None else ())
    return load(args.preset, args.config, overrides)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "evaluate":
        from leap_rl.evaluate import run
        return run(args)
    if args.command == "bench":
        from bench import run as run_bench
        return run_bench(args)
    if args.command == "pool":
        from leap_rl.commands import print_pool
        return print_pool(show_all=args.all, flavours=args.flavours)
    if args.command == "plot":
        from leap_rl.plots import plot_run
        out = plot_run(args.run_dir, args.out, args.title)
        print(f"wrote {out}")
        return 0
    if args.command in ("train", "pretrain") and args.resume:
        from leap_rl.run_dir import RunDir
        run, cfg = RunDir.open_existing(args.run_dir)
        if args.overrides or args.config:
            print(f"leap-rl {args.command}: note: --resume uses the run's saved config.toml; "
                  "--set/--config are ignored", file=sys.stderr)
    else:
        cfg = _load_config(args)
        run = None
    from leap_rl.threads import set_torch_threads
    set_torch_threads(cfg.runtime.torch_threads)
    if args.command == "task":
        from leap_rl.commands import run_task
        return run_task(cfg, args.game, args.env_steps, args.init, args.run_dir)
    from leap_rl.schedule import meta_training_games
    meta_training_games(cfg)  # unknown games fail here, before a run directory is made
    if args.command == "pretrain":
        from leap_rl.pretrain import command as run_pretrain
        return run_pretrain(cfg, run, args.run_dir, args.tasks)
    if args.runtime == "sequential":
        from leap_rl.commands import run_train_sequential
        return run_train_sequential(cfg, args.run_dir, run)
    from learner.driver import run_train_ray  # the Ray runtime, imported only when used
    return run_train_ray(cfg, args.run_dir, run, address=args.address, dashboard=args.dashboard)


if __name__ == "__main__":
    sys.exit(main())
