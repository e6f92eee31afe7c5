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
  env-step grid (mean, sd, min, max over seeds), the area under the curve (the mean of the
  curve over the grid), the final score (mean of the last 100 games), and for every pair of
  initializations the difference in both with a Welch 95 % interval, a Welch t-test p-value
  and an exact permutation p-value; the dead-unit fraction of every φ on a fixed probe batch;
  the meta-training path length per meta-step of every init that comes from a run directory.
- ``OUT/curves.png`` (one panel per game) and ``OUT/meta.png`` (path length and dead units
  against meta-step, when any init has meta-training metrics).

Project choices (not from the paper): the score is raw (not human-normalised); the curve at a
grid point is the mean of the last 100 finished games, undefined before the first game ends,
and the AUC is the mean over the grid points where it is defined.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from leap_rl.config import RunConfig

# leap_rl.config imports torch: it is imported where it is used, so that building the command
# line's parser (which calls add_arguments) stays fast for every subcommand.

FORMAT = 1
SPEC_FILE = "evaluation.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RUNS = "runs"
CURVES_PNG = "curves.png"
META_PNG = "meta.png"
RANDOM = "random"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
FEW_SEEDS = 5
"""Below this many seeds per init the report warns that the intervals and p-values are rough."""
EXACT_PERMUTATIONS = 50_000


def _error(message: str) -> Exception:
    """A ConfigError (one line for the user; the command line makes it exit code 2)."""
    from leap_rl.config import ConfigError
    return ConfigError(message)


# =============================================================================== arguments

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
                        help="comma-separated ALE game ids, e.g. seaquest,space_invaders")
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


# =============================================================================== inputs

@dataclass(frozen=True)
class Init:
    name: str
    source: str
    """The path given, or 'random'."""
    phi: Any = None
    """torch.Tensor, or None for the random baseline (one encoder per seed)."""
    model: dict | None = None
    """The model section of the run's config, when the init came with one."""
    leap: dict | None = None
    version: int | None = None
    run_dir: Path | None = None
    """Where metrics.jsonl with meta_step rows may be found."""


def parse_init(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if sep and _NAME.match(name):
        if not path:
            raise _error(f"--init {text!r}: the path after '=' is empty")
        return name, Path(path)
    path = Path(text)
    stem = path.parent.name if path.name == "checkpoint.pt" else path.name
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", stem.removesuffix(".pt")) or "init"
    return stem, path


def load_init(name: str, path: Path) -> Init:
    """φ, its version, the run's model and leap sections and the run directory, if any."""
    import torch

    from leap_rl.run_dir import CHECKPOINT, CONFIG, METRICS, load_encoder_file

    if not path.exists():
        raise _error(f"--init {name}={str(path)!r} does not exist")
    if path.is_dir() and not (path / CHECKPOINT).exists():
        raise _error(f"--init {name}={str(path)!r} holds no {CHECKPOINT} (not a meta-training run?)")
    phi = load_encoder_file(path).detach().float().clone()
    file = path / CHECKPOINT if path.is_dir() else path
    run_dir = file.parent
    obj = torch.load(file, map_location="cpu", weights_only=True)
    version = None
    config_text = None
    if isinstance(obj, dict):
        version = obj.get("version", obj.get("learner", {}).get("version"))
        config_text = obj.get("config")
    if (run_dir / CONFIG).exists() and (path.is_dir() or file.name == CHECKPOINT):
        config_text = (run_dir / CONFIG).read_text()
    model = leap = None
    if isinstance(config_text, str):
        try:
            data = tomllib.loads(config_text)
        except tomllib.TOMLDecodeError as exc:
            raise _error(f"--init {name}: its run configuration is not valid TOML: {exc}") from None
        model = data.get("model") if isinstance(data.get("model"), dict) else None
        leap = dict(data["leap"]) if isinstance(data.get("leap"), dict) else None
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        if leap is not None and "normalize_tasks" in meta:
            leap["normalize_tasks"] = meta["normalize_tasks"]
    if not (run_dir / METRICS).exists():
        run_dir = None
    return Init(name, str(path), phi, model, leap,
                int(version) if isinstance(version, int) else None, run_dir)


def _load_config(args: argparse.Namespace, model: dict | None) -> RunConfig:
    """Preset, then the init run's model section, then --config, then --set (each validated)."""
    from leap_rl.config import ConfigError, merge, parse_override, preset
    cfg = preset(args.preset or "baselines")
    if model is not None:
        try:
            cfg = merge(cfg, {"model": model})
        except ConfigError as exc:
            raise _error(f"the first --init's model section: {exc}") from None
    if args.config is not None:
        try:
            data = tomllib.loads(Path(args.config).read_text())
        except FileNotFoundError:
            raise _error(f"--config file {str(args.config)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise _error(f"--config file {str(args.config)!r} is not valid TOML: {exc}") from None
        cfg = merge(cfg, data)
    for text in args.overrides:
        cfg = merge(cfg, parse_override(text))
    if args.seed is not None:
        cfg = merge(cfg, {"seed": args.seed})
    return cfg


@dataclass(frozen=True)
class Plan:
    cfg: RunConfig
    games: tuple[str, ...]
    inits: tuple[Init, ...]
    seeds: tuple[int, ...]
    env_steps: int
    out: Path

    @property
    def config_sha(self) -> str:
        return hashlib.sha256(json.dumps(defining_settings(self.cfg), sort_keys=True).encode()).hexdigest()[:16]

    def jobs(self) -> list[tuple[str, Init, int]]:
        """Seed-major order, so an interrupted evaluation has every init at the same seeds."""
        return [(game, init, i) for i in range(len(self.seeds)) for game in self.games for init in self.inits]


def defining_settings(cfg: RunConfig) -> dict:
    """The settings that change what an evaluation agent does or reports: everything but the
    meta section (meta-training only) and the runtime's resources (threads, device, workers)."""
    from leap_rl.config import to_dict
    data = to_dict(cfg)
    del data["meta"]
    data["runtime"] = {k: data["runtime"][k] for k in ("log_every", "dead_unit_probe")}
    return data


def evaluation_seeds(base: int, count: int) -> tuple[int, ...]:
    from leap_rl.schedule import derived_seed
    return tuple(derived_seed(base, 0xE7A1, i) for i in range(count))


def build_plan(args: argparse.Namespace) -> Plan:
    """Everything validated before anything is written or trained."""
    from leap_rl.envs import normalize_game
    from leap_rl.models import encoder_size

    if args.env_steps is None or args.env_steps <= 0:
        raise _error(f"--env-steps must be a positive integer, got {args.env_steps}")
    if args.seeds is None or args.seeds < 1:
        raise _error(f"--seeds must be an integer ≥ 1, got {args.seeds}")
    if args.points < 2:
        raise _error(f"--points must be an integer ≥ 2, got {args.points}")
    if args.jobs < 1:
        raise _error(f"--jobs must be an integer ≥ 1, got {args.jobs}")
    names = [g for g in (s.strip() for s in args.games.split(",")) if g]
    if not names:
        raise _error(f"--games must name at least one game, got {args.games!r}")
    games = tuple(dict.fromkeys(normalize_game(g) for g in names))

    specs = [parse_init(text) for text in args.inits]
    if not specs and not args.random:
        raise _error("nothing to evaluate: give --init NAME=RUN_DIR and/or --random")
    seen: set[str] = set()
    for name, _path in specs + ([(RANDOM, None)] if args.random else []):
        if "__" in name or not _NAME.match(name):
            raise _error(f"--init name {name!r} must be letters, digits, '_', '.', '+', '-' "
                              "(no '__')")
        if name in seen:
            raise _error(f"--init name {name!r} is used twice"
                              + (" (--random is named 'random')" if name == RANDOM else ""))
        seen.add(name)
    inits = [load_init(name, path) for name, path in specs]
    model = next((i.model for i in inits if i.model is not None), None)
    cfg = _load_config(args, model)
    n = encoder_size(cfg.model)
    for init in inits:
        if init.phi.numel() != n:
            raise _error(
                f"--init {init.name}: φ has {init.phi.numel()} parameters, but model.network="
                f"{cfg.model.network!r} with model.encoder_includes_fc={cfg.model.encoder_includes_fc} "
                f"needs {n}; set the model that run was trained with (--set model.network=...)")
    if args.random:
        inits.append(Init(RANDOM, RANDOM))
    updates = math.ceil(args.env_steps / cfg.env_steps_per_update)
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(
        cfg.runtime, log_every=max(1, round(updates / args.points))))
    return Plan(cfg, games, tuple(inits), evaluation_seeds(cfg.seed, args.seeds), args.env_steps,
                Path(args.out))


# =============================================================================== files

def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _dump(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(_jsonable(obj), indent=indent) + "\n"


def run_file(out: Path, game: str, init: str, seed_index: int) -> Path:
    return out / RUNS / f"{game}__{init}__s{seed_index}.json"


def _phi_sha(phi) -> str:
    return hashlib.sha256(phi.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def phi_key(plan: Plan, init: Init, seed_index: int) -> str:
    """What identifies an init's φ in a run file: the hash of a loaded φ; for the random
    baseline its recipe (the orthogonal init's QR is not bit-identical across thread counts or
    BLAS builds, and the model section is already in the config hash)."""
    if init.phi is None:
        return f"initial_encoder(seed={plan.seeds[seed_index]})"
    return _phi_sha(init.phi)


def phi_for(plan: Plan, init: Init, seed_index: int):
    from leap_rl.models import initial_encoder
    if init.phi is not None:
        return init.phi
    return initial_encoder(plan.cfg.model, plan.seeds[seed_index])


def prepare_out(plan: Plan, resume: bool) -> None:
    """Create OUT (refusing one that holds an evaluation unless --resume), write the spec."""
    from leap_rl.config import dumps_toml, to_dict
    out = plan.out
    spec_path = out / SPEC_FILE
    if out.exists() and not out.is_dir():
        raise _error(f"--out {str(out)!r} exists and is not a directory")
    holds = out.is_dir() and any((out / p).exists() for p in (SPEC_FILE, RESULTS_JSON, RUNS))
    if resume:
        if not spec_path.exists():
            raise _error(f"--resume: {str(out)!r} holds no evaluation (no {SPEC_FILE})")
        try:
            saved = json.loads(spec_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise _error(f"--resume: {str(spec_path)!r} is unreadable: {exc}") from None
        if saved.get("config_sha") != plan.config_sha or saved.get("env_steps") != plan.env_steps:
            what = _config_difference(saved.get("settings", {}), defining_settings(plan.cfg))
            if saved.get("env_steps") != plan.env_steps:
                what = f"--env-steps {saved.get('env_steps')} vs {plan.env_steps}"
            raise _error(f"--resume: the evaluation in {str(out)!r} was made with other settings "
                              f"({what}); use the same ones or a new --out")
    elif holds:
        raise _error(f"--out {str(out)!r} already holds an evaluation; "
                          "use --resume to continue it or choose a new directory")
    try:
        (out / RUNS).mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise _error(f"--out {str(out)!r} is not writable: {exc.strerror}") from None
    _atomic_write(out / "config.toml", dumps_toml(plan.cfg))
    _atomic_write(spec_path, _dump({
        "format": FORMAT, "config_sha": plan.config_sha, "settings": defining_settings(plan.cfg),
        "config": to_dict(plan.cfg),
        "env_steps": plan.env_steps, "games": plan.games, "seeds": plan.seeds,
        "inits": {i.name: i.source for i in plan.inits}, "command": sys.argv,
    }))


def _config_difference(old: dict, new: dict, prefix: str = "") -> str:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _config_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} vs {b!r}"
    return ""


def check_existing(plan: Plan, phi_shas: dict[tuple[str, int], str]) -> set[tuple[str, str, int]]:
    """The (game, init, seed index) already done; a file made from other settings is an error."""
    done = set()
    for game, init, i in plan.jobs():
        path = run_file(plan.out, game, init.name, i)
        if not path.exists():
            continue
        try:
            row = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # unreadable: train it again (files are written atomically, so this is rare)
        if row.get("config_sha") != plan.config_sha or row.get("env_steps") != plan.env_steps \
                or row.get("seed") != plan.seeds[i]:
            raise _error(f"--resume: {str(path)!r} was trained with other settings; "
                              "use a new --out or delete that file")
        if row.get("phi_sha") != phi_shas[(init.name, i)]:
            raise _error(f"--resume: {str(path)!r} was trained from another φ than --init "
                              f"{init.name}={init.source}; use a new --out or another name")
        done.add((game, init.name, i))
    return done


# =============================================================================== training

_RUNNER = None


def _train_one(cfg_toml: str, job: dict, phi, out_file: str, echo_every: int) -> dict:
    """Train one agent and write its run file. Runs in this process or in a worker process."""
    global _RUNNER
    import torch

    from leap_rl.config import from_dict
    from leap_rl.messages import TaskSpec
    from leap_rl.task import TaskRunner

    cfg = from_dict(tomllib.loads(cfg_toml))
    torch.set_num_threads(cfg.runtime.torch_threads)
    if _RUNNER is None or _RUNNER.cfg != cfg:
        _RUNNER = TaskRunner(cfg)
    label = f"{job['game']} × {job['init']} × seed {job['seed_index']}"
    spec = TaskSpec(task_id=f"{job['game']}__{job['init']}__s{job['seed_index']}", game=job["game"],
                    init_version=job.get("version") or 0, seed=job["seed"], env_steps=job["env_steps"])
    progress: list[dict] = []

    def on_progress(row: dict) -> None:
        progress.append({"env_steps": row["env_steps"], "episode_return_mean": row["episode_return_mean"],
                         "episodes": row["episodes"]})
        if echo_every and len(progress) % echo_every == 0:
            print(f"  {label}: {row['env_steps']} steps, score(last 100) "
                  f"{row['episode_return_mean']:.1f}, {row['fps']:.0f} steps/s", flush=True)

    result = _RUNNER.run(spec, phi, on_progress=on_progress)
    row = {
        **job, "env_steps_done": result.env_steps, "progress": progress,
        "final_return_mean": result.final_return_mean, "episodes": len(result.episode_returns),
        "episode_returns": list(result.episode_returns), "diverged": result.diverged,
        "seconds": result.seconds, "path_length": result.path_length,
    }
    _atomic_write(Path(out_file), _dump(row, indent=None))
    return row


def train_all(plan: Plan, jobs: int, resume: bool, echo=print) -> None:
    import torch

    from leap_rl.config import dumps_toml

    torch.set_num_threads(plan.cfg.runtime.torch_threads)
    phis = {(init.name, i): phi_for(plan, init, i) for init in plan.inits for i in range(len(plan.seeds))}
    shas = {(init.name, i): phi_key(plan, init, i) for init in plan.inits for i in range(len(plan.seeds))}
    done = check_existing(plan, shas) if resume else set()
    todo = [(g, init, i) for g, init, i in plan.jobs() if (g, init.name, i) not in done]
    total = len(plan.jobs())
    if done:
        echo(f"resuming: {len(done)} of {total} agents already trained, {len(todo)} to go")
    cfg_toml = dumps_toml(plan.cfg)
    logs = math.ceil(math.ceil(plan.env_steps / plan.cfg.env_steps_per_update) / plan.cfg.runtime.log_every)
    echo_every = max(1, logs // 4)

    def job_of(game: str, init: Init, i: int) -> dict:
        return {"format": FORMAT, "game": game, "init": init.name, "source": init.source,
                "seed_index": i, "seed": plan.seeds[i], "env_steps": plan.env_steps,
                "config_sha": plan.config_sha, "phi_sha": shas[(init.name, i)], "version": init.version}

    def report(k: int, row: dict) -> None:
        final = row["final_return_mean"]
        echo(f"[{k}/{len(todo)}] {row['game']} × {row['init']} × seed {row['seed_index']}: "
             f"{row['env_steps_done']} steps in {row['seconds']:.0f} s, {row['episodes']} games, final score "
             + (f"{final:.1f}" if final == final else "n/a (no game finished)")
             + (" — DIVERGED" if row["diverged"] else ""))

    if jobs == 1 or len(todo) <= 1:
        for k, (game, init, i) in enumerate(todo, 1):
            echo(f"[{k}/{len(todo)}] training {game} × {init.name} × seed {i} ({plan.env_steps} env steps)")
            report(k, _train_one(cfg_toml, job_of(game, init, i), phis[(init.name, i)],
                                 str(run_file(plan.out, game, init.name, i)), echo_every))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    echo(f"training {len(todo)} agents in {min(jobs, len(todo))} processes")
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_train_one, cfg_toml, job_of(g, init, i), phis[(init.name, i)],
                               str(run_file(plan.out, g, init.name, i)), 0) for g, init, i in todo]
        try:
            for k, future in enumerate(as_completed(futures), 1):
                report(k, future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# =============================================================================== statistics

def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` (real, > 0) degrees of freedom (scipy.stats)."""
    from scipy import stats  # imported here: building the CLI parser must not pay for scipy
    if not math.isfinite(t):
        return 0.0
    return float(2.0 * stats.t.sf(abs(t), df))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (scipy.stats)."""
    from scipy import stats
    return float(stats.t.ppf(q, df))


def welch(a: Sequence[float], b: Sequence[float]) -> dict:
    """Difference of means a − b with Welch's 95 % interval and two-sided t-test p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"diff": float(a.mean() - b.mean()) if len(a) and len(b) else None,
           "ci95": None, "p_welch": None, "df": None, "t": None}
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    diff = out["diff"]
    if se == 0.0:  # every seed scored the same on both sides: no spread to test against
        if diff == 0.0:
            out.update(ci95=[0.0, 0.0], p_welch=1.0)
        return out
    from scipy import stats
    res = stats.ttest_ind(a, b, equal_var=False)  # Welch: Welch–Satterthwaite df
    ci = res.confidence_interval(0.95)
    out.update(ci95=[float(ci.low), float(ci.high)], p_welch=float(res.pvalue), df=float(res.df),
               t=float(res.statistic))
    return out


def permutation_p(a: Sequence[float], b: Sequence[float], rounds: int = 20_000) -> float | None:
    """Two-sided permutation p-value of the difference of means (exact when it is cheap)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 1 or len(b) < 1:
        return None
    pooled = np.concatenate([a, b])
    n, k = len(pooled), len(a)
    total = pooled.sum()
    observed = abs(a.mean() - b.mean())
    tol = 1e-9 * max(1.0, float(np.abs(pooled).max()))

    def diffs(sums: np.ndarray) -> np.ndarray:
        return np.abs(sums / k - (total - sums) / (n - k))

    if math.comb(n, k) <= EXACT_PERMUTATIONS:
        idx = np.array(list(itertools.combinations(range(n), k)))
        return float(np.mean(diffs(pooled[idx].sum(axis=1)) >= observed - tol))
    rng = np.random.default_rng(0)
    sums = np.array([pooled[rng.permutation(n)[:k]].sum() for _ in range(rounds)])
    return float((np.sum(diffs(sums) >= observed - tol) + 1) / (rounds + 1))


def _summary(values: Sequence[float | None]) -> dict:
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], float)
    return {"per_seed": list(values), "n": len(xs),
            "mean": float(xs.mean()) if len(xs) else None,
            "sd": float(xs.std(ddof=1)) if len(xs) > 1 else None}


# =============================================================================== report

def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def meta_curve(run_dir: Path | None) -> list[dict]:
    """Mean path length and dead-unit fraction per version from a run's meta_step rows."""
    if run_dir is None:
        return []
    from leap_rl.run_dir import RunDir
    by_version: dict[int, list[dict]] = {}
    for row in RunDir(run_dir, tensorboard=False).rows("meta_step"):
        if isinstance(row.get("version"), int):
            by_version.setdefault(row["version"], []).append(row)
    curve = []
    for version, rows in sorted(by_version.items()):
        lengths = [x for x in (_finite(r.get("path_length")) for r in rows) if x is not None]
        dead = [x for x in (_finite(r.get("dead_unit_fraction")) for r in rows) if x is not None]
        curve.append({"version": version, "path_length": float(np.mean(lengths)) if lengths else None,
                      "dead_unit_fraction": float(np.mean(dead)) if dead else None})
    return curve


def describe_estimator(leap: dict | None) -> str:
    if not leap:
        return "—"
    metric, loss, stab = leap.get("metric"), leap.get("loss"), leap.get("stabilizer")
    normalized = ", tasks normalized" if leap.get("normalize_tasks") else ""
    if metric == "energy" and loss is False:
        return f"Reptile (energy, no loss term{normalized})"
    parts = [str(metric), "loss" if loss else "no loss"]
    if loss:
        parts.append("stabilizer" if stab else "no stabilizer")
    return "Leap (" + ", ".join(parts) + normalized + ")"


def init_info(plan: Plan) -> dict[str, dict]:
    """Per init: its source, φ version, estimator, dead units on the probe, meta curve."""
    from leap_rl.meta_training import encoder_dead_fraction, probe_batch

    probe = probe_batch(plan.cfg, plan.games, plan.cfg.runtime.dead_unit_probe)
    info = {}
    for init in plan.inits:
        if init.phi is None:
            dead = [encoder_dead_fraction(plan.cfg, phi_for(plan, init, i), probe) for i in range(len(plan.seeds))]
            info[init.name] = {"source": RANDOM, "version": None, "estimator": "random initialization",
                               "dead_unit_fraction": float(np.mean(dead)), "dead_unit_fraction_per_seed": dead,
                               "meta_curve": []}
        else:
            info[init.name] = {"source": init.source, "version": init.version,
                               "estimator": describe_estimator(init.leap), "leap": init.leap,
                               "dead_unit_fraction": encoder_dead_fraction(plan.cfg, init.phi, probe),
                               "meta_curve": meta_curve(init.run_dir)}
    return info


def analyse(plan: Plan) -> dict:
    """results.json from the run files of this plan."""
    from leap_rl.config import to_dict
    games: dict[str, dict] = {}
    names = [i.name for i in plan.inits]
    for game in plan.games:
        runs = {name: [json.loads(run_file(plan.out, game, name, i).read_text())
                       for i in range(len(plan.seeds))] for name in names}
        grid = sorted({p["env_steps"] for rs in runs.values() for r in rs for p in r["progress"]})
        where = {s: k for k, s in enumerate(grid)}
        per_init = {}
        for name, rs in runs.items():
            curves = np.full((len(rs), len(grid)), np.nan)
            for j, r in enumerate(rs):
                for p in r["progress"]:
                    if p["episode_return_mean"] is not None:
                        curves[j, where[p["env_steps"]]] = p["episode_return_mean"]
            defined = np.isfinite(curves)
            with np.errstate(all="ignore"), _quiet():
                auc = [float(np.nanmean(c)) if np.isfinite(c).any() else None for c in curves]
                curve = {"mean": np.nanmean(curves, axis=0), "sd": np.nanstd(curves, axis=0, ddof=1)
                         if len(rs) > 1 else np.full(len(grid), np.nan),
                         "min": np.nanmin(curves, axis=0), "max": np.nanmax(curves, axis=0),
                         "n": defined.sum(axis=0)}
            per_init[name] = {
                "curve": curve, "auc": _summary(auc),
                "final": _summary([_finite(r["final_return_mean"]) for r in rs]),
                "games_finished": _summary([float(r["episodes"]) for r in rs]),
                "eval_path_length": _summary([_finite(r["path_length"]) for r in rs]),
                "diverged": sum(bool(r["diverged"]) for r in rs),
                "seconds": float(sum(r["seconds"] for r in rs)),
            }
        pairs = []
        for a, b in itertools.combinations(names, 2):
            pair = {"a": a, "b": b}
            for metric in ("auc", "final"):
                xa = [v for v in per_init[a][metric]["per_seed"] if v is not None]
                xb = [v for v in per_init[b][metric]["per_seed"] if v is not None]
                pair[metric] = {**welch(xa, xb), "p_permutation": permutation_p(xa, xb),
                                "n_a": len(xa), "n_b": len(xb)}
            pairs.append(pair)
        games[game] = {"grid": grid, "inits": per_init, "pairs": pairs}
    notes = [
        "score: raw game score, mean of the last 100 finished games (whole games, not lives)",
        "auc: mean of the learning curve over the common env-step grid, over the points where at "
        "least one game had finished",
        "final: mean score of the last 100 games at the end of training",
        "pairs: a − b; ci95 from Welch's t; p_welch two-sided Welch t-test; p_permutation exact "
        "(or Monte Carlo) two-sided permutation test of the difference of means",
        "seeds are matched across inits (same env seed, heads and sampler seed): only φ differs",
        "eval_path_length: Σw of each evaluation agent's encoder path, measured with the evaluation "
        "config's leap section",
    ]
    if len(plan.seeds) < FEW_SEEDS:
        notes.append(f"only {len(plan.seeds)} seed(s) per init: intervals are wide and p-values rough; "
                     f"with n seeds per side the permutation p-value cannot go below "
                     f"{1 / math.comb(2 * len(plan.seeds), len(plan.seeds)) * 2:.3g}")
    return {"format": FORMAT, "env_steps": plan.env_steps, "seeds": plan.seeds, "games": plan.games,
            "inits": names, "config": to_dict(plan.cfg), "config_sha": plan.config_sha,
            "per_game": games, "notes": notes}


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings for all-NaN columns."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _fmt(x: float | None, digits: int | None = None) -> str:
    """``digits`` decimals; by default 2 below 10 in magnitude (small scores), else 1."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if digits is None:
        digits = 2 if abs(x) < 10 else 1
    return f"{x:.{digits}f}"


def _pm(s: dict) -> str:
    if s["mean"] is None:
        return "n/a"
    return _fmt(s["mean"]) + (f" ± {_fmt(s['sd'])}" if s["sd"] is not None else "") + \
        (f" (n={s['n']})" if s["n"] != len(s["per_seed"]) else "")


def _p(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


def _ci(c: list | None) -> str:
    return "n/a" if c is None else f"[{_fmt(c[0])}, {_fmt(c[1])}]"


def markdown(results: dict) -> str:
    inits = results["inits_info"]
    model = results["config"]["model"]
    lines = [f"# Evaluation: {len(results['seeds'])} seeds × {results['env_steps']} env steps per agent",
             "",
             f"Games: {', '.join(results['games'])}. Evaluation agents: model.network "
             f"{model['network']!r} (encoder_includes_fc={model['encoder_includes_fc']}), "
             f"{results['config']['env']['num_envs']} envs, A2C lr {results['config']['a2c']['lr']}, "
             f"seed {results['config']['seed']} (config.toml has all settings).",
             "", "## Initializations", "",
             f"| init | source | φ version | estimator | dead units ({results['config']['runtime']['dead_unit_probe']} "
             "probe frames of these games) | meta path length first → last |",
             "|---|---|---|---|---|---|"]
    for name in results["inits"]:
        i = inits[name]
        curve = [c for c in i["meta_curve"] if c["path_length"] is not None]
        path = (f"{_fmt(curve[0]['path_length'], 3)} (v{curve[0]['version']}) → "
                f"{_fmt(curve[-1]['path_length'], 3)} (v{curve[-1]['version']})") if curve else "—"
        lines.append(f"| {name} | `{i['source']}` | {i['version'] if i['version'] is not None else '—'} | "
                     f"{i['estimator']} | {100 * i['dead_unit_fraction']:.0f}% | {path} |")
    for game, g in results["per_game"].items():
        lines += ["", f"## {game}", "",
                  "| init | AUC mean ± sd | final mean ± sd | games finished | eval path length | diverged |",
                  "|---|---|---|---|---|---|"]
        for name in results["inits"]:
            r = g["inits"][name]
            lines.append(f"| {name} | {_pm(r['auc'])} | {_pm(r['final'])} | "
                         f"{_fmt(r['games_finished']['mean'], 0)} | {_fmt(r['eval_path_length']['mean'], 2)} | "
                         f"{r['diverged']} |")
        if g["pairs"]:
            lines += ["", "| a − b | ΔAUC [95% CI] | p Welch | p perm. | Δfinal [95% CI] | p Welch | p perm. |",
                      "|---|---|---|---|---|---|---|"]
            for p in g["pairs"]:
                auc, fin = p["auc"], p["final"]
                lines.append(f"| {p['a']} − {p['b']} | {_fmt(auc['diff'])} {_ci(auc['ci95'])} | "
                             f"{_p(auc['p_welch'])} | {_p(auc['p_permutation'])} | {_fmt(fin['diff'])} "
                             f"{_ci(fin['ci95'])} | {_p(fin['p_welch'])} | {_p(fin['p_permutation'])} |")
    lines += ["", f"![learning curves]({CURVES_PNG})"]
    if results.get("meta_plot"):
        lines += ["", f"![meta-training path length]({META_PNG})"]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(results: dict, path: Path) -> None:
    plt = _pyplot()
    games = results["games"]
    cols = min(3, len(games))
    rows = -(-len(games) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax, game in zip(axes.flat, games):
        g = results["per_game"][game]
        xs = np.asarray(g["grid"], float)
        for k, name in enumerate(results["inits"]):
            c = g["inits"][name]["curve"]
            mean = np.asarray(c["mean"], float)
            ax.plot(xs, mean, color=f"C{k}", linestyle=("-", "--", "-.", ":")[k % 4],
                    label=f"{name} (n={len(results['seeds'])})")
            ax.fill_between(xs, np.asarray(c["min"], float), np.asarray(c["max"], float),
                            color=f"C{k}", alpha=0.15, linewidth=0)
        ax.set_title(game)
        ax.set_xlabel("env steps (agent steps; frames = frame skip ×)")
        ax.set_ylabel("score, last 100 games (mean; band min–max)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(games):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_meta(results: dict, path: Path) -> bool:
    curves = {n: results["inits_info"][n]["meta_curve"] for n in results["inits"]}
    curves = {n: c for n, c in curves.items() if c}
    if not curves:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for k, (name, curve) in enumerate(curves.items()):
        v = [c["version"] for c in curve]
        axes[0][0].plot(v, [np.nan if c["path_length"] is None else c["path_length"] for c in curve],
                        marker="o", color=f"C{k}", label=name)
        axes[0][1].plot(v, [np.nan if c["dead_unit_fraction"] is None else 100 * c["dead_unit_fraction"]
                            for c in curve], marker="o", color=f"C{k}", label=name)
    axes[0][0].set_ylabel("mean path length Σw of the meta-training tasks")
    axes[0][1].set_ylabel("dead encoder units on the run's probe (%)")
    from matplotlib.ticker import MaxNLocator
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("meta-step (version of φ)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(plan: Plan, echo=print) -> dict:
    results = analyse(plan)
    results["inits_info"] = init_info(plan)
    plot_curves(results, plan.out / CURVES_PNG)
    results["meta_plot"] = plot_meta(results, plan.out / META_PNG)
    _atomic_write(plan.out / RESULTS_MD, markdown(results))
    _atomic_write(plan.out / RESULTS_JSON, _dump(results))
    for game, g in results["per_game"].items():
        echo(f"{game}: " + "; ".join(
            f"{name} AUC {_fmt(r['auc']['mean'])} final {_fmt(r['final']['mean'])}"
            for name, r in g["inits"].items()))
    return results


# =============================================================================== entry points

def run(args: argparse.Namespace) -> int:
    """``leap-rl evaluate``: ConfigError for bad input (the CLI makes it exit code 2)."""
    import torch

    start = time.perf_counter()
    plan = build_plan(args)
    torch.set_num_threads(plan.cfg.runtime.torch_threads)  # before any φ is made (see phi_key)
    prepare_out(plan, args.resume)
    print(f"evaluating {len(plan.inits)} init(s) ({', '.join(i.name for i in plan.inits)}) on "
          f"{', '.join(plan.games)}, {len(plan.seeds)} seed(s), {plan.env_steps} env steps each, "
          f"into {plan.out}", flush=True)
    train_all(plan, args.jobs, args.resume, echo=lambda s: print(s, flush=True))
    write_report(plan)
    print(f"wrote {plan.out / RESULTS_MD}, {plan.out / RESULTS_JSON} and plots in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m leap_rl.evaluate`` (the same as ``leap-rl evaluate``)."""
    from leap_rl.cli import _Parser
    from leap_rl.config import ConfigError
    parser = _Parser(prog="leap-rl evaluate")
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


if __name__ == "__main__":
    sys.exit(main())
