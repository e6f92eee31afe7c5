"""``leap-rl evaluate`` on real ALE games with tiny budgets, and its statistics.

Two tiny meta-training runs (Leap with the ci preset's estimator, and Reptile: leap.loss=false)
are made with the real command line; the evaluation itself runs in-process (``main``) to save
the interpreter start-ups. Games are cut at 160 frames so that short agents finish games.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from leap_rl import evaluate
from leap_rl.evaluate import permutation_p, t_quantile, t_two_sided_p, welch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
GAME = "breakout"
SEEDS = 2
INITS = ("leap", "reptile", "random")
TINY_META = ("--preset", "ci", "--set", "meta.meta_steps=2", "--set", "meta.tasks_per_step=1",
             "--set", "meta.env_steps_per_task=40")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli_has_evaluate() -> bool:
    from leap_rl.cli import build_parser
    return "evaluate" in build_parser()._subparsers._group_actions[0].choices


def call(*argv: str) -> int:
    """``leap-rl evaluate ARGV`` in-process: through the CLI once it is wired, else the module."""
    if _cli_has_evaluate():
        from leap_rl.cli import main
        rc = main(["evaluate", *argv])
    else:
        rc = evaluate.main(list(argv))
    torch.set_num_threads(1)
    return rc


def eval_args(meta: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--init", f"leap={meta['leap']}", "--init", f"reptile={meta['reptile']}/checkpoint.pt",
            "--random", "--games", GAME, "--seeds", str(SEEDS), "--env-steps", "400",
            "--preset", "ci", "--set", "env.max_episode_frames=160", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def meta(tmp_path_factory) -> dict[str, Path]:
    """A Leap and a Reptile meta-training run (two processes side by side)."""
    root = tmp_path_factory.mktemp("meta")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    runs = {"leap": (), "reptile": ("--set", "leap.loss=false")}
    procs = {name: subprocess.Popen([sys.executable, "-m", "leap_rl.cli", "train", "--runtime", "sequential",
                                     *TINY_META, *extra, "--run-dir", str(root / name)],
                                    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, extra in runs.items()}
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=600)  # a generous limit: a loaded 2-core machine is slow
        assert proc.returncode == 0, output[-3000:]
    return {name: root / name for name in runs}


@pytest.fixture(scope="module")
def evaluation(meta, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "out"
    assert call(*eval_args(meta, out)) == 0
    return out


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


# ------------------------------------------------------------------------------ the report

def test_every_game_init_seed_was_trained(evaluation):
    r = results(evaluation)
    assert r["inits"] == list(INITS) and r["games"] == [GAME] and len(r["seeds"]) == SEEDS
    assert len(set(r["seeds"])) == SEEDS
    for init in INITS:
        for i in range(SEEDS):
            row = json.loads((evaluation / "runs" / f"{GAME}__{init}__s{i}.json").read_text())
            assert row["env_steps_done"] == 400 and row["seed"] == r["seeds"][i]
            assert len(row["progress"]) >= 10  # log_every derived from --points
            assert row["episodes"] > 0  # 160-frame games end within 400 env steps
        g = r["per_game"][GAME]["inits"][init]
        assert len(g["auc"]["per_seed"]) == SEEDS and len(g["final"]["per_seed"]) == SEEDS
        assert g["auc"]["mean"] is not None and g["final"]["mean"] is not None
        assert len(g["curve"]["mean"]) == len(r["per_game"][GAME]["grid"])
        assert 0.0 <= r["inits_info"][init]["dead_unit_fraction"] <= 1.0
    # Leap and Reptile come from run directories with meta_step rows: one point per version.
    for init in ("leap", "reptile"):
        curve = r["inits_info"][init]["meta_curve"]
        assert [c["version"] for c in curve] == [1, 2]
        assert all(c["path_length"] > 0 for c in curve)
    assert r["inits_info"]["reptile"]["estimator"].startswith("Reptile")
    assert r["inits_info"]["leap"]["estimator"].startswith("Leap")


def test_matched_seeds_share_everything_but_phi(evaluation):
    """The random baseline of seed i is initial_encoder(model, seed_i); Leap's φ is one tensor."""
    rows = {init: json.loads((evaluation / "runs" / f"{GAME}__{init}__s0.json").read_text()) for init in INITS}
    assert len({r["seed"] for r in rows.values()}) == 1
    assert len({r["phi_sha"] for r in rows.values()}) == 3
    s1 = json.loads((evaluation / "runs" / f"{GAME}__leap__s1.json").read_text())
    assert s1["phi_sha"] == rows["leap"]["phi_sha"]


def test_pairwise_comparisons(evaluation):
    pairs = results(evaluation)["per_game"][GAME]["pairs"]
    assert {(p["a"], p["b"]) for p in pairs} == {("leap", "reptile"), ("leap", "random"), ("reptile", "random")}
    for p in pairs:
        for metric in ("auc", "final"):
            c = p[metric]
            assert c["n_a"] == SEEDS and c["n_b"] == SEEDS and c["diff"] is not None
            assert 0.0 < c["p_permutation"] <= 1.0  # 2 vs 2 seeds: at least 2/6
            if c["ci95"] is not None:
                assert c["ci95"][0] <= c["diff"] <= c["ci95"][1]


def test_markdown_lists_every_init_and_pair(evaluation):
    md = (evaluation / "results.md").read_text()
    assert f"## {GAME}" in md
    for init in INITS:
        assert f"\n| {init} |" in md
    for a, b in (("leap", "reptile"), ("leap", "random"), ("reptile", "random")):
        assert f"| {a} − {b} |" in md
    assert "only 2 seed(s)" in md


def test_plots_are_png(evaluation):
    for name in ("curves.png", "meta.png"):
        data = (evaluation / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name


# ------------------------------------------------------------------------------ resuming

def test_resume_trains_only_what_is_missing(meta, evaluation, capsys):
    """An agent lost (or never trained) is trained again; the others are left alone."""
    runs = evaluation / "runs"
    missing = [runs / f"{GAME}__random__s1.json"]
    old = [json.loads(p.read_text()) for p in missing]
    for p in missing:
        p.unlink()
    # Run files are written to a temporary file and renamed, so a rewritten file has a new inode
    # whatever the clock's resolution: no need to wait for the mtime to move.
    def identity(p: Path) -> tuple[int, int]:
        st = p.stat()
        return st.st_ino, st.st_mtime_ns

    before = {p.name: identity(p) for p in runs.glob("*.json")}
    assert call(*eval_args(meta, evaluation, "--resume")) == 0
    out = capsys.readouterr().out
    assert "5 of 6 agents already trained, 1 to go" in out
    after = {p.name: identity(p) for p in runs.glob("*.json")}
    assert all(p.exists() for p in missing)
    assert {k: after[k] for k in before} == before
    # A retrained agent is the same agent (same seed, same φ, one thread): the same games.
    for p, o in zip(missing, old):
        new = json.loads(p.read_text())
        assert new["phi_sha"] == o["phi_sha"]
        assert new["episode_returns"] == o["episode_returns"]
    assert len(results(evaluation)["per_game"][GAME]["inits"]["random"]["final"]["per_seed"]) == SEEDS


def test_resume_with_other_settings_is_refused(meta, evaluation, capsys):
    rc = call(*eval_args(meta, evaluation, "--resume", "--set", "a2c.lr=1e-3"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "a2c.lr" in err and "Traceback" not in err


def test_existing_out_without_resume_is_refused(meta, evaluation, capsys):
    before = (evaluation / "results.json").stat().st_mtime_ns
    assert call(*eval_args(meta, evaluation)) == 2
    err = capsys.readouterr().err
    assert "already holds an evaluation" in err and "--resume" in err
    assert (evaluation / "results.json").stat().st_mtime_ns == before


def test_resume_of_nothing_is_refused(meta, tmp_path, capsys):
    assert call(*eval_args(meta, tmp_path / "new", "--resume")) == 2
    assert "holds no evaluation" in capsys.readouterr().err


# ------------------------------------------------------------------------------ bad input

def test_bad_init_path(meta, tmp_path, capsys):
    out = tmp_path / "out"
    rc = call("--init", f"leap={tmp_path / 'nowhere'}", "--games", GAME, "--env-steps", "100",
              "--preset", "ci", "--out", str(out))
    assert rc == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_init_raises_config_error(tmp_path):
    from leap_rl.config import ConfigError
    from leap_rl.usage import UsageParser
    parser = UsageParser(prog="t")
    evaluate.add_arguments(parser)
    args = parser.parse_args(["--init", f"x={tmp_path}", "--games", GAME, "--env-steps", "100",
                              "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="checkpoint"):
        evaluate.run(args)


def test_encoder_size_mismatch_is_named(meta, tmp_path, capsys):
    rc = call("--init", f"leap={meta['leap']}", "--games", GAME, "--env-steps", "100", "--preset", "ci",
              "--set", 'model.network="nature"', "--out", str(tmp_path / "out"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "leap" in err and "model.network" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["--games", GAME], "nothing to evaluate"),
    (["--random", "--init", "random=X", "--games", GAME], "used twice"),
    (["--random", "--games", "seaquestt"], "seaquestt"),
    (["--random", "--games", GAME, "--seeds", "0"], "--seeds"),
])
def test_other_bad_input(tmp_path, capsys, argv, words):
    assert call(*argv, "--env-steps", "100", "--out", str(tmp_path / "out")) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ statistics

def _t_tail_by_quadrature(t: float, df: float) -> float:
    xs = np.linspace(abs(t), abs(t) + 400.0, 400_001)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return 2 * np.trapezoid(c * (1 + xs ** 2 / df) ** (-(df + 1) / 2), xs)


@pytest.mark.parametrize("t, df", [(2.0, 5.0), (1.3, 2.5), (4.0, 30.0), (0.2, 12.0)])
def test_t_tail_matches_quadrature(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(_t_tail_by_quadrature(t, df), abs=2e-6)


def test_t_quantiles_match_tables():
    for df, q in ((1, 12.706), (2, 4.303), (5, 2.571), (30, 2.042), (1e6, 1.960)):
        assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-3)


def test_welch_by_hand():
    w = welch([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert w["diff"] == -3.0
    assert w["t"] == pytest.approx(-3 / math.sqrt(2.5))
    assert w["df"] == pytest.approx(6.25 / 1.0625)
    assert w["p_welch"] == pytest.approx(0.1075, abs=1e-3)
    half = t_quantile(0.975, w["df"]) * math.sqrt(2.5)
    assert w["ci95"] == pytest.approx([-3 - half, -3 + half])
    assert welch([1.0], [2.0, 3.0])["p_welch"] is None  # one seed: no variance estimate
    assert welch([1.0, 1.0], [2.0, 2.0])["p_welch"] is None  # no spread: no test


def test_permutation_exact():
    assert permutation_p([1, 2], [3, 4]) == pytest.approx(2 / 6)
    assert permutation_p([1, 2, 3], [1, 2, 3]) == 1.0
    assert permutation_p(list(range(6)), list(range(100, 106))) == pytest.approx(2 / math.comb(12, 6))
    # Too many splits to enumerate: Monte Carlo, never 0.
    assert 0 < permutation_p(list(range(10)), list(range(100, 110))) < 1e-3


# ------------------------------------------------------------------------------ analyse on known numbers

def _write_run(out: Path, game: str, init: str, i: int, curve, final, episodes, path_length, diverged=False):
    path = evaluate.run_file(out, game, init, i)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"progress": [{"env_steps": s, "episode_return_mean": r, "episodes": 0} for s, r in curve],
           "final_return_mean": final, "episodes": episodes, "path_length": path_length,
           "diverged": diverged, "seconds": 2.0}
    path.write_text(json.dumps(row))


def test_analyse_on_hand_made_runs_gives_the_numbers_worked_out_by_hand(tmp_path):
    """Two inits, three seeds, a grid of three points, with gaps (no game finished yet: null;
    a seed with no finished game at all). Every figure below is worked out by hand."""
    from leap_rl.config import preset

    game = "pong"
    plan = evaluate.Plan(preset("ci"), (game,), (evaluate.Init("a", "a-run"), evaluate.Init("b", "b-run")),
                         (11, 22, 33), 300, tmp_path)
    # init a: the curves' means over the grid points where they are defined are 3, 3 and 5.
    _write_run(tmp_path, game, "a", 0, [(100, None), (200, 2.0), (300, 4.0)], 4.0, 3, 1.0)
    _write_run(tmp_path, game, "a", 1, [(100, 1.0), (200, 3.0), (300, 5.0)], 5.0, 4, 2.0)
    _write_run(tmp_path, game, "a", 2, [(100, 0.0), (200, 6.0), (300, 9.0)], 9.0, 5, 3.0)
    # init b: AUCs 2/3 and 2/3; the third seed never finished a game (and diverged).
    _write_run(tmp_path, game, "b", 0, [(100, 0.0), (200, 1.0), (300, 1.0)], 1.0, 2, 4.0)
    _write_run(tmp_path, game, "b", 1, [(100, 0.0), (200, 0.0), (300, 2.0)], 2.0, 2, 5.0)
    _write_run(tmp_path, game, "b", 2, [(100, None), (200, None), (300, None)], None, 0, 6.0, diverged=True)

    g = evaluate.analyse(plan)["per_game"][game]
    assert g["grid"] == [100, 200, 300]
    a, b = g["inits"]["a"], g["inits"]["b"]
    assert a["auc"]["per_seed"] == pytest.approx([3.0, 3.0, 5.0])
    assert a["auc"]["mean"] == pytest.approx(11 / 3) and a["auc"]["sd"] == pytest.approx(math.sqrt(4 / 3))
    assert b["auc"]["per_seed"][:2] == pytest.approx([2 / 3, 2 / 3]) and b["auc"]["per_seed"][2] is None
    assert b["auc"]["n"] == 2 and b["auc"]["mean"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(a["curve"]["mean"], [0.5, 11 / 3, 6.0])
    np.testing.assert_allclose(a["curve"]["min"], [0.0, 2.0, 4.0])
    np.testing.assert_allclose(a["curve"]["max"], [1.0, 6.0, 9.0])
    assert list(a["curve"]["n"]) == [2, 3, 3] and list(b["curve"]["n"]) == [2, 2, 2]
    np.testing.assert_allclose(b["curve"]["mean"], [0.0, 0.5, 1.5])
    assert a["final"]["mean"] == pytest.approx(6.0) and a["final"]["sd"] == pytest.approx(math.sqrt(7))
    assert b["final"]["per_seed"] == [1.0, 2.0, None] and b["final"]["mean"] == pytest.approx(1.5)
    assert a["games_finished"]["mean"] == pytest.approx(4.0)
    assert a["eval_path_length"]["mean"] == pytest.approx(2.0) and b["eval_path_length"]["mean"] == pytest.approx(5.0)
    assert (a["diverged"], b["diverged"]) == (0, 1)
    assert a["seconds"] == pytest.approx(6.0)

    (pair,) = g["pairs"]
    assert (pair["a"], pair["b"]) == ("a", "b")
    auc = pair["auc"]  # a − b: positive, a is the better one
    assert (auc["n_a"], auc["n_b"]) == (3, 2)
    assert auc["diff"] == pytest.approx(3.0)
    # Welch: var(a)/3 = 4/9, var(b) = 0, so se = 2/3, t = 4.5 and df = 2.
    assert auc["t"] == pytest.approx(4.5) and auc["df"] == pytest.approx(2.0)
    assert auc["ci95"] == pytest.approx([3.0 - 4.303 * 2 / 3, 3.0 + 4.303 * 2 / 3], abs=1e-3)
    assert auc["p_welch"] == pytest.approx(1 - 4.5 / math.sqrt(2 + 4.5 ** 2))  # t with 2 df, closed form
    # Of the 10 ways to split {3, 3, 5, 2/3, 2/3} into 3 + 2, only the observed one is as extreme.
    assert auc["p_permutation"] == pytest.approx(0.1)
    fin = pair["final"]
    assert fin["diff"] == pytest.approx(4.5) and (fin["n_a"], fin["n_b"]) == (3, 2)
    assert fin["ci95"][0] < 4.5 < fin["ci95"][1]

    # The report prints the same difference with its sign.
    results = evaluate.analyse(plan)
    results["inits_info"] = {name: {"source": name, "version": None, "estimator": "—",
                                    "dead_unit_fraction": 0.0, "meta_curve": []} for name in ("a", "b")}
    md = evaluate.markdown(results)
    assert "| a − b | 3.00 [" in md and "| 4.50 [" in md
