"""The Leap path accumulator, the meta-gradient and the learner, against LEAP.md §2–3.

The reference below is a literal, independent re-statement of LEAP.md §2 in numpy (a Python
loop over recorded points); nothing in it is taken from leap_rl.leap.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from leap_rl.config import MetaConfig
from leap_rl.leap import LeapConfig, PathAccumulator, PathStats, meta_gradient
from leap_rl.messages import Segment
from leap_rl.meta_learner import MetaLearner

torch.set_num_threads(1)

COMBOS = list(itertools.product(("length", "energy"), (True, False), (True, False)))
COMBO_IDS = [f"{m}-loss{int(l)}-stab{int(s)}" for m, l, s in COMBOS]


# ----------------------------------------------------------------------------- reference

def loss_term(df: float, loss: bool, stabilizer: bool) -> float:
    if not loss:
        return 0.0
    return -abs(df) if stabilizer else df


def reference_increments(points, metric: str, loss: bool, stabilizer: bool, eps: float = 1e-12):
    """LEAP.md §2 literally: a list of (h_i, Δθ_i, Δf_i, Δf̃_i, w_i) for i = 1..K−1.

    points: list of (f_i: float, θ_i: np.ndarray, g_i: np.ndarray).
    """
    out = []
    for i in range(1, len(points)):
        f_prev, theta_prev, g_prev = points[i - 1]
        f_i, theta_i, _g_i = points[i]
        d_theta = theta_i - theta_prev
        d_f = f_i - f_prev
        d_f_tilde = loss_term(d_f, loss, stabilizer)
        if metric == "length":
            w = math.sqrt(d_f_tilde ** 2 + float(np.dot(d_theta, d_theta)))
            w = max(w, eps)
        else:
            w = 1.0
        h = -(d_theta + d_f_tilde * g_prev) / w
        out.append((h, d_theta, d_f, d_f_tilde, w))
    return out


def reference_H(points, metric, loss, stabilizer) -> np.ndarray:
    H = np.zeros_like(points[0][1])
    for h, *_ in reference_increments(points, metric, loss, stabilizer):
        H = H + h
    return H


def random_points(rng: np.random.Generator, K: int, n: int):
    """A random walk of K points with random losses (both signs of Δf occur) and gradients."""
    theta = rng.normal(size=n)
    points = []
    for _ in range(K):
        points.append((float(rng.normal() * 3.0), theta.copy(), rng.normal(size=n)))
        theta = theta + rng.normal(scale=0.3, size=n)
    return points


def make_acc(n: int, metric: str, loss: bool, stabilizer: bool) -> PathAccumulator:
    return PathAccumulator(num_params=n, config=LeapConfig(metric=metric, loss=loss, stabilizer=stabilizer),
                           dtype=torch.float64)


def observe(acc: PathAccumulator, point) -> None:
    f, theta, g = point
    acc.observe(f, torch.from_numpy(theta), torch.from_numpy(g))


def stats(increments=1, path_length=1.0) -> PathStats:
    return PathStats(increments=increments, path_length=path_length, step_norm_sum=0.0, measured_steps=increments,
                     abs_loss_change_sum=0.0, param_part_norm=0.0, loss_part_norm=0.0)


# ----------------------------------------------------------------------------- accumulator vs LEAP.md §2

@pytest.mark.parametrize("metric,loss,stabilizer", COMBOS, ids=COMBO_IDS)
def test_accumulator_matches_naive_reference(metric, loss, stabilizer):
    rng = np.random.default_rng(1234)
    n, K = 7, 25
    points = random_points(rng, K, n)
    acc = make_acc(n, metric, loss, stabilizer)
    flushed = torch.zeros(n, dtype=torch.float64)
    for i, p in enumerate(points):
        observe(acc, p)
        if i % 6 == 5:
            flushed += acc.flush()
    flushed += acc.flush()
    expected = reference_H(points, metric, loss, stabilizer)
    np.testing.assert_allclose(-flushed.numpy(), expected, rtol=1e-10, atol=1e-12)
    # The combinations must really differ from one another on this data (the test can fail).
    assert np.abs(expected).max() > 1e-3


@pytest.mark.parametrize("metric,loss,stabilizer", COMBOS, ids=COMBO_IDS)
def test_accumulator_copies_buffers_the_caller_changes_after_observe(metric, loss, stabilizer):
    """The training loop passes the SAME two buffers every step: θ (the encoder's flat
    parameters, which optimizer.step() moves after observe) and g (the gradient buffer, which
    clipping scales in place after observe). Leap must keep the values, not the buffers."""
    rng = np.random.default_rng(77)
    n, K = 6, 12
    points = random_points(rng, K, n)
    acc = make_acc(n, metric, loss, stabilizer)
    theta = torch.zeros(n, dtype=torch.float64)
    grad = torch.zeros(n, dtype=torch.float64)
    total = torch.zeros(n, dtype=torch.float64)
    for i, (f, th, g) in enumerate(points):
        theta.copy_(torch.from_numpy(th))
        grad.copy_(torch.from_numpy(g))
        acc.observe(f, theta, grad)
        grad.mul_(0.1)  # clipping, in place
        theta.add_(1.0)  # a step that the next observe overwrites with the real next point
        if i % 5 == 4:
            total += acc.flush()
    total += acc.flush()
    np.testing.assert_allclose(-total.numpy(), reference_H(points, metric, loss, stabilizer),
                               rtol=1e-10, atol=1e-12)


def drive_observe_step(acc: PathAccumulator, points, flush_every: int, scales) -> torch.Tensor:
    """Feed ``points`` to ``observe_step`` the way TaskRunner does: one live θ buffer that the
    "optimizer" moves after each observe by a step it also writes out; the gradient alternating
    between two buffers, each clipped in place by ``scales[i]`` after its observe; flushes
    between observe and the step."""
    n = acc.num_params
    theta = torch.from_numpy(points[0][1].copy())
    step = torch.zeros(n, dtype=torch.float64)
    grads = (torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))
    total = torch.zeros(n, dtype=torch.float64)
    for i, (f, _th, g) in enumerate(points):
        current, previous = grads[i % 2], grads[(i - 1) % 2]
        current.copy_(torch.from_numpy(g))  # backward writes g_i; g_{i−1} stays in the other buffer
        if i == 0:
            acc.observe_step(f, theta, None, None)
        else:
            acc.observe_step(f, theta, step, previous, scales[i - 1])
        if i % flush_every == flush_every - 1:
            total += acc.flush()
        current.mul_(scales[i])  # clipping, in place
        if i + 1 < len(points):  # the optimizer's step, written out, then added to θ
            step.copy_(torch.from_numpy(points[i + 1][1] - theta.numpy()))
            theta.add_(step)
    return total + acc.flush()


@pytest.mark.parametrize("metric,loss,stabilizer", COMBOS, ids=COMBO_IDS)
def test_observe_step_matches_the_naive_reference(metric, loss, stabilizer):
    """The memory-floor form gives LEAP.md §2's sum: from the optimizer's steps instead of θ
    differences and from the previous gradient buffer with clipping divided back out."""
    rng = np.random.default_rng(4321)
    n, K = 7, 25
    points = random_points(rng, K, n)
    scales = rng.uniform(0.05, 1.0, size=K)  # most steps clipped, by different factors
    for flush_every in (6, 1, 10 ** 6):
        acc = make_acc(n, metric, loss, stabilizer)
        total = drive_observe_step(acc, points, flush_every, scales)
        expected = reference_H(points, metric, loss, stabilizer)
        np.testing.assert_allclose(-total.numpy(), expected, rtol=1e-10, atol=1e-12)
        assert np.abs(expected).max() > 1e-3


@pytest.mark.parametrize("metric,loss,stabilizer", COMBOS, ids=COMBO_IDS)
def test_observe_step_stats_match_observe(metric, loss, stabilizer):
    rng = np.random.default_rng(99)
    points = random_points(rng, 9, 5)
    reference = make_acc(5, metric, loss, stabilizer)
    for p in points:
        observe(reference, p)
    seen = []

    class StatsAtFlush(PathAccumulator):
        def flush(self):
            seen.append(self.stats())
            return super().flush()

    drive_observe_step(StatsAtFlush(5, reference.config, dtype=torch.float64), points, 10 ** 6, np.ones(9))
    want, got = reference.stats(), seen[0]
    assert got.increments == want.increments == 8
    for field in ("path_length", "step_norm_sum", "abs_loss_change_sum", "param_part_norm", "loss_part_norm"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-10, abs=1e-12), field


def test_observe_step_refuses_a_missing_step_and_mixed_forms():
    acc = make_acc(3, "energy", True, True)
    theta = torch.zeros(3, dtype=torch.float64)
    acc.observe_step(1.0, theta, None, None)
    with pytest.raises(ValueError, match="needs the step"):
        acc.observe_step(2.0, theta, None, None)
    with pytest.raises(ValueError, match="reset"):
        acc.observe(2.0, theta, theta)
    acc.reset()
    acc.observe(2.0, theta, theta)  # a new task may use the other form


def test_flag_combinations_give_different_vectors():
    rng = np.random.default_rng(7)
    points = random_points(rng, 12, 5)
    results = []
    for metric, loss, stabilizer in COMBOS:
        if not loss and not stabilizer:
            continue  # loss=False makes the stabilizer irrelevant
        acc = make_acc(5, metric, loss, stabilizer)
        for p in points:
            observe(acc, p)
        results.append(acc.flush().numpy())
    for a, b in itertools.combinations(results, 2):
        assert not np.allclose(a, b)


@pytest.mark.parametrize("metric,loss,stabilizer", COMBOS, ids=COMBO_IDS)
def test_segmented_flushes_sum_to_unsegmented(metric, loss, stabilizer):
    rng = np.random.default_rng(99)
    n, K = 6, 40
    points = random_points(rng, K, n)

    whole = make_acc(n, metric, loss, stabilizer)
    for p in points:
        observe(whole, p)
    whole_stats = whole.stats()
    unsegmented = whole.flush()

    py_rng = random.Random(5)
    for trial in range(5):
        acc = make_acc(n, metric, loss, stabilizer)
        total = torch.zeros(n, dtype=torch.float64)
        increments = 0
        path_length = 0.0
        # An empty flush before anything was observed.
        s = acc.stats()
        increments += s.increments
        total += acc.flush()
        for i, p in enumerate(points):
            observe(acc, p)
            # Always flush right after the first observe; elsewhere at random, sometimes twice
            # in a row (the second one empty).
            flushes = 1 if i == 0 else (py_rng.random() < 0.3) + (py_rng.random() < 0.1)
            for _ in range(flushes):
                s = acc.stats()
                increments += s.increments
                path_length += s.path_length
                total += acc.flush()
        s = acc.stats()
        increments += s.increments
        path_length += s.path_length
        total += acc.flush()
        torch.testing.assert_close(total, unsegmented, rtol=1e-10, atol=1e-12)
        assert increments == K - 1 == whole_stats.increments
        assert path_length == pytest.approx(whole_stats.path_length, rel=1e-12)
    # And the sum is the naive H, negated.
    np.testing.assert_allclose(-unsegmented.numpy(), reference_H(points, metric, loss, stabilizer),
                               rtol=1e-10, atol=1e-12)


def test_empty_flush_is_zero_and_flush_after_first_observe_is_zero():
    acc = make_acc(4, "length", True, True)
    assert torch.equal(acc.flush(), torch.zeros(4, dtype=torch.float64))
    acc.observe(1.0, torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    assert acc.stats().increments == 0
    assert torch.equal(acc.flush(), torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("stabilizer", (True, False))
def test_energy_without_loss_is_reptile(stabilizer):
    rng = np.random.default_rng(3)
    n, K = 9, 17
    points = random_points(rng, K, n)
    acc = make_acc(n, "energy", False, stabilizer)
    assert acc.config.is_reptile
    total = torch.zeros(n, dtype=torch.float64)
    for i, p in enumerate(points):
        observe(acc, p)
        if i in (3, 10):
            total += acc.flush()
    total += acc.flush()
    H = -total.numpy()
    theta_0, theta_last = points[0][1], points[-1][1]
    np.testing.assert_allclose(H, theta_0 - theta_last, rtol=1e-10, atol=1e-12)


def test_not_reptile_unless_energy_and_loss_off():
    assert LeapConfig(metric="energy", loss=False).is_reptile
    assert not LeapConfig(metric="energy", loss=True).is_reptile
    assert not LeapConfig(metric="length", loss=False).is_reptile


# ----------------------------------------------------------------------------- pairing details

@pytest.mark.parametrize("K", (1, 2, 3, 10))
def test_K_points_give_K_minus_1_increments(K):
    rng = np.random.default_rng(K)
    acc = make_acc(3, "length", True, True)
    for p in random_points(rng, K, 3):
        observe(acc, p)
    assert acc.stats().increments == K - 1


def test_gradient_is_taken_at_the_earlier_point():
    # θ0 = (0, 0), θ1 = (1, 0); f0 = 3, f1 = 1 → Δf = −2, Δf̃ = −2 (stabilizer or not).
    # Energy: M = Δθ + Δf̃ · g0 = (1, 0) − 2·(1, 2) = (−1, −4).
    # With the later gradient g1 = (5, −7) it would be (1, 0) − 2·(5, −7) = (−9, 14).
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    for stabilizer in (True, False):
        acc = make_acc(2, "energy", True, stabilizer)
        acc.observe(3.0, t(0.0, 0.0), t(1.0, 2.0))
        acc.observe(1.0, t(1.0, 0.0), t(5.0, -7.0))
        M = acc.flush()
        torch.testing.assert_close(M, t(-1.0, -4.0))
        assert not torch.allclose(M, t(-9.0, 14.0))
    # Length: the same vector divided by w = sqrt(2² + 1²).
    acc = make_acc(2, "length", True, True)
    acc.observe(3.0, t(0.0, 0.0), t(1.0, 2.0))
    acc.observe(1.0, t(1.0, 0.0), t(5.0, -7.0))
    torch.testing.assert_close(acc.flush(), t(-1.0, -4.0) / math.sqrt(5.0))


def test_stabilizer_flips_an_uphill_loss_change():
    # f goes UP by 2: with the stabilizer Δf̃ = −2, without it Δf̃ = +2.
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    for stabilizer, expected in ((True, t(1.0 - 2.0, -4.0)), (False, t(1.0 + 2.0, 4.0))):
        acc = make_acc(2, "energy", True, stabilizer)
        acc.observe(1.0, t(0.0, 0.0), t(1.0, 2.0))
        acc.observe(3.0, t(1.0, 0.0), t(0.0, 0.0))
        torch.testing.assert_close(acc.flush(), expected)


@pytest.mark.parametrize("loss", (True, False))
def test_zero_length_step_is_finite_under_length_metric(loss):
    acc = make_acc(5, "length", loss, True)
    theta = torch.randn(5, dtype=torch.float64)
    g = torch.randn(5, dtype=torch.float64)
    acc.observe(2.5, theta, g)
    acc.observe(2.5, theta.clone(), g.clone())
    s = acc.stats()
    M = acc.flush()
    assert torch.isfinite(M).all()
    assert torch.equal(M, torch.zeros(5, dtype=torch.float64))
    assert s.increments == 1
    assert math.isfinite(s.path_length) and s.path_length == 0.0
    assert math.isfinite(s.param_part_norm) and math.isfinite(s.loss_part_norm)


def test_float32_accumulator_is_finite_on_a_zero_step():
    acc = PathAccumulator(3, LeapConfig(metric="length"))
    x = torch.ones(3)
    acc.observe(1.0, x, x)
    acc.observe(1.0, x, x)
    assert torch.isfinite(acc.flush()).all()


# ----------------------------------------------------------------------------- input checks

@pytest.mark.parametrize("bad_loss", [torch.tensor(1.0), torch.tensor(1.0, requires_grad=True) * 2,
                                      torch.tensor([1.0])])
def test_observe_rejects_tensor_loss(bad_loss):
    acc = make_acc(3, "length", True, True)
    with pytest.raises(TypeError):
        acc.observe(bad_loss, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert acc.stats().increments == 0


@pytest.mark.parametrize("params_shape,grad_shape", [((4,), (3,)), ((3,), (4,)), ((3, 1), (3,)),
                                                     ((3,), (1, 3)), ((), (3,))])
def test_observe_rejects_wrong_shapes(params_shape, grad_shape):
    acc = make_acc(3, "length", True, True)
    with pytest.raises(ValueError):
        acc.observe(1.0, torch.zeros(params_shape, dtype=torch.float64),
                    torch.zeros(grad_shape, dtype=torch.float64))


def test_reset_forgets_the_previous_point():
    rng = np.random.default_rng(11)
    points = random_points(rng, 4, 3)
    acc = make_acc(3, "energy", True, True)
    observe(acc, points[0])
    acc.reset()
    observe(acc, points[1])
    assert acc.stats().increments == 0
    assert torch.equal(acc.flush(), torch.zeros(3, dtype=torch.float64))
    # The next increment pairs points[1] with points[2], never points[0].
    observe(acc, points[2])
    np.testing.assert_allclose(-acc.flush().numpy(), reference_H(points[1:3], "energy", True, True),
                               rtol=1e-12)


def test_reset_discards_unflushed_accumulation():
    rng = np.random.default_rng(12)
    points = random_points(rng, 5, 3)
    acc = make_acc(3, "length", True, True)
    for p in points[:3]:
        observe(acc, p)
    acc.reset()
    assert acc.stats().increments == 0
    assert torch.equal(acc.flush(), torch.zeros(3, dtype=torch.float64))


# ----------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("metric,loss,stabilizer", COMBOS, ids=COMBO_IDS)
def test_stats_match_naive_sums(metric, loss, stabilizer):
    rng = np.random.default_rng(21)
    n, K = 5, 15
    points = random_points(rng, K, n)
    acc = make_acc(n, metric, loss, stabilizer)
    for p in points:
        observe(acc, p)
    s = acc.stats()
    incs = reference_increments(points, metric, loss, stabilizer)
    path_length = sum(math.sqrt(dft ** 2 + float(np.dot(dth, dth))) for _h, dth, _df, dft, _w in incs)
    step_norm_sum = sum(float(np.linalg.norm(dth)) for _h, dth, *_ in incs)
    abs_df_sum = sum(abs(df) for _h, _dth, df, *_ in incs)
    param_part = sum(dth / w for _h, dth, _df, _dft, w in incs)
    loss_part = sum(dft * points[i][2] / w for i, (_h, _dth, _df, dft, w) in enumerate(incs))
    assert s.increments == K - 1
    assert s.path_length == pytest.approx(path_length, rel=1e-10)
    assert s.step_norm_sum == pytest.approx(step_norm_sum, rel=1e-10)
    assert s.abs_loss_change_sum == pytest.approx(abs_df_sum, rel=1e-10)
    assert s.param_part_norm == pytest.approx(float(np.linalg.norm(param_part)), rel=1e-10)
    assert s.loss_part_norm == pytest.approx(float(np.linalg.norm(loss_part)), rel=1e-10, abs=1e-14)
    if not loss:
        assert s.loss_part_norm == 0.0
    # The two parts are what the vector is made of.
    np.testing.assert_allclose((acc.param_part + acc.loss_part).numpy(), param_part + loss_part, rtol=1e-10)
    # Flushing zeroes the statistics.
    acc.flush()
    z = acc.stats()
    assert (z.increments, z.path_length, z.step_norm_sum, z.abs_loss_change_sum,
            z.param_part_norm, z.loss_part_norm) == (0, 0.0, 0.0, 0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------- meta_gradient

def test_meta_gradient_is_minus_mean():
    rng = np.random.default_rng(0)
    vs = [rng.normal(size=6) for _ in range(5)]
    naive = -(vs[0] + vs[1] + vs[2] + vs[3] + vs[4]) / 5
    G = meta_gradient([torch.from_numpy(v) for v in vs])
    np.testing.assert_allclose(G.numpy(), naive, rtol=1e-12)
    with pytest.raises(ValueError):
        meta_gradient([])


# ----------------------------------------------------------------------------- MetaLearner

def seg(task_id, vector, *, game="pong", init_version=0, index=0, final=True) -> Segment:
    return Segment(task_id=task_id, game=game, init_version=init_version, index=index,
                   vector=vector, stats=stats(), final=final, env_steps=100 * (index + 1))


def sgd_learner(phi, **kw) -> MetaLearner:
    """Plain SGD with lr 1 on the paper's raw estimator, so φ moves by exactly −G."""
    kw.setdefault("normalize_tasks", False)
    return MetaLearner(phi, MetaConfig(optimizer="sgd", lr=1.0, **kw))


def test_sgd_lr1_step_moves_phi_by_minus_G():
    torch.manual_seed(0)
    phi0 = torch.randn(8)
    learner = sgd_learner(phi0)
    vs = [torch.randn(8) for _ in range(3)]
    for i, v in enumerate(vs):
        assert learner.add_segment(seg(f"t{i}", v, game=f"g{i}"))
    update = learner.step()
    expected = phi0 + (vs[0] + vs[1] + vs[2]) / 3  # φ − G with G = −mean(M)
    torch.testing.assert_close(learner.phi.detach(), expected)
    assert update.version == 1 == learner.version
    assert set(update.tasks) == {"t0", "t1", "t2"}
    assert update.meta_grad_norm == pytest.approx(float(torch.linalg.vector_norm((vs[0] + vs[1] + vs[2]) / 3)),
                                                  rel=1e-5)
    # The meta-gradient is not left in .grad (LEAP.md §6).
    assert learner.phi.grad is None


def test_second_meta_step_works_after_zero_grad():
    phi0 = torch.zeros(4)
    learner = sgd_learner(phi0)
    for step in range(3):
        learner.add_segment(seg(f"s{step}", torch.ones(4), init_version=step))
        learner.step()
    torch.testing.assert_close(learner.phi.detach(), torch.full((4,), 3.0))


def test_nan_segment_rejected_and_task_never_enters_step():
    phi0 = torch.zeros(5)
    learner = sgd_learner(phi0)
    good = torch.arange(5, dtype=torch.float32)
    assert learner.add_segment(seg("good", good, game="pong"))
    # The bad task: a finite first segment, then a NaN one, then a (finite) final one.
    assert learner.add_segment(seg("bad", torch.full((5,), 100.0), game="qbert", final=False))
    nan_vec = torch.ones(5)
    nan_vec[2] = float("nan")
    assert not learner.add_segment(seg("bad", nan_vec, game="qbert", index=1, final=False))
    assert not learner.add_segment(seg("bad", torch.ones(5), game="qbert", index=2, final=True))
    inf_vec = torch.ones(5)
    inf_vec[0] = float("inf")
    assert not learner.add_segment(seg("inf", inf_vec, game="alien"))
    assert learner.is_dropped("bad") and learner.is_dropped("inf")
    assert not learner.is_dropped("good")
    rejected = {(r.task_id, r.game) for r in learner.rejections}
    assert ("bad", "qbert") in rejected and ("inf", "alien") in rejected
    assert "bad" not in learner.complete_tasks() and "inf" not in learner.complete_tasks()
    update = learner.step()
    assert update.tasks == ("good",)
    torch.testing.assert_close(learner.phi.detach(), phi0 + good)  # mean over the ONE good task
    assert torch.isfinite(learner.phi).all()


def test_diverged_segment_drops_its_task():
    phi0 = torch.zeros(3)
    learner = sgd_learner(phi0)
    assert learner.add_segment(seg("ok", torch.ones(3)))
    assert learner.add_segment(seg("div", torch.full((3,), 9.0), game="qbert", final=False))
    diverged = Segment("div", "qbert", 0, 1, torch.full((3,), 9.0), stats(), True, 200, diverged=True)
    assert not learner.add_segment(diverged)
    assert learner.is_dropped("div")
    assert any(r.task_id == "div" and r.game == "qbert" for r in learner.rejections)
    update = learner.step()
    assert update.tasks == ("ok",)
    torch.testing.assert_close(learner.phi.detach(), phi0 + torch.ones(3))


def test_discarded_task_refuses_late_segments():
    learner = sgd_learner(torch.zeros(2))
    assert learner.add_segment(seg("a", torch.ones(2), final=False))
    learner.discard_task("a")
    assert learner.is_dropped("a")
    assert not learner.add_segment(seg("a", torch.ones(2), index=1, final=True))
    assert learner.complete_tasks() == []


def test_a_dead_workers_partial_task_never_reaches_phi_and_its_retry_counts_once():
    """What the driver does when a worker dies mid-task: the learner already holds some of the
    task's segments; ``discard_task`` must throw them away, refuse the dead worker's segments
    still in flight (even a final one), and leave the retry, under its new id, counted alone."""
    phi0 = torch.zeros(3)
    learner = sgd_learner(phi0)
    assert learner.add_segment(seg("v0-t0", torch.full((3,), 100.0), index=0, final=False))
    assert learner.add_segment(seg("v0-t0", torch.full((3,), 100.0), index=1, final=False))
    learner.discard_task("v0-t0")
    # In flight when the worker died: the next segment, which happens to be the final one.
    assert not learner.add_segment(seg("v0-t0", torch.full((3,), 100.0), index=2, final=True))
    assert learner.complete_tasks() == []
    assert learner.rejections == []  # refused because discarded, not logged as a bad segment
    retry = torch.tensor([1.0, 2.0, 3.0])
    assert learner.add_segment(seg("v0-t0-r1", retry, index=0, final=True))
    assert learner.complete_tasks() == ["v0-t0-r1"]
    update = learner.step()  # default: every complete task
    assert update.tasks == ("v0-t0-r1",)
    torch.testing.assert_close(learner.phi.detach(), phi0 + retry)


def test_segments_sum_like_one_big_vector():
    torch.manual_seed(1)
    phi0 = torch.randn(6)
    parts = [torch.randn(6) for _ in range(4)]
    other = torch.randn(6)

    split = sgd_learner(phi0)
    for i, p in enumerate(parts):
        assert split.add_segment(seg("a", p, index=i, final=i == len(parts) - 1))
        if i < len(parts) - 1:
            assert "a" not in split.complete_tasks()
    split.add_segment(seg("b", other))
    split.step()

    whole = sgd_learner(phi0)
    whole.add_segment(seg("a", parts[0] + parts[1] + parts[2] + parts[3]))
    whole.add_segment(seg("b", other))
    whole.step()
    torch.testing.assert_close(split.phi.detach(), whole.phi.detach())
    torch.testing.assert_close(split.phi.detach(), phi0 + (sum(parts) + other) / 2)


def test_out_of_order_segment_rejected():
    learner = sgd_learner(torch.zeros(2))
    assert learner.add_segment(seg("a", torch.ones(2), index=0, final=False))
    assert not learner.add_segment(seg("a", torch.ones(2), index=2, final=True))
    assert learner.rejections and learner.rejections[-1].task_id == "a"


def test_step_refuses_an_incomplete_task():
    learner = sgd_learner(torch.zeros(2))
    learner.add_segment(seg("a", torch.ones(2), final=False))
    assert learner.complete_tasks() == []
    with pytest.raises(ValueError):
        learner.step(["a"])


def test_normalize_tasks_gives_unit_weight():
    phi0 = torch.zeros(3)
    learner = sgd_learner(phi0, normalize_tasks=True)
    big = torch.tensor([300.0, 0.0, 400.0])   # norm 500
    small = torch.tensor([0.0, 0.02, 0.0])    # norm 0.02
    learner.add_segment(seg("big", big))
    learner.add_segment(seg("small", small))
    learner.step()
    expected = (big / 500.0 + small / 0.02) / 2
    torch.testing.assert_close(learner.phi.detach(), phi0 + expected)


def test_sync_mode_rejects_other_versions():
    learner = sgd_learner(torch.zeros(2))
    learner.step([])  # version 1
    assert not learner.add_segment(seg("old", torch.ones(2), init_version=0))
    assert not learner.add_segment(seg("future", torch.ones(2), init_version=2))
    assert learner.add_segment(seg("now", torch.ones(2), init_version=1))
    assert learner.complete_tasks() == ["now"]


def test_async_staleness_bound():
    S = 1
    phi0 = torch.zeros(3)
    learner = sgd_learner(phi0, mode="async", max_staleness=S, stale="drop")
    # A task that started at version 0 sends its first segment while the learner is at 0.
    assert learner.add_segment(seg("slow", torch.ones(3), init_version=0, final=False))
    learner.step([])
    learner.step([])
    assert learner.version == 2
    # Its final segment is now S + 1 = 2 versions behind: rejected, and the task is dropped.
    assert not learner.add_segment(seg("slow", torch.ones(3), init_version=0, index=1))
    assert learner.is_dropped("slow")
    assert any(r.task_id == "slow" and r.game == "pong" for r in learner.rejections)
    # A brand-new task from version 0 is refused too; one from version 1 (S behind) is accepted.
    assert not learner.add_segment(seg("also_old", torch.ones(3), init_version=0))
    ok = torch.tensor([1.0, 2.0, 3.0])
    assert learner.add_segment(seg("ok", ok, init_version=1))
    assert learner.complete_tasks() == ["ok"]
    update = learner.step()
    assert update.tasks == ("ok",) and update.staleness == (1,)
    torch.testing.assert_close(learner.phi.detach(), phi0 + ok)


def test_async_tasks_that_went_stale_are_dropped_at_step_time():
    S = 1
    phi0 = torch.zeros(3)
    learner = sgd_learner(phi0, mode="async", max_staleness=S, stale="drop")
    learner.step([])  # version 1
    assert learner.add_segment(seg("early", torch.full((3,), 50.0), init_version=1))
    learner.step([])  # version 2: "early" is S behind, still fine
    learner.step([])  # version 3: "early" is 2 > S behind
    assert learner.add_segment(seg("fresh", torch.ones(3), init_version=3))
    update = learner.step(["early", "fresh"])
    assert update.tasks == ("fresh",)
    assert update.dropped_stale == ("early",)
    torch.testing.assert_close(learner.phi.detach(), phi0 + torch.ones(3))  # "early" never entered
    # Dropped tasks are forgotten: the same id cannot be stepped again.
    assert learner.complete_tasks() == []


def test_async_only_stale_tasks_leave_phi_unchanged():
    phi0 = torch.randn(3)
    learner = sgd_learner(phi0, mode="async", max_staleness=0, stale="drop")
    learner.add_segment(seg("t", torch.ones(3), init_version=0))
    learner.step([])
    update = learner.step(["t"])
    assert update.tasks == () and update.dropped_stale == ("t",)
    torch.testing.assert_close(learner.phi.detach(), phi0)


def test_async_stale_tasks_count_down_weighted_by_default():
    """meta.stale = "weight": nothing is refused for its age; a task s > S versions old enters
    G scaled by (1 + S) / (1 + s), one within S with weight 1 (literal values)."""
    S = 1
    phi0 = torch.zeros(3)
    learner = sgd_learner(phi0, mode="async", max_staleness=S)
    assert learner.cfg.stale == "weight"
    assert learner.add_segment(seg("old", torch.tensor([4.0, 0.0, 0.0]), init_version=0, final=False))
    for _ in range(3):
        learner.step([])
    assert learner.version == 3
    # 3 versions behind now: still accepted, and its task counts
    assert learner.add_segment(seg("old", torch.tensor([2.0, 0.0, 0.0]), init_version=0, index=1))
    assert learner.add_segment(seg("recent", torch.tensor([0.0, 6.0, 0.0]), init_version=2))
    update = learner.step()
    assert update.tasks == ("old", "recent") and update.dropped_stale == ()
    assert update.staleness == (3, 1) and update.weights == (0.5, 1.0)  # (1 + 1) / (1 + 3)
    # G = −(1/2)(0.5·[6, 0, 0] + [0, 6, 0]); SGD lr 1: φ = −G
    torch.testing.assert_close(learner.phi.detach(), torch.tensor([1.5, 3.0, 0.0]))
    assert [learner.staleness_weight(s) for s in range(5)] == [1.0, 1.0, 2 / 3, 0.5, 0.4]


def test_sync_mode_never_weights():
    learner = sgd_learner(torch.zeros(2), stale="weight")
    learner.step([])
    assert not learner.add_segment(seg("old", torch.ones(2), init_version=0))  # sync: only φ_v's tasks


# ----------------------------------------------------------------------------- synthetic tasks

class QuadraticFamily:
    """f_τ(θ) = ½‖A_τ θ − b_τ‖² with optima θ*_τ = c + small noise (related tasks)."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim = dim
        self.rng = np.random.default_rng(seed)
        self.center = self.rng.normal(size=dim) * 2.0 + 3.0

    def sample(self):
        d = self.dim
        q, _ = np.linalg.qr(self.rng.normal(size=(d, d)))
        s = self.rng.uniform(0.6, 1.4, size=d)
        A = torch.from_numpy(q * s)
        opt = torch.from_numpy(self.center + 0.2 * self.rng.normal(size=d))
        b = A @ opt
        return A.float(), b.float()


def train_task(A, b, phi, acc: PathAccumulator, K: int, lr: float) -> None:
    """Plain gradient descent for K steps; Leap observes (loss, θ, raw grad) before each step."""
    theta = phi.detach().clone()
    acc.reset()
    for _ in range(K):
        r = A @ theta - b
        loss = 0.5 * float(r @ r)
        grad = A.T @ r
        acc.observe(loss, theta, grad)
        theta = theta - lr * grad


def mean_path_length(family_tasks, phi, leap_cfg, K, lr) -> float:
    acc = PathAccumulator(phi.numel(), leap_cfg)
    total = 0.0
    for A, b in family_tasks:
        train_task(A, b, phi, acc, K, lr)
        total += acc.stats().path_length
    return total / len(family_tasks)


@pytest.mark.parametrize("metric", ("length", "energy"))
def test_meta_learning_shortens_paths_on_new_tasks(metric):
    dim, K, lr = 10, 20, 0.3
    family = QuadraticFamily(dim, seed=42)
    leap_cfg = LeapConfig(metric=metric)
    phi0 = torch.zeros(dim)
    learner = MetaLearner(phi0, MetaConfig(optimizer="adam", lr=0.1, normalize_tasks=False))
    acc = PathAccumulator(dim, leap_cfg)
    tasks_per_step, meta_steps = 4, 60
    for step in range(meta_steps):
        version, phi = learner.current()
        for t in range(tasks_per_step):
            A, b = family.sample()
            train_task(A, b, phi, acc, K, lr)
            s = acc.stats()
            assert learner.add_segment(Segment(f"{step}-{t}", "quad", version, 0, acc.flush(), s, True, K))
        update = learner.step()
        assert len(update.tasks) == tasks_per_step
    new_tasks = [family.sample() for _ in range(10)]
    # Judge with the length of the path on the manifold (the quantity Leap lowers).
    judge = LeapConfig(metric="length")
    before = mean_path_length(new_tasks, phi0, judge, K, lr)
    after = mean_path_length(new_tasks, learner.phi.detach(), judge, K, lr)
    assert after < 0.5 * before, (before, after)
    # φ moved towards the family's optima.
    center = torch.from_numpy(family.center).float()
    assert torch.linalg.vector_norm(learner.phi.detach() - center) < 0.5 * torch.linalg.vector_norm(phi0 - center)


def drive_observe_step_in_rows(acc: PathAccumulator, points, flush_every: int, scales, block: int) -> torch.Tensor:
    """``drive_observe_step`` with the buffers of ``LeapInputs``: gradients and steps written
    into row u mod 2·block of two matrices at update u, and the accumulator told to defer."""
    n, rows = acc.num_params, 2 * block
    theta = torch.from_numpy(points[0][1].copy())
    steps = torch.zeros(rows, n, dtype=torch.float64)
    grads = torch.zeros(rows, n, dtype=torch.float64)
    acc.defer(grads, block)
    acc.defer(steps, block)
    total = torch.zeros(n, dtype=torch.float64)
    for i, (f, _th, g) in enumerate(points):
        grads[i % rows].copy_(torch.from_numpy(g))
        if i == 0:
            acc.observe_step(f, theta, None, None)
        else:
            acc.observe_step(f, theta, steps[(i - 1) % rows], grads[(i - 1) % rows], scales[i - 1])
        if i % flush_every == flush_every - 1:
            total += acc.flush()
        grads[i % rows].mul_(scales[i])
        if i + 1 < len(points):
            steps[i % rows].copy_(torch.from_numpy(points[i + 1][1] - theta.numpy()))
            theta.add_(steps[i % rows])
    return total + acc.flush()


@pytest.mark.parametrize("metric,loss,stabilizer", COMBOS, ids=COMBO_IDS)
def test_deferred_rows_give_the_naive_reference(metric, loss, stabilizer):
    """Adding the gradient and step rows a block at a time (one addmv) is the same LEAP.md §2
    sum, whatever the block and wherever the flushes fall (mid-block included)."""
    rng = np.random.default_rng(2468)
    n, K = 7, 31
    points = random_points(rng, K, n)
    scales = rng.uniform(0.05, 1.0, size=K)
    expected = reference_H(points, metric, loss, stabilizer)
    for block in (1, 3, 4):
        for flush_every in (5, 1, 10 ** 6):
            acc = make_acc(n, metric, loss, stabilizer)
            total = drive_observe_step_in_rows(acc, points, flush_every, scales, block)
            np.testing.assert_allclose(-total.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_deferred_rows_wait_for_the_end_of_their_block():
    """The accumulator is not touched until a block's last row arrives, then holds the block's sum."""
    acc = make_acc(3, "energy", True, False)
    grads = torch.zeros(4, 3, dtype=torch.float64)
    acc.defer(grads, 2)
    theta = torch.zeros(3, dtype=torch.float64)
    step = torch.zeros(3, dtype=torch.float64)
    acc.observe_step(1.0, theta, None, None)
    grads[0].copy_(torch.tensor([1.0, 2.0, 3.0]))
    acc.observe_step(3.0, theta, step, grads[0])  # Δf = 2: waits (row 0 of the block 0–1)
    assert torch.count_nonzero(acc._loss_part) == 0
    grads[1].copy_(torch.tensor([1.0, 0.0, 0.0]))
    acc.observe_step(2.0, theta, step, grads[1])  # Δf = −1: the block is complete
    assert acc._loss_part.tolist() == [1.0, 4.0, 6.0]  # 2·g_0 − 1·g_1
    grads[2].copy_(torch.tensor([0.0, 0.0, 1.0]))
    acc.observe_step(6.0, theta, step, grads[2])  # Δf = 4: waits until read
    assert acc.loss_part.tolist() == [1.0, 4.0, 10.0]


def test_defer_refuses_a_matrix_of_the_wrong_shape():
    acc = make_acc(3, "energy", True, True)
    with pytest.raises(ValueError, match="contiguous"):
        acc.defer(torch.zeros(4, 5), 2)
    with pytest.raises(ValueError, match="block"):
        acc.defer(torch.zeros(4, 3), 5)


def test_energy_path_stats_every_n_keeps_the_vector_and_holds_the_step_norm():
    """leap.path_stats_every = 3 under energy: the step is handed over at points 1, 4, 7, …
    only; the vector is the exact one, and the path statistics count the last measured
    ‖Δθ‖ at the other points, with Δf̃ exact at every point."""
    rng = np.random.default_rng(77)
    n, K, every = 6, 14, 3
    points = random_points(rng, K, n)
    for loss, stabilizer in ((True, True), (True, False), (False, False)):
        acc = PathAccumulator(n, LeapConfig(metric="energy", loss=loss, stabilizer=stabilizer,
                                            path_stats_every=every), dtype=torch.float64)
        theta = torch.from_numpy(points[0][1].copy())
        grads = [torch.from_numpy(p[2].copy()) for p in points]
        seen = []
        for i, (f, th, _g) in enumerate(points):
            theta.copy_(torch.from_numpy(th))
            if i == 0:
                acc.observe_step(f, theta, None, None)
                continue
            step = torch.from_numpy(th - points[i - 1][1]) if (i - 1) % every == 0 else None
            acc.observe_step(f, theta, step, grads[i - 1])
            if i == 7:  # a flush mid-task keeps the held norm
                seen.append(acc.stats())
                total = acc.flush()
        seen.append(acc.stats())
        total = total + acc.flush()
        np.testing.assert_allclose(-total.numpy(), reference_H(points, "energy", loss, stabilizer),
                                   rtol=1e-10, atol=1e-12)
        held, lengths, norms = 0.0, [], []
        for i, (_h, dth, _df, dft, _w) in enumerate(reference_increments(points, "energy", loss, stabilizer)):
            if i % every == 0:
                held = float(np.linalg.norm(dth))
            norms.append(held)
            lengths.append(float(np.hypot(dft, held)))
        assert [s.increments for s in seen] == [7, 6] and [s.measured_steps for s in seen] == [3, 2]
        assert seen[0].path_length + seen[1].path_length == pytest.approx(sum(lengths), rel=1e-12)
        assert seen[1].step_norm_sum == pytest.approx(sum(norms[7:]), rel=1e-12)


def test_path_stats_every_is_refused_with_length_and_below_one():
    with pytest.raises(ValueError, match="path_stats_every must be 1 with metric 'length'"):
        LeapConfig(metric="length", path_stats_every=2)
    with pytest.raises(ValueError, match="path_stats_every must be an integer ≥ 1"):
        LeapConfig(metric="energy", path_stats_every=0)
    acc = PathAccumulator(3, LeapConfig(metric="energy"))
    acc.observe_step(1.0, torch.zeros(3), None, None)
    with pytest.raises(ValueError, match="path_stats_every > 1"):
        acc.observe_step(2.0, torch.zeros(3), None, torch.zeros(3))
