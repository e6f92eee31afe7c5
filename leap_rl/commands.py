"""What the Ray-free subcommands of ``leap-rl`` do, kept apart from argument parsing."""

from __future__ import annotations

from pathlib import Path

from leap_rl.config import ConfigError, RunConfig, require_a2c_inner
from leap_rl.envs import POOL_MAX_ACTIONS, meta_training_pool
from leap_rl.flavours import normalize_spec
from leap_rl.messages import TaskSpec
from leap_rl.run_dir import RunDir, load_encoder_file


def print_pool(show_all: bool = False, flavours: bool = False) -> int:
    entries = meta_training_pool()
    pool = [e for e in entries if e.in_pool]
    print(f"meta-training pool: {len(pool)} games with at most {POOL_MAX_ACTIONS} minimal actions, "
          f"breakout and space_invaders held out ({len(entries)} ROMs installed)")
    if flavours:
        from leap_rl.flavours import describe_values, flavours_of
        print("flavours: write GAME:mode=M:difficulty=D (either optional), e.g. space_invaders:mode=3:difficulty=1")
    for e in entries if show_all else pool:
        note = "" if e.in_pool else f"   (not in pool: {e.reason})"
        flavour = ""
        if flavours:
            modes, difficulties = flavours_of(e.game)
            flavour = (f"   modes {describe_values(modes)} ({len(modes)}), "
                       f"difficulties {describe_values(difficulties)} ({len(difficulties)})")
        print(f"  {e.game:<24} {e.actions:>2} actions{flavour}{note}")
    return 0


def run_task(cfg: RunConfig, game: str, env_steps: int, init: Path | None, run_dir: Path) -> int:
    import torch

    from leap_rl.task import TaskRunner

    require_a2c_inner(cfg, "leap-rl task")
    if env_steps <= 0:
        raise ConfigError(f"--env-steps must be a positive integer, got {env_steps}")
    game = normalize_spec(game)  # a plain id, or a flavour: 'space_invaders:mode=3'
    phi = load_encoder_file(init) if init is not None else None
    if phi is not None:
        from leap_rl.models import encoder_size
        expected = encoder_size(cfg.model)
        if phi.numel() != expected:
            raise ConfigError(f"--init holds {phi.numel()} encoder parameters, but model "
                              f"{cfg.model.network!r} (encoder_includes_fc={cfg.model.encoder_includes_fc}) "
                              f"needs {expected}")
    run = RunDir.create(run_dir, cfg)
    spec = TaskSpec(task_id="task", game=game, init_version=0, seed=cfg.seed, env_steps=env_steps)

    def progress(row: dict) -> None:
        run.log({"event": "progress", **row})
        print(f"{game}: {row['env_steps']:>9} steps  score(last 100) {row['episode_return_mean']:8.1f}  "
              f"{row['fps']:6.0f} steps/s", flush=True)

    torch.manual_seed(cfg.seed)
    result = TaskRunner(cfg).run(spec, phi, on_progress=progress)
    run.log({"event": "task_done", "game": game, "env_steps": result.env_steps,
             "episodes": len(result.episode_returns), "final_return_mean": result.final_return_mean,
             "path_length": result.path_length, "seconds": result.seconds})
    run.close()
    print(f"{game}: {result.env_steps} env steps in {result.seconds:.0f} s, {len(result.episode_returns)} games, "
          f"mean score of the last 100: {result.final_return_mean:.1f}; metrics in {run_dir}/metrics.jsonl")
    return 0


def run_train_sequential(cfg: RunConfig, run_dir: Path, run: RunDir | None) -> int:
    from leap_rl.meta_training import run_sequential

    require_a2c_inner(cfg, "leap-rl train --runtime sequential")
    resume = run is not None
    if run is None:
        run = RunDir.create(run_dir, cfg)
    learner = run_sequential(cfg, run, resume=resume)
    run.close()
    print(f"done: φ at version {learner.version}; checkpoint in {run.path}/checkpoint.pt")
    return 0
