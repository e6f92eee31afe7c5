"""A2C: returns and loss against naive re-statements; the task loop on a real ALE game."""

import dataclasses

import numpy as np
import pytest
import torch

from leap_rl import task
from leap_rl.a2c import (a2c_loss, clip_rewards, fold_in_time_limit_bootstrap, n_step_returns,
                         time_limit_cut)
from leap_rl.config import A2CConfig, ConfigError, ModelConfig, load, preset
from leap_rl.envs import EpisodeTracker, make_vec_env
from leap_rl.leap import PathAccumulator
from leap_rl.leap_inputs import DEFER_BLOCK, MEASURED_FIRST
from leap_rl.messages import TaskSpec
from leap_rl.models import ActorCritic, as_training_batch, encoder_size, initial_encoder
from leap_rl.task import TaskRunner
from test_leap import COMBO_IDS, COMBOS, reference_H, reference_increments

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


def test_a2c_loss_terms_and_gradients_match_their_formulas_one_by_one():
    """Each term on its own, and the gradients of values and logits by hand: the advantage is a
    constant (detached), so the policy term sends no gradient into the value head."""
    cfg = A2CConfig(value_coef=0.7, entropy_coef=0.3)  # not 0.5/0.01: every term must weigh
    gen = torch.Generator().manual_seed(3)
    B, A = 5, 4
    logits = torch.randn(B, A, generator=gen, dtype=torch.float64, requires_grad=True)
    values = torch.randn(B, generator=gen, dtype=torch.float64, requires_grad=True)
    actions = torch.tensor([0, 3, 1, 1, 2])
    returns = torch.randn(B, generator=gen, dtype=torch.float64)
    loss = a2c_loss(logits, values, actions, returns, cfg)

    z, v = logits.detach(), values.detach()
    p = torch.softmax(z, -1)
    logp = torch.log(p)
    adv = returns - v
    onehot = torch.nn.functional.one_hot(actions, A).double()
    H = -(p * logp).sum(-1)
    policy = -(adv * logp[torch.arange(B), actions]).mean()
    value = ((v - returns) ** 2).mean()
    entropy = H.mean()
    torch.testing.assert_close(loss.policy, policy)
    torch.testing.assert_close(loss.value, value)
    torch.testing.assert_close(loss.entropy, entropy)
    torch.testing.assert_close(loss.total.detach(), policy + 0.7 * value - 0.3 * entropy)
    assert not (loss.policy.requires_grad or loss.value.requires_grad or loss.entropy.requires_grad)

    loss.total.backward()
    # d total / d v_b = c_v · 2 (v_b − R_b) / B only: a live advantage would add log π(a_b)/B.
    torch.testing.assert_close(values.grad, 0.7 * 2 * (v - returns) / B)
    # d total / d z_bj = −A_b (1[j = a_b] − p_bj) / B + c_e p_bj (log p_bj + H_b) / B
    want = -adv[:, None] * (onehot - p) / B + 0.3 * p * (logp + H[:, None]) / B
    torch.testing.assert_close(logits.grad, want)


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
    """Records the raw g_{i−1} the loop hands Leap (the buffer divided by its clipping factor)
    and the norm of the buffer itself (what clipping left in it)."""

    def observe_step(self, loss, params, step, prev_grad, prev_grad_scale=1.0, step_norm=None):
        if prev_grad is not None:
            self.grad_norms.append(float(prev_grad.norm()) / prev_grad_scale)
            self.clipped_norms.append(float(prev_grad.norm()))
        super().observe_step(loss, params, step, prev_grad, prev_grad_scale, step_norm)


def test_leap_reads_the_raw_gradient_before_clipping():
    cfg = small_config(max_grad_norm=1e-4)
    runner = TaskRunner(cfg)
    runner.accumulator = RecordingAccumulator(runner.accumulator.num_params, cfg.leap)
    runner.accumulator.grad_norms, runner.accumulator.clipped_norms = [], []
    runner.run(TaskSpec("t", "pong", 0, seed=1, env_steps=200), initial_encoder(cfg.model, 0))
    assert len(runner.accumulator.grad_norms) == 9  # 10 updates: g_1 … g_9 are some point's g_{i−1}
    assert min(runner.accumulator.grad_norms) > 1e-4  # clipping would cap the total at 1e-4
    assert max(runner.accumulator.clipped_norms) <= 1e-4 * (1 + 1e-5)  # …and it did, in the buffer


def test_leap_gets_the_raw_gradient_back_from_a_clipped_buffer():
    """clip_gradients's factor is clip_grad_norm_'s: dividing it out of the clipped buffer gives
    the raw gradient to float rounding, for a clipped and for an unclipped gradient."""
    from leap_rl.leap_inputs import bind_encoder_grads, clip_gradients
    torch.manual_seed(0)
    model = ActorCritic(ModelConfig(network="mnih2013"), num_actions=4)
    grad = bind_encoder_grads(model, torch.zeros(model.encoder_flat.numel()))
    frames = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    for max_norm in (1e-3, 1e6):
        model.zero_grad(set_to_none=False)
        logits, values = model(frames)
        (logits.square().mean() + values.square().mean()).backward()
        raw = grad.clone()
        scale = clip_gradients(model, max_norm)
        assert (scale < 1) == (max_norm == 1e-3)
        torch.testing.assert_close(grad / scale, raw, rtol=1e-6, atol=0)


def with_meta(cfg, **meta):
    return dataclasses.replace(cfg, meta=dataclasses.replace(cfg.meta, **meta))


class SnapshotAccumulator(PathAccumulator):
    """The real accumulator, plus a copy of every point it is shown, taken when it is shown
    (the loop passes live buffers that change after the call): (f_i, θ_i, g_i) with g_i
    recovered at the next point, where the loop hands it over as g_{i−1}."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.points, self.buffers, self.step_norms = [], set(), []

    def observe_step(self, loss, params, step, prev_grad, prev_grad_scale=1.0, step_norm=None):
        if prev_grad is not None:
            self.points[-1] = (*self.points[-1][:2], (prev_grad / prev_grad_scale).numpy().copy())
            self.buffers.add((params.data_ptr(), step.data_ptr(), prev_grad.data_ptr()))
            self.step_norms.append((step_norm, float(torch.linalg.vector_norm(step))))
        self.points.append((loss, params.detach().numpy().copy(), None))
        super().observe_step(loss, params, step, prev_grad, prev_grad_scale, step_norm)


def run_with_snapshots(cfg, spec):
    runner = TaskRunner(cfg)
    runner.accumulator = SnapshotAccumulator(runner.accumulator.num_params, cfg.leap)
    segments = []
    result = runner.run(spec, initial_encoder(cfg.model, 0), segments.append)
    return result, segments, runner.accumulator


@pytest.mark.parametrize("metric,loss,stabilizer", COMBOS, ids=COMBO_IDS)
def test_loop_segments_match_the_naive_leap_reference_on_the_loops_own_buffers(metric, loss, stabilizer):
    """The loop hands Leap its live buffers: θ is ``encoder_flat`` (optimizer.step() moves it
    after the call), Δθ the optimizer's step buffer and g_{i−1} the gradient buffer of the
    previous update (clipped in place since). What Leap sends must still be the LEAP.md §2 sum
    over the points as they were when observed, for every flag combination."""
    cfg = with_meta(small_config(), segment_every=4)
    cfg = dataclasses.replace(cfg, leap=dataclasses.replace(cfg.leap, metric=metric, loss=loss, stabilizer=stabilizer))
    result, segments, acc = run_with_snapshots(cfg, TaskSpec("t", "pong", 0, seed=1, env_steps=300))
    assert len(acc.points) == result.updates == 15 and len(segments) == 4
    # one θ buffer; the gradients take turns in 2·DEFER_BLOCK rows, and so do the steps under
    # the length metric (which adds them), while energy reads one step row for its norm
    rows = 2 * DEFER_BLOCK
    assert len({b[0] for b in acc.buffers}) == 1 and len({b[2] for b in acc.buffers}) == rows
    assert len({b[1] for b in acc.buffers}) == (rows if metric == "length" else 1)
    # ‖Δθ‖ is handed over, taken right after the optimizer's step: the norm of the step it wrote
    assert all(given == read for given, read in acc.step_norms) and len(acc.step_norms) == 14
    acc.points[-1] = (*acc.points[-1][:2], np.zeros_like(acc.points[-1][1]))  # the last g is never used
    leap = cfg.leap
    want = torch.from_numpy(reference_H(acc.points, leap.metric, leap.loss, leap.stabilizer))
    got = -torch.stack([s.vector for s in segments]).sum(0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert float(want.abs().max()) > 1e-3  # the vector is not trivially zero
    # The path length reported is Σ sqrt(Δf̃² + ‖Δθ‖²) over those points too.
    incs = reference_increments(acc.points, leap.metric, leap.loss, leap.stabilizer)
    length = sum(np.sqrt(dft ** 2 + float(np.dot(dth.astype(np.float64), dth))) for _h, dth, _df, dft, _w in incs)
    assert result.path_length == pytest.approx(length, rel=1e-4)
    assert sum(s.stats.path_length for s in segments) == pytest.approx(length, rel=1e-4)


@pytest.mark.parametrize("game", ["breakout", "breakout:mode=4"])
def test_overlapped_env_stepping_trains_the_same_agent(game):
    """env.overlap steps two half vector envs in a pipeline (the C++ env's send/recv; a
    flavoured game's Python env steps at recv): the same frames, actions, scores, Leap
    segments and encoder as the one-env loop, for a seed."""
    runs = {}
    for overlap in (False, True):
        cfg = small_config()
        cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, num_envs=5, overlap=overlap))
        segments = []
        runs[overlap] = (TaskRunner(cfg).run(TaskSpec("t", game, 0, seed=3, env_steps=1500),
                                             initial_encoder(cfg.model, 0), segments.append,
                                             keep_encoder=True), segments)
    (plain, plain_segments), (overlapped, overlapped_segments) = runs[False], runs[True]
    assert len(plain.episode_returns) >= 3  # games ended, in both halves' envs
    assert overlapped.episode_returns == plain.episode_returns
    assert torch.equal(overlapped.encoder, plain.encoder)
    assert len(overlapped_segments) == len(plain_segments)
    for a, b in zip(overlapped_segments, plain_segments):
        assert torch.equal(a.vector, b.vector)


def test_overlap_needs_two_envs():
    with pytest.raises(ConfigError, match="env.num_envs must be ≥ 2 with env.overlap"):
        load("ci", overrides=("env.num_envs=1", "env.overlap=true"))


def test_task_segments_sum_to_an_unsegmented_run_of_the_same_seed():
    cfg = small_config()
    spec = TaskSpec("t", "pong", 0, seed=1, env_steps=400)
    phi = initial_encoder(cfg.model, 0)
    runs = {}
    for every in (3, 10 ** 6):  # every 3 updates, and one segment for the whole task
        segments = []
        result = TaskRunner(with_meta(cfg, segment_every=every)).run(spec, phi, segments.append)
        runs[every] = (result, segments)
    (res_seg, seg), (res_one, one) = runs[3], runs[10 ** 6]
    assert len(one) == 1 and len(seg) == 7  # 20 updates: at 3, 6, …, 18 and the last
    assert res_seg.episode_returns == res_one.episode_returns  # the same training, segments aside
    assert [s.index for s in seg] == list(range(len(seg)))
    assert seg[-1].final and not any(s.final for s in seg[:-1])
    assert sum(s.increments for s in seg) == one[0].increments == res_one.updates - 1
    whole = one[0].vector
    torch.testing.assert_close(torch.stack([s.vector for s in seg]).sum(0), whole,
                               rtol=1e-4, atol=1e-5 * float(whole.abs().max()))
    assert float(whole.abs().max()) > 1e-3
    assert res_seg.path_length == pytest.approx(res_one.path_length, rel=1e-9)
    assert res_seg.param_part_norm == pytest.approx(res_one.param_part_norm, rel=1e-4)
    assert res_seg.loss_part_norm == pytest.approx(res_one.loss_part_norm, rel=1e-4)


def test_time_limit_truncation_keeps_training_and_ends_games():
    cfg = preset("ci")
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, max_episode_frames=200))
    result = TaskRunner(cfg).run(TaskSpec("t", "pong", 0, seed=1, env_steps=400), initial_encoder(cfg.model, 0))
    assert len(result.episode_returns) >= cfg.env.num_envs  # every env hit the 200-frame limit
    assert not result.diverged


def test_a_diverging_agent_stops_and_flags_its_last_segment_for_the_learner():
    """lr = 1e30 without clipping: the first step sends the weights far enough for the policy
    to become non-finite. The task stops there and its final segment carries the flag, which
    the learner refuses (its vector may still be finite, so only the flag tells)."""
    from leap_rl.config import MetaConfig
    from leap_rl.meta_learner import MetaLearner

    cfg = small_config(lr=1e30, max_grad_norm=0.0)
    segments = []
    result = TaskRunner(cfg).run(TaskSpec("t", "pong", 0, seed=1, env_steps=400),
                                 initial_encoder(cfg.model, 0), segments.append)
    assert result.diverged and result.updates < 20
    assert segments[-1].final and segments[-1].diverged and not any(s.diverged for s in segments[:-1])
    assert segments[-1].is_finite  # so the finiteness check alone would let it in
    learner = MetaLearner(initial_encoder(cfg.model, 0), MetaConfig())
    accepted = [learner.add_segment(s) for s in segments]
    assert accepted[-1] is False and learner.is_dropped("t") and learner.complete_tasks() == []


def test_time_limit_fold_in_on_literal_values():
    terminated = np.array([False, True, False, True])
    truncated = np.array([True, False, False, True])
    # Only env 0 was cut by the limit; env 3 ended in the MDP on the same step.
    assert time_limit_cut(terminated, truncated).tolist() == [True, False, False, False]
    reward = torch.tensor([1.0, 0.0, -1.0, 0.5])
    cut = torch.from_numpy(time_limit_cut(terminated, truncated))
    out = fold_in_time_limit_bootstrap(reward, cut, torch.tensor([2.0]), gamma=0.9)
    torch.testing.assert_close(out, torch.tensor([1.0 + 0.9 * 2.0, 0.0, -1.0, 0.5]))
    assert reward.tolist() == [1.0, 0.0, -1.0, 0.5]  # a new tensor: the input is left alone
    # Several cut envs take their final values in env order.
    out = fold_in_time_limit_bootstrap(reward, torch.tensor([True, False, True, False]),
                                       torch.tensor([2.0, -1.0]), gamma=0.9)
    torch.testing.assert_close(out, torch.tensor([2.8, 0.0, -1.9, 0.5]))
    # Through the returns: the cut step's return is r + γ·V(final), whatever follows it (the
    # next step belongs to the next episode); the terminated env's is its reward alone.
    rewards = torch.stack([fold_in_time_limit_bootstrap(torch.tensor([1.0, 1.0]), torch.tensor([True, False]),
                                                        torch.tensor([2.0]), 0.9),
                           torch.tensor([5.0, 5.0])])
    dones = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    R = n_step_returns(rewards, dones, bootstrap=torch.tensor([7.0, 7.0]), gamma=0.9)
    torch.testing.assert_close(R[0], torch.tensor([1.0 + 0.9 * 2.0, 1.0]))


def test_rollout_bootstraps_time_limits_from_the_final_frame_and_nothing_else(monkeypatch):
    """Watch the real loop on a real game: every env step's raw outputs as the env returned
    them, and the rollout handed to each update. Breakout with 200-frame games has both kinds
    of episode end: life losses (terminated) and the time limit (truncated)."""
    cfg = preset("ci")
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, max_episode_frames=200))
    steps = []  # per env step: (raw reward, terminated, truncated, final_obs, returned obs)
    real_make = task.make_vec_env

    def recording_env(game, env_cfg):
        env = real_make(game, env_cfg)
        real_step = env.step

        def step(actions):
            obs, raw, terminated, truncated, info = real_step(actions)
            final = info["final_obs"].copy() if "final_obs" in info else None  # only when a game ended
            steps.append((raw.copy(), terminated.copy(), truncated.copy(), final, obs.copy()))
            return obs, raw, terminated, truncated, info

        env.step = step
        return env

    seen = {"cut": 0, "terminated": 0, "final_vs_reset": 0.0}
    real_update = task.a2c_update

    def checking_update(model, optimizer, rollout, a2c, *args, **kwargs):
        # The model is the one that acted (it changes only inside the update).
        T = rollout.rewards.shape[0]
        for t, (raw, terminated, truncated, final, obs) in enumerate(steps[-T:]):
            want = clip_rewards(torch.as_tensor(raw, dtype=torch.float32), a2c)
            cut = truncated & ~terminated
            if cut.any():
                with torch.no_grad():
                    v_final = model(torch.from_numpy(final[cut]))[1]
                    v_reset = model(torch.from_numpy(obs[cut]))[1]
                want[torch.from_numpy(cut)] += a2c.gamma * v_final
                seen["final_vs_reset"] = max(seen["final_vs_reset"], float((v_final - v_reset).abs().max()))
            seen["cut"] += int(cut.sum())
            seen["terminated"] += int(terminated.sum())
            torch.testing.assert_close(rollout.rewards[t], want, rtol=0, atol=1e-6)
            torch.testing.assert_close(rollout.dones[t], torch.from_numpy(terminated | truncated).float())
        return real_update(model, optimizer, rollout, a2c, *args, **kwargs)

    monkeypatch.setattr(task, "make_vec_env", recording_env)
    monkeypatch.setattr(task, "a2c_update", checking_update)
    result = TaskRunner(cfg).run(TaskSpec("t", "breakout", 0, seed=1, env_steps=400), initial_encoder(cfg.model, 0))
    assert len(steps) == result.updates * cfg.a2c.unroll
    # Both kinds of ending happened, and V(final frame) is far from V(reset frame) compared with
    # the tolerance, so bootstrapping from the wrong frame, or at life losses, would show.
    assert seen["cut"] >= cfg.env.num_envs and seen["terminated"] >= cfg.env.num_envs, seen
    assert seen["final_vs_reset"] > 1e-3, seen


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


def test_encoder_without_its_fc_layer_is_the_convolutions_alone():
    """``model.encoder_includes_fc = false``: φ is the two convolutions of the Mnih-2013 network
    (16×4×8×8 + 16, 32×16×4×4 + 32 numbers); the FC-256 layer is per game, fresh with the heads,
    trained by A2C but never seen by Leap."""
    model_cfg = ModelConfig(network="mnih2013", encoder_includes_fc=False)
    n = 16 * 4 * 8 * 8 + 16 + 32 * 16 * 4 * 4 + 32
    assert encoder_size(model_cfg) == n == initial_encoder(model_cfg, 0).numel()
    assert encoder_size(ModelConfig(network="mnih2013")) == n + 32 * 9 * 9 * 256 + 256
    phi = initial_encoder(model_cfg, 0)
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        m = ActorCritic(model_cfg, num_actions=6)
        m.load_encoder(phi)
        models.append(m)
    for m in models:
        convs = torch.cat([p.detach().flatten() for p in m.encoder.parameters()])
        assert torch.equal(convs, phi)
        assert not any(isinstance(x, torch.nn.Linear) for x in m.encoder.modules())
    fc = [torch.cat([p.detach().flatten() for p in m.torso.parameters()]) for m in models]
    assert fc[0].numel() == 32 * 9 * 9 * 256 + 256 and not torch.equal(fc[0], fc[1])  # fresh per task
    frames = torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8)
    logits, values = models[0](frames)
    assert logits.shape == (3, 6) and values.shape == (3,)

    # A real task: segments have φ's size and the FC layer learns outside of them.
    cfg = preset("ci")
    cfg = dataclasses.replace(cfg, model=model_cfg)
    result, segments, acc = run_with_snapshots(cfg, TaskSpec("t", "pong", 0, seed=1, env_steps=200))
    assert all(s.vector.shape == (n,) for s in segments)
    assert np.array_equal(acc.points[0][1], phi.numpy())  # Leap's first θ is φ itself
    assert not np.array_equal(acc.points[-1][1], acc.points[0][1])  # and the convolutions train


def test_update_threads_apply_to_the_update_only():
    """runtime.update_threads: the update (where Leap observes) runs on that many torch threads,
    acting and the rest of the loop on the process's own; 0 leaves them alone."""
    torch.set_num_threads(1)
    seen = {"update": set(), "outside": set()}

    class ThreadsSeen(PathAccumulator):
        def observe_step(self, *args, **kwargs):
            seen["update"].add(torch.get_num_threads())
            super().observe_step(*args, **kwargs)

    for threads, want in ((2, {2}), (0, {1})):
        seen["update"].clear()
        cfg = small_config()
        cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, update_threads=threads, log_every=1))
        runner = TaskRunner(cfg)
        runner.accumulator = ThreadsSeen(runner.accumulator.num_params, cfg.leap)
        runner.run(TaskSpec("t", "pong", 0, seed=1, env_steps=100), initial_encoder(cfg.model, 0),
                   on_progress=lambda row: seen["outside"].add(torch.get_num_threads()))
        assert seen["update"] == want
    assert seen["outside"] == {1} and torch.get_num_threads() == 1


def test_update_threads_must_not_be_negative():
    with pytest.raises(ConfigError, match="runtime.update_threads"):
        load("ci", None, ["runtime.update_threads=-1"])


def test_path_stats_every_n_trains_the_same_agent_and_sends_the_same_vectors():
    """Under energy, leap.path_stats_every = 4 writes Δθ out on every 4th update only: θ is the
    fused RMSProp step's bit for bit, and the vectors Leap sends are the same; only the path
    statistics measure fewer steps: the task's first MEASURED_FIRST, then every 4th."""
    runs = {}
    for every in (1, 4):
        cfg = with_meta(small_config(), segment_every=6)
        cfg = dataclasses.replace(cfg, leap=dataclasses.replace(cfg.leap, metric="energy", path_stats_every=every))
        segments = []
        result = TaskRunner(cfg).run(TaskSpec("t", "pong", 0, seed=2, env_steps=800),
                                     initial_encoder(cfg.model, 0), segments.append, keep_encoder=True)
        runs[every] = (result, segments)
    (exact, exact_segments), (sampled, sampled_segments) = runs[1], runs[4]
    assert torch.equal(exact.encoder, sampled.encoder)
    assert torch.equal(torch.stack([s.vector for s in exact_segments]),
                       torch.stack([s.vector for s in sampled_segments]))
    increments = sum(s.stats.increments for s in sampled_segments)
    assert increments == exact.updates - 1 == 39 and MEASURED_FIRST == 25
    assert [s.stats.measured_steps for s in exact_segments] == [s.stats.increments for s in exact_segments]
    assert sum(s.stats.measured_steps for s in sampled_segments) == 25 + 3  # then points 29, 33, 37
    assert sampled.path_length > 0
