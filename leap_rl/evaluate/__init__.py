"""``leap-rl evaluate``: train fresh agents from several encoder initializations and compare them.

The paper's protocol (LEAP.md §4): for every game, every initialization (Leap, Reptile, a random
encoder, ...) and every seed, train a fresh A2C agent for the same number of env steps with
everything else identical, then compare learning curves. Here:

- Seeds are matched: seed ``i`` is the same number for every initialization and game, so the
  env seed, the head initialization and the action sampler are the same and only φ differs.
  The random baseline of seed ``i`` is ``initial_encoder(model, seed_i)``.
- One JSON file per finished (game, init, seed) under ``OUT/runs/`` (written atomically);
  ``--resume`` skips the ones already there, after checking that they were trained with the
  same configuration and the same φ.
- ``OUT/results.json`` and ``OUT/results.md``: per game the learning curves on a common
  env-step grid (mean, sd, min, max over seeds), the area under the curve (the primary metric:
  the mean of the curve over the grid), the final score (mean of the last 100 games), and for
  every pair of initializations the difference in both with a Welch 95 % interval, a Welch
  t-test p-value, an exact permutation p-value and the difference detectable with 80 % power;
  the dead-unit fraction of every φ on a fixed probe batch; the meta-training path length per
  meta-step of every init that comes from a run directory.
- ``OUT/curves.png`` (one panel per game) and ``OUT/meta.png`` (path length and dead units
  against meta-step, when any init has meta-training metrics).

The parts, each in its own module: ``plan`` (inputs, validated: inits, config, games, seeds),
``train`` (the output directory, resume, training the agents), ``stats`` (Welch, permutation,
power), ``analysis`` (curves, AUC, comparisons from the run files), ``report`` (results.md and
the files), ``figures`` (the plots) and ``transfer`` (transfer.json, the per-seed numbers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from leap_rl.evaluate.analysis import analyse, describe_estimator, init_info, meta_curve
from leap_rl.evaluate.plan import RANDOM, RESULTS_JSON, RESULTS_MD, Init, Plan, build_plan, error, run_file
from leap_rl.evaluate.report import markdown, write_report
from leap_rl.evaluate.stats import mde_welch, permutation_p, t_quantile, t_two_sided_p, welch
from leap_rl.evaluate.train import prepare_out, train_all

__all__ = ["add_arguments", "run", "main", "Init", "Plan", "build_plan", "run_file", "prepare_out",
           "train_all", "analyse", "init_info", "meta_curve", "describe_estimator", "markdown",
           "write_report", "welch", "permutation_p", "t_quantile", "t_two_sided_p", "mde_welch", "RANDOM"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``leap-rl evaluate`` (the caller owns the parser and its error handling)."""
    if parser.description is None:
        parser.description = "Train fresh agents from several encoder initializations on the same " \
                             "games and seeds and compare learning curves, AUC and final scores."
    parser.add_argument("--init", dest="inits", action="append", default=[], metavar="NAME=PATH",
                        help="an initialization: a run directory, its checkpoint.pt or a file holding "
                             "a 1-D φ (repeatable; NAME defaults to the directory's name)")
    parser.add_argument("--random", action="store_true",
                        help="add the random-initialization baseline (named 'random')")
    parser.add_argument("--games", required=True,
                        help="comma-separated game specs: ALE ids or flavours GAME:mode=M:difficulty=D, "
                             "e.g. seaquest,space_invaders:mode=3 (`leap-rl pool --flavours` lists them)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per game and init (default: %(default)s)")
    parser.add_argument("--env-steps", type=int, required=True, help="env steps per agent")
    parser.add_argument("--points", type=int, default=40,
                        help="about this many points per learning curve (sets runtime.log_every; "
                             "default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue the evaluation in --out: skip the agents already trained")
    parser.add_argument("--jobs", type=int, default=1,
                        help="agents trained in parallel processes (default: %(default)s)")
    parser.add_argument("--preset", default=None,
                        help="ci | quick | baselines | paper for the evaluation agents (default: "
                             "baselines, with the model section of the first --init's run)")
    parser.add_argument("--config", type=Path, help="a TOML file applied on top of the preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set a2c.lr=1e-4 (repeatable)")
    parser.add_argument("--seed", type=int, help="base seed; the agents' seeds derive from it")
    parser.add_argument("--transfer-json", type=Path, metavar="PATH",
                        help="also write the per-seed AUC and final scores of the inits random, reptile, "
                             "finetune and leap to PATH (the shape of docs/results/transfer.json)")


def run(args: argparse.Namespace) -> int:
    """``leap-rl evaluate``: ConfigError for bad input (the CLI makes it exit code 2)."""
    import torch

    start = time.perf_counter()
    plan = build_plan(args)
    if args.transfer_json is not None:  # checked before anything is trained
        from leap_rl.evaluate.transfer import NAMES, missing_names
        missing = missing_names([i.name for i in plan.inits])
        if missing:
            raise error(f"--transfer-json needs inits named {', '.join(NAMES)}; missing: {', '.join(missing)}")
    torch.set_num_threads(plan.cfg.runtime.torch_threads)  # before any φ is made (see plan.phi_key)
    prepare_out(plan, args.resume)
    print(f"evaluating {len(plan.inits)} init(s) ({', '.join(i.name for i in plan.inits)}) on "
          f"{', '.join(plan.games)}, {len(plan.seeds)} seed(s), {plan.env_steps} env steps each, "
          f"into {plan.out}", flush=True)
    train_all(plan, args.jobs, args.resume, echo=lambda s: print(s, flush=True))
    results = write_report(plan)
    if args.transfer_json is not None:
        from leap_rl.evaluate.transfer import write_transfer
        write_transfer(results, args.transfer_json)
        print(f"wrote {args.transfer_json}", flush=True)
    print(f"wrote {plan.out / RESULTS_MD}, {plan.out / RESULTS_JSON} and plots in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m leap_rl.evaluate`` (the same as ``leap-rl evaluate``)."""
    from leap_rl.usage import UsageParser
    from leap_rl.config import ConfigError
    parser = UsageParser(prog="leap-rl evaluate")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"leap-rl evaluate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("leap-rl evaluate: interrupted (continue with --resume)", file=sys.stderr)
        return 130
