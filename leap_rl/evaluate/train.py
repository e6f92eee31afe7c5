"""Training the evaluation agents: the output directory, what a resume may skip, the agents.

One JSON file per finished (game, init, seed) under ``OUT/runs/``, written atomically; a resume
skips the files already there after checking that they were made with the same settings and
the same φ.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import tomllib
from pathlib import Path

from leap_rl.evaluate.plan import (FORMAT, RESULTS_JSON, RUNS, SPEC_FILE, Init, Plan, defining_settings,
                                   error, phi_for, phi_key, run_file)
from leap_rl.jsonio import atomic_write_text, dump_json


def prepare_out(plan: Plan, resume: bool) -> None:
    """Create OUT (refusing one that holds an evaluation unless --resume), write the spec."""
    from leap_rl.config import dumps_toml, to_dict
    out = plan.out
    spec_path = out / SPEC_FILE
    if out.exists() and not out.is_dir():
        raise error(f"--out {str(out)!r} exists and is not a directory")
    holds = out.is_dir() and any((out / p).exists() for p in (SPEC_FILE, RESULTS_JSON, RUNS))
    if resume:
        if not spec_path.exists():
            raise error(f"--resume: {str(out)!r} holds no evaluation (no {SPEC_FILE})")
        try:
            saved = json.loads(spec_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise error(f"--resume: {str(spec_path)!r} is unreadable: {exc}") from None
        if saved.get("config_sha") != plan.config_sha or saved.get("env_steps") != plan.env_steps:
            what = config_difference(saved.get("settings", {}), defining_settings(plan.cfg))
            if saved.get("env_steps") != plan.env_steps:
                what = f"--env-steps {saved.get('env_steps')} vs {plan.env_steps}"
            raise error(f"--resume: the evaluation in {str(out)!r} was made with other settings "
                        f"({what}); use the same ones or a new --out")
    elif holds:
        raise error(f"--out {str(out)!r} already holds an evaluation; "
                    "use --resume to continue it or choose a new directory")
    try:
        (out / RUNS).mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise error(f"--out {str(out)!r} is not writable: {exc.strerror}") from None
    atomic_write_text(out / "config.toml", dumps_toml(plan.cfg))
    atomic_write_text(spec_path, dump_json({
        "format": FORMAT, "config_sha": plan.config_sha, "settings": defining_settings(plan.cfg),
        "config": to_dict(plan.cfg),
        "env_steps": plan.env_steps, "games": plan.games, "seeds": plan.seeds,
        "inits": {i.name: i.source for i in plan.inits}, "command": sys.argv,
    }))


def config_difference(old: dict, new: dict, prefix: str = "") -> str:
    """The first setting (dotted name: old vs new) where two settings trees differ, or ''."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = config_difference(a, b, f"{prefix}{key}.")
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
            raise error(f"--resume: {str(path)!r} was trained with other settings; "
                        "use a new --out or delete that file")
        if row.get("phi_sha") != phi_shas[(init.name, i)]:
            raise error(f"--resume: {str(path)!r} was trained from another φ than --init "
                        f"{init.name}={init.source}; use a new --out or another name")
        done.add((game, init.name, i))
    return done


_RUNNER = None
"""This process's TaskRunner, kept across agents (its Leap buffers are reused)."""


def train_one(cfg_toml: str, job: dict, phi, out_file: str, echo_every: int) -> dict:
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
    atomic_write_text(Path(out_file), dump_json(row, indent=None))
    return row


def train_all(plan: Plan, jobs: int, resume: bool, echo=print) -> None:
    """Train every (game, init, seed) of the plan not already done, in ``jobs`` processes."""
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
            report(k, train_one(cfg_toml, job_of(game, init, i), phis[(init.name, i)],
                                str(run_file(plan.out, game, init.name, i)), echo_every))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    echo(f"training {len(todo)} agents in {min(jobs, len(todo))} processes")
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_one, cfg_toml, job_of(g, init, i), phis[(init.name, i)],
                               str(run_file(plan.out, g, init.name, i)), 0) for g, init, i in todo]
        try:
            for k, future in enumerate(as_completed(futures), 1):
                report(k, future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
