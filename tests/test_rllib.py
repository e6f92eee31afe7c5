"""Leap over RLlib (issue 11): real RLlib PPO on real ALE games, tiny budgets.

One recorded PPO task (module fixture) backs the Learner tests: its Learner records every
(f, θ, g) it hands the PathAccumulator, and keeps a reference to itself so that its optimizer
can be read afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib

import numpy as np
import pytest
import ray
import torch

from actors.rllib_inner.env import GameScores, env_config, make_env
from actors.rllib_inner.learner import LEARNERS, LeapPPOTorchLearner
from actors.rllib_inner.module import encoder_parameters
from actors.rllib_inner.runner import RLlibTaskRunner, check_settings
from leap_rl.config import ConfigError, load
from leap_rl.envs import EpisodeTracker, make_vec_env
from leap_rl.leap import PathAccumulator
from leap_rl.messages import TaskSpec
from leap_rl.models import ActorCritic, initial_encoder

torch.set_num_threads(1)
pytestmark = pytest.mark.slow

GAME = "pong"
TINY_CLIP = 1e-3
"""grad_clip of the recorded task: every raw encoder gradient is far larger, so a gradient read
after clipping (global norm ≤ this) would show."""


def rllib_config(*overrides: str):
    return load("ci", overrides=('inner="rllib"', *overrides))


class RecordingLearner(LeapPPOTorchLearner):
    """The Leap PPO Learner, recording each point it observes (copies: the buffers are reused)."""

    points: list[tuple[float, torch.Tensor, torch.Tensor]] = []
    instances: list["RecordingLearner"] = []

    def build(self) -> None:
        super().build()
        RecordingLearner.instances.append(self)

    def _leap_observe(self, loss, theta, grad) -> None:
        RecordingLearner.points.append((loss, theta.clone(), grad.clone()))
        super()._leap_observe(loss, theta, grad)


@pytest.fixture(scope="module")
def local_ray():
    """A Ray on loopback, as the driver starts one (RLlib would otherwise start its own)."""
    from learner.driver import _init_ray
    started = _init_ray(rllib_config(), None, False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def recorded(local_ray):
    RecordingLearner.points.clear()
    RecordingLearner.instances.clear()
    cfg = rllib_config(f"rllib.settings.grad_clip={TINY_CLIP}")
    phi = initial_encoder(cfg.model, seed=3)
    runner = RLlibTaskRunner(cfg, learner_class=RecordingLearner)
    segments, rows = [], []
    result = runner.run(TaskSpec("t0", GAME, 0, seed=5, env_steps=300), phi, segments.append,
                        rows.append, keep_encoder=True)
    return dict(cfg=cfg, phi=phi, result=result, segments=segments, rows=rows,
                points=list(RecordingLearner.points), learner=RecordingLearner.instances[-1])


def test_streamed_vector_equals_a_path_accumulator_fed_the_recorded_points(recorded):
    cfg, points, segments = recorded["cfg"], recorded["points"], recorded["segments"]
    assert len(segments) >= 2 and segments[-1].final and not any(s.final for s in segments[:-1])
    reference = PathAccumulator(points[0][1].numel(), cfg.leap)
    for loss, theta, grad in points:
        reference.observe(loss, theta, grad)
    assert reference.stats().increments == len(points) - 1
    streamed = torch.stack([s.vector for s in segments]).sum(0)
    torch.testing.assert_close(streamed, reference.flush(), rtol=1e-5, atol=1e-6)
    assert sum(s.increments for s in segments) == len(points) - 1
    assert [s.index for s in segments] == list(range(len(segments)))


@pytest.mark.parametrize("algorithm", ["APPO", "IMPALA"])
def test_appo_and_impala_stream_what_their_learner_saw(local_ray, algorithm):
    class Recording(LEARNERS[algorithm]):
        points: list[tuple[float, torch.Tensor, torch.Tensor]] = []

        def _leap_observe(self, loss, theta, grad) -> None:
            Recording.points.append((loss, theta.clone(), grad.clone()))
            super()._leap_observe(loss, theta, grad)

    cfg = rllib_config(f'rllib.algorithm="{algorithm}"')
    phi = initial_encoder(cfg.model, seed=3)
    segments = []
    result = RLlibTaskRunner(cfg, learner_class=Recording).run(
        TaskSpec("t0", GAME, 0, seed=5, env_steps=200), phi, segments.append)
    points = Recording.points
    assert len(points) == result.updates >= 3 and torch.equal(points[0][1], phi)
    reference = PathAccumulator(phi.numel(), cfg.leap)
    for loss, theta, grad in points:
        reference.observe(loss, theta, grad)
    streamed = torch.stack([s.vector for s in segments]).sum(0)
    torch.testing.assert_close(streamed, reference.flush(), rtol=1e-5, atol=1e-6)


def test_every_minibatch_step_is_one_point_of_the_path(recorded):
    points, learner = recorded["points"], recorded["learner"]
    optimizer = learner.get_optimizer()
    steps = {int(optimizer.state[p]["step"]) for p in encoder_parameters(learner.module["default_policy"])}
    assert steps == {len(points)}, "one point per optimizer step"
    assert recorded["result"].updates == len(points)
    cfg = recorded["cfg"]
    settings = cfg.rllib.algorithm_settings
    # several epochs of several minibatches per iteration: more points than iterations
    per_iteration = settings["num_epochs"] * settings["train_batch_size_per_learner"] // settings["minibatch_size"]
    assert len(points) >= per_iteration * 2


def test_leap_reads_the_raw_gradient_before_clipping(recorded):
    norms = [float(torch.linalg.vector_norm(g)) for _, _, g in recorded["points"]]
    assert min(norms) > 10 * TINY_CLIP


def test_theta_is_read_before_the_step(recorded):
    points = recorded["points"]
    assert torch.equal(points[0][1], recorded["phi"]), "the first point is φ itself"
    for (_, before, _), (_, after, _) in zip(points, points[1:]):
        assert not torch.equal(before, after), "each point follows one optimizer step"
    final = recorded["result"].encoder
    assert not torch.equal(points[-1][1], final), "the last point is before the last step"


def test_the_rllib_module_is_leap_rls_network_with_phi_and_the_seeds_heads(recorded):
    cfg, learner = recorded["cfg"], recorded["learner"]
    module = learner.module["default_policy"]
    torch.manual_seed(5)  # the task's seed, as TaskRunner builds its agent
    reference = ActorCritic(cfg.model, num_actions=6)
    ref_names = [n for n, _ in reference.named_parameters()]
    assert [n.removeprefix("net.") for n, _ in module.named_parameters()] == ref_names
    # heads as the A2C path builds them for this seed (they trained since: compare a fresh build)
    fresh = type(module)(observation_space=module.observation_space, action_space=module.action_space,
                         model_config=module.model_config)
    torch.testing.assert_close(fresh.net.policy.weight, reference.policy.weight, rtol=0, atol=0)
    torch.testing.assert_close(fresh.net.value.weight, reference.value.weight, rtol=0, atol=0)
    flat = torch.cat([p.detach().reshape(-1) for p in encoder_parameters(fresh)])
    assert torch.equal(flat, recorded["phi"])


def test_progress_rows_have_the_a2c_paths_fields(recorded):
    rows = recorded["rows"]
    assert rows and rows[-1]["env_steps"] == recorded["result"].env_steps >= 300
    assert rows[-1]["inner"] == "rllib:PPO"
    for key in ("task_id", "game", "env_steps", "updates", "episodes", "episode_return_mean", "fps",
                "loss", "policy_loss", "value_loss", "entropy"):
        assert key in rows[-1]
    assert np.isfinite(rows[-1]["loss"])


def test_rllib_env_gives_the_a2c_paths_frames_and_clipped_rewards():
    cfg = rllib_config()
    ours = make_vec_env("breakout", cfg.env)
    theirs = make_env({**env_config("breakout", cfg.env, cfg.a2c), "num_envs": cfg.env.num_envs})
    a, _ = ours.reset(seed=11)
    b, _ = theirs.reset(seed=11)
    assert np.array_equal(a, b) and a.shape == (cfg.env.num_envs, 4, 84, 84)
    rng = np.random.default_rng(0)
    rewarded = lives_lost = 0
    try:
        # Both autoreset modes step identically through life losses (the game goes on) until
        # the first game over, after which NextStep spends a step on the reset.
        while True:
            actions = rng.integers(0, ours.single_action_space.n, cfg.env.num_envs)
            a, ra, ta, ua, info_a = ours.step(actions)
            b, rb, tb, ub, info_b = theirs.step(actions)
            assert np.array_equal(np.sign(ra), rb) and np.array_equal(ta, tb) and np.array_equal(ua, ub)
            rewarded += int((ra != 0).sum())
            lives_lost += int(ta.sum())
            game_over = (tb & (info_b["lives"] == 0)) | ub
            if game_over.any():  # SameStep returns the reset frame, its last one in final_obs
                assert np.array_equal(info_a["final_obs"][game_over], b[game_over])
                assert np.array_equal(a[~game_over], b[~game_over])
                break
            assert np.array_equal(a, b)
        assert rewarded > 0 and lives_lost > 1, "rewards and life losses were compared"
    finally:
        ours.close()
        theirs.close()


def test_game_scores_match_the_a2c_paths_scores_of_whole_games():
    """The first whole game (life losses inside it): GameScores under NextStep and
    EpisodeTracker under SameStep play the same actions from the same seed until it ends."""
    cfg = rllib_config()
    env_cfg = dataclasses.replace(cfg.env, num_envs=1)
    ours = make_vec_env("breakout", env_cfg)
    theirs = make_env({**env_config("breakout", env_cfg, cfg.a2c), "num_envs": 1})
    ours.reset(seed=1)
    theirs.reset(seed=1)
    tracker = EpisodeTracker(1)
    a2c_scores: list[float] = []
    lives_lost = 0
    rng = np.random.default_rng(1)
    try:
        # the NextStep env closes a game one step later (on its reset step)
        while not a2c_scores or not theirs.scores.finished:
            actions = rng.integers(0, 4, 1)
            if not a2c_scores:
                _, r, te, tr, info = ours.step(actions)
                a2c_scores += [score for score, _ in tracker.update(r, te, tr, info["episode_frame_number"])]
                lives_lost += int(te[0])
            theirs.step(actions)
    finally:
        ours.close()
        theirs.close()
    assert theirs.scores.finished == a2c_scores
    assert a2c_scores[0] > 0 and lives_lost > 1, "a scored game with several lives was compared"


def test_an_unknown_rllib_setting_is_one_config_error_line():
    cfg = rllib_config("rllib.settings.num_epoch=3")
    with pytest.raises(ConfigError) as exc:
        check_settings(cfg)
    msg = str(exc.value)
    assert "rllib.settings.num_epoch" in msg and "PPOConfig" in msg and "\n" not in msg
    check_settings(rllib_config("rllib.settings.num_epochs=3"))  # the real name passes


def test_leap_rl_train_refuses_an_unknown_rllib_setting_before_ray_starts(tmp_path, capsys):
    """Checked before Ray starts and before the run directory exists: not a run whose every
    task fails inside its worker and that ends with exit 0 and φ unchanged."""
    from leap_rl.cli import main
    run_dir = tmp_path / "run"
    rc = main(["train", "--preset", "ci", "--set", 'inner="rllib"', "--set", "rllib.settings.num_epoch=3",
               "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and "rllib.settings.num_epoch" in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists()


@pytest.mark.parametrize("algorithm", ["APPO", "IMPALA"])
def test_the_other_algorithms_defaults_are_their_settings(algorithm):
    check_settings(rllib_config(f'rllib.algorithm="{algorithm}"'))


def test_ci_ppo_meta_training_on_local_ray_moves_phi(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    out = run_cli("train", "--preset", "ci", "--set", 'inner="rllib"', "--set", 'rllib.algorithm="PPO"',
                  "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    cfg = load("ci", overrides=('inner="rllib"',))
    assert tomllib.loads(checkpoint["config"])["inner"] == "rllib"
    assert checkpoint["version"] == cfg.meta.meta_steps
    phi, phi_0 = checkpoint["learner"]["phi"], initial_encoder(cfg.model, cfg.seed)
    assert phi.shape == phi_0.shape
    assert float(torch.linalg.vector_norm(phi - phi_0)) > 0.01 * cfg.meta.lr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("event") == "meta_step"]
    assert len(steps) == cfg.meta.meta_steps
    assert all(r["path_length"] > 0 and r["meta_grad_norm"] > 0 for r in steps)
    progress = [r for r in rows if r.get("event") == "progress"]
    assert progress and all(r.get("inner") == "rllib:PPO" for r in progress), "RLlib trained the tasks"
    done = [r for r in rows if r.get("event") == "task_done"]
    assert {r["game"] for r in done} <= set(cfg.meta.games) and done
