"""The fine-tuning baseline on real ALE games with tiny budgets (ci preset: 2 meta-steps × 2
tasks × 400 env steps): ``leap-rl pretrain`` trains one encoder through the meta-training tasks
in turn, resumes per task, and ``leap-rl evaluate --init finetune=RUN`` loads that encoder and
reports it as the fine-tuning baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leap_rl.config import preset
from leap_rl.models import initial_encoder
from leap_rl.pretrain import pretrain_tasks
from leap_rl.run_dir import RunDir, load_encoder_file

torch.set_num_threads(1)

CI = ("--preset", "ci")


def cli(*argv: str) -> int:
    from leap_rl.cli import main
    rc = main(list(argv))
    torch.set_num_threads(1)
    return rc


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ft") / "run"
    assert cli("pretrain", *CI, "--run-dir", str(run_dir)) == 0
    return run_dir


def test_pretrain_goes_through_the_meta_training_tasks_with_their_budget(pretrained):
    cfg = preset("ci")
    state = checkpoint(pretrained)
    record = state["pretrain"]
    assert state["kind"] == "pretrain" and state["version"] == record["tasks_done"] == 4
    m = cfg.meta
    assert record["env_steps_total"] == m.meta_steps * m.tasks_per_step * m.env_steps_per_task == 1600
    # The tasks of sync meta-training, meta-step by meta-step: same games, seeds and budgets.
    from leap_rl.schedule import meta_training_games, plan_tasks
    expected = [t for v in range(m.meta_steps) for t in plan_tasks(cfg, meta_training_games(cfg), v)]
    assert [(t["game"], t["seed"], t["env_steps"]) for t in record["tasks"]] == \
           [(t.game, t.seed, t.env_steps) for t in expected] == \
           [(t.game, t.seed, t.env_steps) for t in pretrain_tasks(cfg)]
    rows = RunDir(pretrained, tensorboard=False).rows("pretrain_task")
    assert [r["task"] for r in rows] == [0, 1, 2, 3] and not any(r["diverged"] for r in rows)
    assert RunDir(pretrained, tensorboard=False).rows("progress")


def test_pretrained_encoder_moved_from_phi0_and_is_what_init_loads(pretrained):
    cfg = preset("ci")
    phi = load_encoder_file(pretrained)
    phi0 = initial_encoder(cfg.model, cfg.seed)
    assert phi.shape == phi0.shape and torch.isfinite(phi).all()
    assert not torch.equal(phi, phi0)
    assert torch.equal(phi, checkpoint(pretrained)["learner"]["phi"])


def test_the_first_task_starts_from_phi0_and_hands_its_encoder_on(tmp_path):
    """One task by hand (TaskRunner from φ_0, keep_encoder) gives the encoder a 1-task run holds."""
    from leap_rl.task import TaskRunner
    cfg = preset("ci")
    run_dir = tmp_path / "one"
    assert cli("pretrain", *CI, "--tasks", "1", "--run-dir", str(run_dir)) == 0
    result = TaskRunner(cfg).run(pretrain_tasks(cfg)[0], initial_encoder(cfg.model, cfg.seed), keep_encoder=True)
    assert torch.equal(load_encoder_file(run_dir), result.encoder)
    assert checkpoint(run_dir)["pretrain"]["tasks_done"] == 1


def test_keep_encoder_is_off_by_default():
    from leap_rl.messages import TaskSpec
    from leap_rl.task import TaskRunner
    result = TaskRunner(preset("ci")).run(TaskSpec("t", "pong", 0, seed=1, env_steps=20), None)
    assert result.encoder is None


def test_resume_continues_to_the_same_encoder(pretrained, tmp_path):
    """Stopped after 2 of 4 tasks, then resumed: the same encoder as the uninterrupted run, and
    each task trained once."""
    run_dir = tmp_path / "resumed"
    assert cli("pretrain", *CI, "--tasks", "2", "--run-dir", str(run_dir)) == 0
    assert checkpoint(run_dir)["pretrain"]["tasks_done"] == 2
    assert cli("pretrain", "--resume", "--run-dir", str(run_dir)) == 0
    assert checkpoint(run_dir)["pretrain"]["tasks_done"] == 4
    assert torch.equal(load_encoder_file(run_dir), load_encoder_file(pretrained))
    rows = RunDir(run_dir, tensorboard=False).rows("pretrain_task")
    assert [r["task"] for r in rows] == [0, 1, 2, 3]


def test_pretrain_bad_input_is_one_line_and_exit_2(pretrained, tmp_path, capsys):
    assert cli("pretrain", *CI, "--run-dir", str(pretrained)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli("pretrain", *CI, "--tasks", "0", "--run-dir", str(tmp_path / "x")) == 2
    assert "--tasks" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert cli("pretrain", "--resume", "--run-dir", str(tmp_path / "none")) == 2
    err = capsys.readouterr().err
    assert "holds no run" in err and len(err.strip().splitlines()) == 1


def test_evaluate_reports_the_pretrain_run_as_the_finetune_baseline(pretrained, tmp_path):
    out = tmp_path / "eval"
    assert cli("evaluate", "--init", f"finetune={pretrained}", "--random", "--games", "pong", "--seeds", "1",
               "--env-steps", "40", *CI, "--out", str(out)) == 0
    results = json.loads((out / "results.json").read_text())
    info = results["inits_info"]["finetune"]
    assert info["kind"] == "pretrain" and info["version"] == 4
    assert info["estimator"].startswith("fine-tuning baseline: one encoder through 4 of 4 meta-training tasks")
    assert "| finetune |" in (out / "results.md").read_text()
    from leap_rl.evaluate.plan import _phi_sha
    row = json.loads((out / "runs" / "pong__finetune__s0.json").read_text())
    assert row["phi_sha"] == _phi_sha(load_encoder_file(pretrained).float())


def test_the_finetune_name_takes_only_a_pretrain_run(tmp_path, capsys):
    bare = tmp_path / "phi.pt"
    torch.save(initial_encoder(preset("ci").model, 3), bare)
    assert cli("evaluate", "--init", f"finetune={bare}", "--games", "pong", "--env-steps", "40", *CI,
               "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "leap-rl pretrain" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_evaluate_writes_transfer_json_for_the_four_inits(pretrained, tmp_path):
    """random, reptile, finetune and leap on a flavoured and a plain game, one seed each: the
    file has the issue's shape and the per-seed numbers of results.json."""
    cfg = preset("ci")
    for name, seed in (("leap", 5), ("reptile", 6)):
        torch.save(initial_encoder(cfg.model, seed), tmp_path / f"{name}.pt")
    out, path = tmp_path / "eval", tmp_path / "docs" / "transfer.json"
    games = "pong:difficulty=1,breakout"
    assert cli("evaluate", "--init", f"finetune={pretrained}", "--init", f"leap={tmp_path / 'leap.pt'}",
               "--init", f"reptile={tmp_path / 'reptile.pt'}", "--random", "--games", games, "--seeds", "1",
               "--env-steps", "40", *CI, "--set", "env.max_episode_frames=24", "--out", str(out),
               "--transfer-json", str(path)) == 0
    data = json.loads(path.read_text())
    results = json.loads((out / "results.json").read_text())
    assert data["games"] == ["pong:difficulty=1", "breakout"]
    assert list(data["inits"]) == ["random", "reptile", "finetune", "leap"]
    for name, by_game in data["inits"].items():
        assert list(by_game) == data["games"]
        for game, metrics in by_game.items():
            assert set(metrics) == {"auc", "final"} and len(metrics["auc"]) == len(metrics["final"]) == 1
            assert metrics["auc"] == results["per_game"][game]["inits"][name]["auc"]["per_seed"]
            assert metrics["auc"][0] is not None  # 24-frame games (6 agent steps) end within 10 steps per env
