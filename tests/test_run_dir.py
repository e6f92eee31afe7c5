"""Run directories (config, metrics, atomic checkpoints, encoder files), plots made from them,
and ``leap-rl task --init`` reading φ back from one."""

from __future__ import annotations

import dataclasses
import json
import struct

import pytest
import torch

from leap_rl.cli import main
from leap_rl.config import ConfigError, load, preset
from leap_rl.messages import TaskSpec
from leap_rl.models import initial_encoder
from leap_rl.plots import plot_run
from leap_rl.run_dir import CHECKPOINT, CONFIG, METRICS, PREVIOUS_CHECKPOINT, RunDir, load_encoder_file
from leap_rl.task import TaskRunner

torch.set_num_threads(1)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """main() sets the thread count from the config and may setdefault OMP_NUM_THREADS."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- config and metrics

def test_a_run_dir_keeps_its_resolved_config(tmp_path):
    cfg = load("ci", overrides=("a2c.lr=3e-4", 'meta.games=["breakout", "ms_pacman"]', "seed=7"))
    RunDir.create(tmp_path / "run", cfg)
    run, read = RunDir.open_existing(tmp_path / "run")
    assert read == cfg
    assert (tmp_path / "run" / CONFIG).stat().st_mode & 0o777 == 0o644  # readable by everyone
    with pytest.raises(ConfigError, match="holds no"):
        RunDir.open_existing(tmp_path / "elsewhere")


def test_metrics_rows_by_event_with_nan_as_null(tmp_path):
    run = RunDir.create(tmp_path / "run", preset("ci"), tensorboard=False)
    assert run.rows() == []
    run.log({"event": "progress", "env_steps": 20, "episode_return_mean": float("nan")})
    run.log({"event": "meta_step", "version": 1, "path_length": 2.5, "per_game": {"pong": float("inf")}})
    run.log({"event": "progress", "env_steps": 40, "episode_return_mean": -21.0})
    lines = (tmp_path / "run" / METRICS).read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)  # strict JSON: no NaN
    assert [r["env_steps"] for r in run.rows("progress")] == [20, 40]
    assert run.rows("progress")[0]["episode_return_mean"] is None
    assert run.rows("meta_step") == [{"event": "meta_step", "version": 1, "path_length": 2.5,
                                      "per_game": {"pong": None}}]
    assert len(run.rows()) == 3
    assert not (tmp_path / "run" / "tb").exists()


def test_tensorboard_gets_meta_steps_and_progress(tmp_path):
    run = RunDir.create(tmp_path / "run", preset("ci"))
    run.log({"event": "meta_step", "version": 1, "path_length": 2.5})
    run.close()
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoints_are_replaced_whole_and_leave_no_temporary_files(tmp_path):
    run = RunDir.create(tmp_path / "run", preset("ci"), tensorboard=False)
    assert run.load_checkpoint() is None
    first = {"version": 1, "learner": {"phi": torch.arange(4.0)}}
    run.save_checkpoint(first)
    second = {"version": 2, "learner": {"phi": torch.arange(4.0) * 2}}
    run.save_checkpoint(second)
    state = run.load_checkpoint()
    assert state["version"] == 2 and torch.equal(state["learner"]["phi"], second["learner"]["phi"])
    with pytest.raises(Exception):
        run.save_checkpoint({"version": 3, "unpicklable": lambda: None})  # fails while writing
    state = run.load_checkpoint()
    assert state["version"] == 2  # the failed save left the last good checkpoint as it was
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted([CHECKPOINT, PREVIOUS_CHECKPOINT, CONFIG])
    previous = torch.load(tmp_path / "run" / PREVIOUS_CHECKPOINT, weights_only=True)
    assert previous["version"] == 1  # the one the latest replaced


def test_load_encoder_file_reads_runs_checkpoints_and_bare_tensors(tmp_path):
    phi = torch.randn(10)
    run = RunDir.create(tmp_path / "run", preset("ci"), tensorboard=False)
    run.save_checkpoint({"version": 3, "learner": {"phi": phi}})
    assert torch.equal(load_encoder_file(tmp_path / "run"), phi)
    assert torch.equal(load_encoder_file(tmp_path / "run" / CHECKPOINT), phi)
    torch.save(phi * 2, tmp_path / "bare.pt")
    assert torch.equal(load_encoder_file(tmp_path / "bare.pt"), phi * 2)
    with pytest.raises(ConfigError, match="does not exist"):
        load_encoder_file(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a leap_rl checkpoint"):
        load_encoder_file(tmp_path / "junk.pt")
    torch.save(torch.zeros(2, 3), tmp_path / "matrix.pt")
    with pytest.raises(ConfigError, match="1-D"):
        load_encoder_file(tmp_path / "matrix.pt")


# ----------------------------------------------------------------------------- plots

def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])  # IHDR: width, height


def test_plot_of_a_task_run_draws_each_games_scores(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    run = RunDir.create(tmp_path / "run", preset("ci"), tensorboard=False)
    for steps, score in ((100, 1.0), (200, float("nan")), (300, 2.0)):  # nan: no game finished yet
        run.log({"event": "progress", "game": "pong", "env_steps": steps, "episode_return_mean": score})
    run.log({"event": "progress", "game": "qbert", "env_steps": 100, "episode_return_mean": 25.0})
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))  # keep it to look at
    out = plot_run(tmp_path / "run", tmp_path / "x.png", title="t")
    real_close("all")
    assert out == tmp_path / "x.png" and png_size(out)[0] > 0
    (fig,) = figures
    lines = {line.get_label(): line.get_xydata().tolist() for line in fig.axes[0].lines}
    assert lines == {"pong": [[100, 1.0], [300, 2.0]], "qbert": [[100, 25.0]]}
    assert len(fig.axes) == 1  # no meta-steps, no meta panels
    with pytest.raises(ConfigError, match=METRICS):
        plot_run(tmp_path / "empty")


# ----------------------------------------------------------------------------- task --init

def progress_losses(rows):
    return [(r["env_steps"], r["loss"], r["policy_loss"], r["value_loss"], r["entropy"]) for r in rows]


def test_task_init_trains_from_the_encoder_in_a_run(tmp_path, capsys):
    """``leap-rl task --init RUN`` must start from that run's φ: its agent is the one a
    TaskRunner builds from φ with the same seed, loss for loss, and not the random-init one."""
    cfg = preset("ci")
    phi = initial_encoder(cfg.model, seed=5)  # not what seed 0 would draw for the encoder
    meta = RunDir.create(tmp_path / "meta", cfg, tensorboard=False)
    meta.save_checkpoint({"version": 3, "learner": {"phi": phi}})
    args = ["task", "--preset", "ci", "--game", "pong", "--env-steps", "400"]
    assert main([*args, "--init", str(tmp_path / "meta"), "--run-dir", str(tmp_path / "from-phi")]) == 0
    assert main([*args, "--run-dir", str(tmp_path / "random")]) == 0
    capsys.readouterr()
    from_phi = progress_losses(RunDir(tmp_path / "from-phi").rows("progress"))
    random = progress_losses(RunDir(tmp_path / "random").rows("progress"))
    torch.set_num_threads(1)
    rows = []
    TaskRunner(cfg).run(TaskSpec("task", "pong", 0, seed=cfg.seed, env_steps=400), phi, on_progress=rows.append)
    assert len(from_phi) == 2 and from_phi == progress_losses(rows)
    assert [r[0] for r in random] == [r[0] for r in from_phi] and random != from_phi


def test_task_init_of_another_network_is_refused(tmp_path, capsys):
    nature = dataclasses.replace(preset("ci").model, network="nature")
    torch.save(initial_encoder(nature, 0), tmp_path / "nature.pt")
    rc = main(["task", "--preset", "ci", "--game", "pong", "--env-steps", "100",
               "--init", str(tmp_path / "nature.pt"), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--init" in err and "mnih2013" in err
    assert not (tmp_path / "run").exists()
