"""Game flavours on real ALE games: the spec syntax and its errors, the flavour lists, and the
Python vector env against ale-py's AtariVectorEnv (bit for bit on the default flavour)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from leap_rl.config import ConfigError, EnvConfig, merge, preset
from leap_rl.envs import EpisodeTracker, make_vec_env, normalize_game, num_actions
from leap_rl.flavours import FlavouredVectorEnv, GameSpec, flavours_of, normalize_spec, parse_spec

torch.set_num_threads(1)


def _play_both(game: str, flavoured, cfg: EnvConfig, steps: int, seed: int = 11):
    """Step AtariVectorEnv and a FlavouredVectorEnv with the same seed and actions; yield both
    results per step (reset first)."""
    a = make_vec_env(game, cfg)
    b = flavoured if isinstance(flavoured, FlavouredVectorEnv) else make_vec_env(flavoured, cfg)
    try:
        yield a.reset(seed=seed), b.reset(seed=seed)
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            actions = rng.integers(0, a.single_action_space.n, cfg.num_envs)
            yield a.step(actions), b.step(actions)
    finally:
        a.close()
        b.close()


def _assert_same_run(game: str, flavoured, cfg: EnvConfig, steps: int) -> dict[str, int]:
    """Everything TaskRunner reads is equal on every step: observations, raw rewards,
    terminations, truncations, lives and frame numbers, and ``final_obs`` of every sub-env that
    was reset on the step (a game over or a time limit). Returns what the run went through."""
    seen = {"game_overs": 0, "cuts": 0, "life_losses": 0}
    frames = None
    for k, (ra, rb) in enumerate(_play_both(game, flavoured, cfg, steps)):
        ia, ib = ra[-1], rb[-1]
        np.testing.assert_array_equal(ra[0], rb[0], err_msg=f"observations, step {k}")
        assert ra[0].dtype == rb[0].dtype == np.uint8 and ra[0].shape == rb[0].shape
        for key in ("lives", "frame_number", "episode_frame_number", "env_id"):
            np.testing.assert_array_equal(ia[key], ib[key], err_msg=f"info[{key!r}], step {k}")
        if k == 0:
            frames = ia["episode_frame_number"]
            continue
        _, rew_a, term_a, trunc_a, _ = ra
        _, rew_b, term_b, trunc_b, _ = rb
        np.testing.assert_array_equal(rew_a, rew_b, err_msg=f"rewards, step {k}")
        np.testing.assert_array_equal(term_a, term_b, err_msg=f"terminated, step {k}")
        np.testing.assert_array_equal(trunc_a, trunc_b, err_msg=f"truncated, step {k}")
        # ale-py fills final_obs only for the sub-envs it reset; at a life loss (terminated,
        # game goes on) its row holds a stale buffer, and TaskRunner never reads it there.
        game_over = term_a & (ia["episode_frame_number"] < frames)
        reset = trunc_a | game_over
        seen["game_overs"] += int(game_over.sum())
        seen["cuts"] += int(trunc_a.sum())
        seen["life_losses"] += int((term_a & ~game_over).sum())
        assert ("final_obs" in ia) == ("final_obs" in ib) == bool((term_a | trunc_a).any())
        if reset.any():
            np.testing.assert_array_equal(ia["final_obs"][reset], ib["final_obs"][reset],
                                          err_msg=f"final_obs, step {k}")
        frames = ia["episode_frame_number"]
    return seen


def test_default_flavour_is_bit_identical_to_atari_vector_env():
    """breakout:mode=0:difficulty=0 (mode and difficulty set explicitly, the Python env) against
    plain breakout (the C++ env): 3 envs, 600 steps, through game overs and life losses."""
    seen = _assert_same_run("breakout", "breakout:mode=0:difficulty=0", EnvConfig(num_envs=3), 600)
    assert seen["game_overs"] >= 3 and seen["life_losses"] >= 6


def test_time_limit_inside_a_frame_skip_is_bit_identical():
    """Pong cut at 62 frames (not a multiple of the frame skip 4: the last step stops after 2
    frames, before the frames the max-pool would capture) and no flavour at all (ROM defaults)."""
    cfg = EnvConfig(num_envs=2, max_episode_frames=62)
    seen = _assert_same_run("pong", FlavouredVectorEnv(GameSpec("pong"), cfg), cfg, 80)
    assert seen["cuts"] >= 8


def test_no_fire_game_without_noops_is_bit_identical():
    """MsPacman has no FIRE (the reset is no-ops only); noop_max 1 leaves none at all."""
    cfg = EnvConfig(num_envs=2, noop_max=1)
    _assert_same_run("ms_pacman", "ms_pacman:mode=0", cfg, 150)


def test_a_life_loss_is_terminal_but_the_game_goes_on():
    cfg = EnvConfig(num_envs=2)
    env = make_vec_env("breakout:mode=4", cfg)
    assert isinstance(env, FlavouredVectorEnv)
    _, info = env.reset(seed=3)
    tracker = EpisodeTracker(cfg.num_envs)
    rng = np.random.default_rng(0)
    life_losses = games = 0
    for _ in range(400):
        lives, frames = info["lives"], info["episode_frame_number"]
        _, reward, terminated, truncated, info = env.step(rng.integers(0, 4, cfg.num_envs))
        goes_on = terminated & (info["episode_frame_number"] > frames)
        assert np.all(info["lives"][goes_on] == lives[goes_on] - 1)
        life_losses += int(goes_on.sum())
        games += len(tracker.update(reward, terminated, truncated, info["episode_frame_number"]))
    env.close()
    assert life_losses >= 4 and 1 <= games < life_losses  # whole games, not lives


def test_a_flavour_changes_the_game():
    """Space Invaders mode 8 differs from the default flavour on the same seed and actions; the
    action set (the heads' size) is the game's."""
    cfg = EnvConfig(num_envs=1)
    frames = {}
    for spec in ("space_invaders:mode=0", "space_invaders:mode=8", "space_invaders:difficulty=1"):
        env = make_vec_env(spec, cfg)
        assert env.single_action_space.n == num_actions(spec) == num_actions("space_invaders")
        obs, _ = env.reset(seed=3)
        rng = np.random.default_rng(0)
        out = [obs]
        for _ in range(5):
            out.append(env.step(rng.integers(0, env.single_action_space.n, 1))[0])
        env.close()
        frames[spec] = np.stack(out)
    base = frames["space_invaders:mode=0"]
    assert not np.array_equal(frames["space_invaders:mode=8"], base)
    assert not np.array_equal(frames["space_invaders:difficulty=1"], base)


# ------------------------------------------------------------------------------ specs

@pytest.mark.parametrize("text, canonical", [
    ("space_invaders", "space_invaders"),
    ("SpaceInvaders", "space_invaders"),
    ("ALE/SpaceInvaders-v5:mode=3", "space_invaders:mode=3"),
    ("space_invaders:difficulty=1:mode=3", "space_invaders:mode=3:difficulty=1"),
    (" breakout:mode=44 ", "breakout:mode=44"),
    ("asteroids:mode=128:difficulty=3", "asteroids:mode=128:difficulty=3"),
])
def test_specs_are_canonical(text, canonical):
    assert normalize_spec(text) == canonical
    spec = parse_spec(text)
    assert spec.text == canonical and spec.flavoured == (":" in canonical)


def test_plain_names_are_what_they_were():
    for name in ("MsPacman", "ALE/Seaquest-v5", "qbert", "space_invaders"):
        assert normalize_spec(name) == normalize_game(name)
    env = make_vec_env("pong", EnvConfig(num_envs=1))
    assert not isinstance(env, FlavouredVectorEnv)
    env.close()


@pytest.mark.parametrize("text, words", [
    ("breakout:mode=5", "mode 5 is not available; breakout has modes 0, 4, 8, 12, 16, 20, 24, 28, 32, "
                        "36, 40, 44 and difficulties 0–1"),
    ("ms_pacman:difficulty=1", "difficulty 1 is not available; ms_pacman has modes 0–3 and difficulties 0"),
    ("space_invaders:mode=16", "space_invaders has modes 0–15 and difficulties 0–1"),
    ("breakout:level=2", "'level=2' is not an option; write breakout:mode=M:difficulty=D"),
    ("breakout:mode", "'mode' is not an option"),
    ("breakout:mode=x", "mode must be an integer ≥ 0, got 'x'"),
    ("breakout:mode=-4", "mode must be an integer ≥ 0, got '-4'"),
    ("breakout:mode=0:mode=4", "mode is given twice"),
    ("breakoutt:mode=0", "unknown game 'breakoutt'"),
])
def test_bad_specs_say_what_is_allowed(text, words):
    with pytest.raises(ConfigError) as exc:
        parse_spec(text)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_flavour_lists_are_the_roms():
    """The counts the issue lists (from getAvailableModes / getAvailableDifficulties)."""
    counts = {g: tuple(len(x) for x in flavours_of(g)) for g in
              ("space_invaders", "breakout", "asteroids", "freeway", "bank_heist", "alien", "ms_pacman")}
    assert counts == {"space_invaders": (16, 2), "breakout": (12, 2), "asteroids": (33, 2), "freeway": (8, 2),
                      "bank_heist": (8, 4), "alien": (4, 4), "ms_pacman": (4, 1)}
    assert flavours_of("breakout")[0] == tuple(range(0, 48, 4))


def test_pool_lists_flavours(capsys):
    from leap_rl.cli import main
    assert main(["pool", "--all", "--flavours"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert "modes 0–15 (16), difficulties 0–1 (2)" in lines["space_invaders"]
    assert "modes 0–31, 128 (33), difficulties 0, 3 (2)" in lines["asteroids"]
    assert len(lines) == 104


def test_a_bad_spec_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys):
    from leap_rl.cli import main
    run_dir = tmp_path / "run"
    assert main(["task", "--preset", "ci", "--game", "pong:mode=7", "--env-steps", "40",
                 "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "pong has modes 0–1" in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists()


def test_meta_training_games_take_flavours():
    from leap_rl.schedule import meta_training_games
    cfg = merge(preset("ci"), {"meta": {"games": ["SpaceInvaders:difficulty=1:mode=2", "pong"]}})
    assert meta_training_games(cfg) == ("space_invaders:mode=2:difficulty=1", "pong")


def test_task_runner_trains_on_a_flavour():
    """The plain TaskRunner, unchanged, on a flavoured spec (ci preset, 40 env steps)."""
    from leap_rl.messages import TaskSpec
    from leap_rl.task import TaskRunner
    cfg = preset("ci")
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, max_episode_frames=160))
    spec = TaskSpec("t", "space_invaders:mode=3:difficulty=1", 0, seed=5, env_steps=40)
    result = TaskRunner(cfg).run(spec, None)
    assert result.env_steps == 40 and result.game == spec.game and not result.diverged
    assert result.path_length > 0
