"""Command-line errors: every user error is exit code 2 and ONE line on stderr, no traceback.

A few cases run the installed ``leap-rl`` script in a subprocess (what a user sees, including
anything the C++ emulator prints); the rest call ``leap_rl.cli.main`` in-process to stay fast.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from leap_rl.cli import build_parser, main

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
LEAP_RL = Path(sys.executable).parent / "leap-rl"
SUBPROCESS_TIMEOUT = 120


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_script(*args: str) -> subprocess.CompletedProcess:
    exe = [str(LEAP_RL)] if LEAP_RL.exists() else [sys.executable, "-m", "leap_rl.cli"]
    return subprocess.run(exe + list(args), capture_output=True, text=True, cwd=REPO, env=_env(),
                          timeout=SUBPROCESS_TIMEOUT)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Call main() in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # main() may setdefault it; restore afterwards

    def call(*argv: str):
        try:
            rc = main(list(argv))
        except SystemExit as exc:
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    yield call
    torch.set_num_threads(1)


def assert_one_line_error(rc, err: str) -> str:
    assert rc == 2, f"exit code {rc}, stderr: {err!r}"
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    return lines[0]


# ----------------------------------------------------------------------------- games

def test_unknown_game_names_it_and_a_close_match(tmp_path):
    run_dir = tmp_path / "run"
    p = run_script("task", "--game", "seaquestt", "--env-steps", "1000", "--run-dir", str(run_dir))
    line = assert_one_line_error(p.returncode, p.stderr)
    assert "seaquestt" in line
    assert re.search(r"\bseaquest\b", line.replace("seaquestt", ""))
    assert not run_dir.exists()


def test_unknown_game_without_close_match_points_to_an_existing_subcommand(cli, tmp_path):
    rc, _out, err = cli("task", "--game", "zzqqxxyy", "--env-steps", "1000", "--run-dir", str(tmp_path / "r"))
    line = assert_one_line_error(rc, err)
    assert "zzqqxxyy" in line
    # Any `leap-rl X` the hint refers to must be a real subcommand.
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    for name in re.findall(r"leap-rl (\w+)", line.split("error:", 1)[-1]):
        assert name in subcommands, f"the hint names `leap-rl {name}`, which does not exist: {line}"


def test_installed_but_unsupported_rom_is_a_clean_error(tmp_path):
    """combat (like joust, maze_craze, warlords) ships with ale-py, but ALE's single-player
    interface cannot load it (loadROM calls exit(1) from C++): the CLI must refuse it with a
    one-line error instead of dying with exit code 1."""
    game = "combat"
    p = run_script("task", "--game", game, "--env-steps", "100", "--run-dir", str(tmp_path / "run"))
    assert p.returncode == 2, f"exit code {p.returncode}; stderr: {p.stderr!r}"
    assert "Traceback" not in p.stderr
    assert game in p.stderr


def test_pool_lists_the_meta_training_pool():
    from leap_rl.envs import num_actions

    p = run_script("pool")
    assert p.returncode == 0, f"exit code {p.returncode}; stderr: {p.stderr[-2000:]!r}"
    assert "Traceback" not in p.stderr
    games = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^\s+([a-z0-9_]+)\s+(\d+) actions\s*$", line)
        if m:
            games[m.group(1)] = int(m.group(2))
    assert games, p.stdout
    assert "breakout" not in games and "space_invaders" not in games
    for must in ("pong", "qbert", "ms_pacman", "air_raid", "up_n_down", "wizard_of_wor"):
        assert must in games, f"{must} missing from the pool: {sorted(games)}"
    for game, printed in games.items():
        assert printed == num_actions(game), game
        assert num_actions(game) <= 10, game
    # 18-action games are out.
    for big in ("seaquest", "alien", "gravitar", "road_runner", "krull", "kung_fu_master"):
        assert big not in games


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize("command", ["task", "train"])
def test_unknown_set_key(cli, tmp_path, command):
    run_dir = tmp_path / "run"
    extra = ("--game", "pong", "--env-steps", "100") if command == "task" else ("--runtime", "sequential")
    rc, _out, err = cli(command, *extra, "--run-dir", str(run_dir), "--set", "a2c.lrr=1e-4")
    line = assert_one_line_error(rc, err)
    assert "a2c.lrr" in line
    assert not run_dir.exists()


@pytest.mark.parametrize("command", ["task", "train"])
def test_wrong_type_in_set(cli, tmp_path, command):
    run_dir = tmp_path / "run"
    extra = ("--game", "pong", "--env-steps", "100") if command == "task" else ("--runtime", "sequential")
    rc, _out, err = cli(command, *extra, "--run-dir", str(run_dir), "--set", "env.num_envs=many")
    line = assert_one_line_error(rc, err)
    assert "env.num_envs" in line
    assert not run_dir.exists()


def test_bad_literal_in_set(cli, tmp_path):
    rc, _out, err = cli("train", "--runtime", "sequential", "--run-dir", str(tmp_path / "r"),
                        "--set", "leap.metric=area")
    assert "leap.metric" in assert_one_line_error(rc, err)


def test_bad_config_file(cli, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[meta]\nmeta_steps = -3\n")
    rc, _out, err = cli("train", "--runtime", "sequential", "--run-dir", str(tmp_path / "r"), "--config", str(f))
    assert "meta.meta_steps" in assert_one_line_error(rc, err)
    rc, _out, err = cli("train", "--runtime", "sequential", "--run-dir", str(tmp_path / "r"),
                        "--config", str(tmp_path / "missing.toml"))
    assert "missing.toml" in assert_one_line_error(rc, err)


def test_unknown_game_in_meta_games(cli, tmp_path):
    rc, _out, err = cli("train", "--runtime", "sequential", "--run-dir", str(tmp_path / "r"),
                        "--set", 'meta.games=["pong", "seaquestt"]')
    assert "seaquestt" in assert_one_line_error(rc, err)


@pytest.mark.parametrize("steps", ["-5", "0"])
def test_non_positive_env_steps(cli, tmp_path, steps):
    run_dir = tmp_path / "run"
    rc, _out, err = cli("task", "--game", "pong", "--env-steps", steps, "--run-dir", str(run_dir))
    line = assert_one_line_error(rc, err)
    assert "env-steps" in line
    assert not run_dir.exists()


def test_non_integer_env_steps(cli, tmp_path):
    rc, _out, err = cli("task", "--game", "pong", "--env-steps", "lots", "--run-dir", str(tmp_path / "r"))
    assert "env-steps" in assert_one_line_error(rc, err)


def test_negative_seed(cli, tmp_path):
    rc, _out, err = cli("train", "--runtime", "sequential", "--run-dir", str(tmp_path / "r"), "--seed", "-1")
    assert "seed" in assert_one_line_error(rc, err)


# ----------------------------------------------------------------------------- run directories

def test_run_dir_under_a_regular_file(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    rc, _out, err = cli("task", "--game", "pong", "--env-steps", "100", "--run-dir", str(blocker / "run"))
    line = assert_one_line_error(rc, err)
    assert "run-dir" in line
    assert blocker.read_text() == "not a directory\n"


def test_run_dir_is_a_regular_file(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me\n")
    rc, _out, err = cli("train", "--runtime", "sequential", "--run-dir", str(blocker))
    assert "run-dir" in assert_one_line_error(rc, err)
    assert blocker.read_text() == "keep me\n"


def _as_unprivileged_user() -> list[str]:
    """A command prefix that drops root (who may write anywhere) to the user nobody, so that a
    read-only directory is read-only for the command; nothing when not root. CI runs as root."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    pytest.skip("running as root without setpriv or runuser to drop privileges")


@pytest.mark.parametrize("target", ["ro/run", "ro"], ids=["new-dir-under-read-only", "read-only-dir"])
def test_run_dir_in_a_read_only_dir(target):
    """The real command line, as a user who may not write there (the parent must be readable by
    that user, so not pytest's private tmp_path): exit 2, one line, nothing created."""
    prefix = _as_unprivileged_user()
    base = Path(tempfile.mkdtemp(prefix="leap-rl-ro-"))
    try:
        base.chmod(0o755)
        ro = base / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        exe = [str(LEAP_RL)] if LEAP_RL.exists() else [sys.executable, "-m", "leap_rl.cli"]
        p = subprocess.run(prefix + exe + ["task", "--game", "pong", "--env-steps", "100", "--preset", "ci",
                                           "--run-dir", str(base / target)],
                           capture_output=True, text=True, cwd=REPO, env=_env(), timeout=SUBPROCESS_TIMEOUT)
        line = assert_one_line_error(p.returncode, p.stderr)
        assert "run-dir" in line and "not writable" in line, line
        assert list(ro.iterdir()) == []
    finally:
        (base / "ro").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("command", ["task", "train-sequential", "train-ray"])
def test_existing_run_is_not_overwritten(cli, tmp_path, command):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = '{"event": "meta_step", "version": 1}\n'
    config = "# the old run's config\n"
    (run_dir / "metrics.jsonl").write_text(metrics)
    (run_dir / "config.toml").write_text(config)
    if command == "task":
        argv = ("task", "--game", "pong", "--env-steps", "100")
    elif command == "train-sequential":
        argv = ("train", "--runtime", "sequential")
    else:
        argv = ("train",)
    rc, _out, err = cli(*argv, "--run-dir", str(run_dir))
    line = assert_one_line_error(rc, err)
    assert "run-dir" in line or str(run_dir) in line
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert (run_dir / "config.toml").read_text() == config
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.toml", "metrics.jsonl"]


def test_existing_checkpoint_is_not_overwritten(cli, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"old")
    rc, _out, err = cli("train", "--runtime", "sequential", "--run-dir", str(run_dir))
    assert_one_line_error(rc, err)
    assert (run_dir / "checkpoint.pt").read_bytes() == b"old"
    assert not (run_dir / "config.toml").exists()


def test_resume_an_empty_dir(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _out, err = cli("train", "--resume", "--run-dir", str(empty))
    line = assert_one_line_error(rc, err)
    assert str(empty) in line
    assert list(empty.iterdir()) == []


def test_resume_a_missing_dir(cli, tmp_path):
    missing = tmp_path / "nope"
    rc, _out, err = cli("train", "--resume", "--runtime", "sequential", "--run-dir", str(missing))
    assert_one_line_error(rc, err)
    assert not missing.exists()


def test_usage_errors_are_one_line(cli, tmp_path):
    for argv in (("frobnicate",), ("task", "--game", "pong"), ("train",), ("train", "--runtime", "spark",
                                                                          "--run-dir", str(tmp_path))):
        rc, _out, err = cli(*argv)
        assert_one_line_error(rc, err)


def test_help_imports_neither_torch_nor_ray():
    """`leap-rl --help` and every subcommand's --help are argument parsing only: no torch, no Ray
    (bench's options live in bench/__init__.py, away from the measurements that need torch)."""
    code = ("import sys\nfrom leap_rl.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["task", "train-sequential", "pretrain", "evaluate"])
def test_the_commands_that_train_a2c_themselves_refuse_inner_rllib(cli, tmp_path, command):
    """Only `leap-rl train` on Ray dispatches to RLlib; the others say so instead of quietly
    training A2C, and make no run directory."""
    run_dir = tmp_path / "run"
    rllib = ("--set", 'inner="rllib"')
    argv = {"task": ("task", "--preset", "ci", "--game", "pong", "--env-steps", "100", "--run-dir", str(run_dir)),
            "train-sequential": ("train", "--preset", "ci", "--runtime", "sequential", "--run-dir", str(run_dir)),
            "pretrain": ("pretrain", "--preset", "ci", "--run-dir", str(run_dir)),
            "evaluate": ("evaluate", "--preset", "ci", "--random", "--games", "pong", "--env-steps", "100",
                         "--out", str(run_dir))}[command]
    rc, _out, err = cli(*argv, *rllib)
    line = assert_one_line_error(rc, err)
    assert "inner = 'rllib' runs only under `leap-rl train` on the Ray runtime" in line
    assert not run_dir.exists()
