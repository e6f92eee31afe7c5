"""A2C: returns and loss against naive re-statements; the task loop on a real ALE game."""

import dataclasses

import numpy as np
import pytest
import torch

from leap_rl.a2c import a2c_loss, clip_rewards, n_step_returns
from leap_rl.config import A2CConfig, preset
from leap_rl.envs import EpisodeTracker, make_vec_env
from leap_rl.leap import PathAccumulator
from leap_rl.messages import TaskSpec
from leap_rl.models import ActorCritic, as_training_batch, initial_encoder
from leap_rl.task import TaskRunner

torch.set_num_threads(1)


def naive_returns(rewards, dones, bootstrap, gamma):
    T, N = len(rewards), len(rewards[0])
    out = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total, discount = 0.0, 1.0
            for k in range(t, T):
                total += discount * rewards[k][n]
                if dones[k][n]:
                    break
                discount *= gamma
            else:
                total += discount * bootstrap[n]
            out[t, n] = total
    return out


def test_n_step_returns_match_a_literal_sum_and_stop_at_episode_ends():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    dones = (torch.rand(6, 5, generator=gen) < 0.3).double()
    bootstrap = torch.randn(5, generator=gen, dtype=torch.float64)
    got = n_step_returns(rewards, dones, bootstrap, 0.9)
    want = naive_returns(rewards.tolist(), dones.tolist(), bootstrap.tolist(), 0.9)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert dones.sum() > 0  # the case with episode ends is exercised


def test_a2c_loss_matches_its_formula_and_pushes_up_advantaged_actions():
    cfg = A2CConfig(value_coef=0.5, entropy_coef=0.01)
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]], requires_grad=True)
    values = torch.tensor([0.5, -0.2], requires_grad=True)
    actions = torch.tensor([2, 0])
    returns = torch.tensor([1.5, -1.0])
    loss = a2c_loss(logits, values, actions, returns, cfg)
    p = torch.softmax(logits.detach(), -1)
    adv = returns - values.detach()
    pg = -(adv * torch.log(p[[0, 1], actions])).mean()
    v = ((returns - values.detach()) ** 2).mean()
    ent = -(p * p.log()).sum(-1).mean()
    torch.testing.assert_close(loss.total.detach(), pg + 0.5 * v - 0.01 * ent)
    loss.total.backward()
    assert logits.grad[0, 2] < 0  # positive advantage: gradient descent raises this logit
    assert logits.grad[1, 0] > 0  # negative advantage: lowers it


def test_reward_clipping_modes():
    raw = torch.tensor([-20.0, -0.5, 0.0, 3.0, 200.0])
    assert clip_rewards(raw, A2CConfig(reward_clip="sign")).tolist() == [-1, -1, 0, 1, 1]
    assert clip_rewards(raw, A2CConfig(reward_clip="clamp", reward_clip_bound=5.0)).tolist() == [-5, -0.5, 0, 3, 5]
    assert clip_rewards(raw, A2CConfig(reward_clip="none")).tolist() == raw.tolist()


def test_episode_tracker_counts_whole_games_not_lives():
    tracker = EpisodeTracker(2)
    f = lambda *x: np.array(x)  # noqa: E731
    b = lambda *x: np.array(x, dtype=bool)  # noqa: E731
    assert tracker.update(f(1.0, 2.0), b(False, False), b(False, False), f(10, 10)) == []
    # env 0 loses a life (frame counter goes on): not a game end
    assert tracker.update(f(3.0, 0.0), b(True, False), b(False, False), f(20, 20)) == []
    # env 1's game ends (the counter restarts); env 0 is truncated
    done = tracker.update(f(0.0, 5.0), b(False, True), b(True, False), f(30, 2))
    assert sorted(done) == [(4.0, 3), (7.0, 3)]


def test_vector_env_returns_raw_rewards():
    cfg = preset("ci").env
    env = make_vec_env("seaquest", cfg)
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    rewards = []
    for _ in range(600):
        _, r, *_ = env.step(rng.integers(env.single_action_space.n, size=cfg.num_envs))
        rewards.append(r)
    env.close()
    assert np.max(rewards) >= 20  # Seaquest scores 20 a kill: nothing clipped it to 1


def small_config(**a2c):
    cfg = preset("ci")
    return dataclasses.replace(cfg, a2c=dataclasses.replace(cfg.a2c, **a2c))


def test_task_runner_is_deterministic_for_a_seed():
    cfg = small_config()
    phi = initial_encoder(cfg.model, 0)
    spec = TaskSpec("t", "qbert", 0, seed=7, env_steps=300)
    runs = []
    for _ in range(2):
        segments = []
        TaskRunner(cfg).run(spec, phi, segments.append)
        runs.append(torch.stack([s.vector for s in segments]))
    assert torch.equal(runs[0], runs[1])


class RecordingAccumulator(PathAccumulator):
    def observe(self, loss, params, grad):
        self.grad_norms.append(float(grad.norm()))
        super().observe(loss, params, grad)


def test_leap_reads_the_raw_gradient_before_clipping():
    cfg = small_config(max_grad_norm=1e-4)
    runner = TaskRunner(cfg)
    runner.accumulator = RecordingAccumulator(runner.accumulator.num_params, cfg.leap)
    runner.accumulator.grad_norms = []
    runner.run(TaskSpec("t", "pong", 0, seed=1, env_steps=200), initial_encoder(cfg.model, 0))
    assert len(runner.accumulator.grad_norms) == 10
    assert min(runner.accumulator.grad_norms) > 1e-4  # clipping would cap the total at 1e-4


def test_task_segments_sum_to_the_whole_task_and_count_k_minus_one_increments():
    cfg = small_config()
    segments = []
    result = TaskRunner(cfg).run(TaskSpec("t", "pong", 0, seed=1, env_steps=400),
                                 initial_encoder(cfg.model, 0), segments.append)
    assert [s.index for s in segments] == list(range(len(segments)))
    assert segments[-1].final and not any(s.final for s in segments[:-1])
    assert sum(s.increments for s in segments) == result.updates - 1
    assert result.path_length == pytest.approx(sum(s.stats.path_length for s in segments))


def test_time_limit_truncation_keeps_training_and_ends_games():
    cfg = preset("ci")
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, max_episode_frames=200))
    result = TaskRunner(cfg).run(TaskSpec("t", "pong", 0, seed=1, env_steps=400), initial_encoder(cfg.model, 0))
    assert len(result.episode_returns) >= cfg.env.num_envs  # every env hit the 200-frame limit
    assert not result.diverged


def test_channels_last_training_batch_gives_the_same_gradients():
    # The update feeds its batch in channels-last layout for speed; the math must not change.
    cfg = preset("baselines")
    torch.manual_seed(0)
    model = ActorCritic(cfg.model, num_actions=6)
    frames = torch.randint(0, 255, (16, 4, 84, 84), dtype=torch.uint8)
    assert as_training_batch(frames).is_contiguous(memory_format=torch.channels_last)
    grads = []
    for batch in (frames, as_training_batch(frames)):
        model.zero_grad()
        logits, values = model(batch)
        (logits.logsumexp(-1).mean() + values.square().mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert grads[0].abs().sum() > 0
