"""Issue 9's settings and diagnostics: each against a literal restatement or known numbers,
and each shown to change nothing when it is off."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from leap_rl.a2c import A2CLoss
from leap_rl.config import A2CConfig, MetaConfig, ModelConfig, load
from leap_rl.diagnostics import dormant_units, encoder_diagnostics, layer_movement, redo_scores, unit_activity
from leap_rl.leap import LeapConfig
from leap_rl.meta_learner import MetaLearner
from leap_rl.messages import PathStats, Segment
from leap_rl.models import ActorCritic, encoder_layout, initial_encoder
from leap_rl.optim import TFRMSprop, inner_optimizer
from leap_rl.plasticity import DormantRecycler, bound_unit_steps, recycle_units
from leap_rl.schedule import plan_probes, probe_due
from leap_rl.task import LeapLoss

MNIH = ModelConfig(network="mnih2013")


# ------------------------------------------------------------------ inner optimizer

def test_tf_rmsprop_matches_a_literal_restatement_of_its_update():
    rng = np.random.default_rng(0)
    lr, alpha, eps = 7e-4, 0.99, 1e-5
    theta = rng.normal(size=7)
    p = nn.Parameter(torch.tensor(theta, dtype=torch.float64))
    opt = TFRMSprop([p], lr=lr, alpha=alpha, eps=eps)
    square_avg = np.ones(7)  # TF 1 starts the average at 1
    for _ in range(20):
        g = rng.normal(size=7) * 3
        p.grad = torch.tensor(g)
        opt.step()
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        theta = theta - lr * g / np.sqrt(square_avg + eps)  # eps inside the root
        np.testing.assert_allclose(p.detach().numpy(), theta, rtol=1e-12, atol=1e-15)


def test_tf_rmsprop_first_step_is_about_lr_times_g_while_torch_takes_ten_lr_sign_g():
    g = torch.tensor([0.1, -0.2, 0.05])  # large enough that eps plays no part
    steps = {}
    for kind in ("rmsprop", "rmsprop_tf"):
        p = nn.Parameter(torch.zeros(3))
        opt = inner_optimizer([p], A2CConfig(optimizer=kind))
        p.grad = g.clone()
        opt.step()
        steps[kind] = -p.detach()
    lr = A2CConfig().lr
    torch.testing.assert_close(steps["rmsprop"], 10 * lr * torch.sign(g), rtol=0.02, atol=0)
    torch.testing.assert_close(steps["rmsprop_tf"], lr * g / torch.sqrt(0.99 + 0.01 * g * g + 1e-5),
                               rtol=1e-5, atol=0)
    assert bool((steps["rmsprop_tf"].abs() < 1.01 * lr * g.abs()).all())


def test_default_inner_optimizer_is_pytorch_rmsprop_bit_for_bit_with_the_configured_settings():
    """Ours, so that it can write its steps out for Leap: the same θ as torch.optim.RMSprop
    bit for bit, with and without step_out, and the step written out is the one added."""
    torch.manual_seed(0)
    shapes = [(16, 4, 8, 8), (1000,), (7, 3)]
    start = [torch.randn(s) for s in shapes]
    theirs = [nn.Parameter(x.clone()) for x in start]
    ours = [nn.Parameter(x.clone()) for x in start]
    kept = [nn.Parameter(x.clone()) for x in start]
    outs = {p: torch.zeros_like(p) for p in kept}
    cfg = A2CConfig()
    opts = (torch.optim.RMSprop(theirs, lr=cfg.lr, alpha=cfg.rms_alpha, eps=cfg.rms_eps),
            inner_optimizer(ours, cfg), inner_optimizer(kept, cfg, step_out=outs))
    group = opts[1].param_groups[0]
    assert (group["lr"], group["alpha"], group["eps"]) == (7e-4, 0.99, 1e-5)
    for i in range(20):
        grads = [torch.randn(s) * 10.0 ** (i % 5 - 3) for s in shapes]
        before = [p.detach().clone() for p in kept]
        for params in (theirs, ours, kept):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        for opt in opts:
            opt.step()
        for a, b, c, b0 in zip(theirs, ours, kept, before):
            assert torch.equal(a, b) and torch.equal(a, c)
            torch.testing.assert_close(outs[c], c.detach() - b0, rtol=1e-3, atol=1e-6)


def test_tf_rmsprop_writes_out_the_step_it_adds_without_changing_it():
    torch.manual_seed(1)
    a = nn.Parameter(torch.randn(50))
    b = nn.Parameter(a.detach().clone())
    cfg = A2CConfig(optimizer="rmsprop_tf")
    out = torch.zeros(50)
    plain, kept = inner_optimizer([a], cfg), inner_optimizer([b], cfg, step_out={b: out})
    assert isinstance(plain, TFRMSprop)
    for _ in range(5):
        g = torch.randn(50)
        before = b.detach().clone()
        a.grad, b.grad = g.clone(), g.clone()
        plain.step()
        kept.step()
        assert torch.equal(a, b)
        torch.testing.assert_close(out, b.detach() - before, rtol=1e-3, atol=1e-7)


# ------------------------------------------------------------------ the loss signal f

def _loss(total: float, value: float) -> A2CLoss:
    t = lambda x: torch.tensor(x)  # noqa: E731
    return A2CLoss(t(total), t(0.0), t(value), t(0.0))


def test_leap_loss_total_value_and_smoothed_on_literal_values():
    totals, values = [1.0, 3.0, 2.0], [0.5, 0.25, 4.0]
    signal = {k: LeapLoss(LeapConfig(loss_signal=k, loss_smoothing=0.5)) for k in ("total", "value", "smoothed")}
    got = {k: [s(_loss(a, b), a) for a, b in zip(totals, values)] for k, s in signal.items()}
    assert got["total"] == totals
    assert got["value"] == values
    assert got["smoothed"] == [1.0, 0.5 * 1.0 + 0.5 * 3.0, 0.5 * 2.0 + 0.5 * 2.0]


def test_bad_loss_signal_is_one_clear_config_error():
    with pytest.raises(ValueError, match="leap.loss_signal must be one of"):
        load("ci", overrides=('leap.loss_signal="policy"',))


# ------------------------------------------------------------------ diagnostics

def test_redo_score_is_activity_over_the_layer_mean():
    a = torch.tensor([0.0, 1.0, 2.0, 5.0])  # mean 2
    torch.testing.assert_close(redo_scores(a), torch.tensor([0.0, 0.5, 1.0, 2.5]))


def test_unit_activity_of_conv_channels_averages_frames_and_positions():
    model = ActorCritic(MNIH, num_actions=2)
    probe = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    activity = unit_activity(model, probe)
    assert list(activity) == ["conv1", "conv2", "fc"]
    with torch.no_grad():
        literal = torch.relu(model.encoder[0][0](probe.float() / 255.0)).abs().mean(dim=(0, 2, 3))
    torch.testing.assert_close(activity["conv1"], literal)
    assert activity["fc"].shape == (256,)


def test_dormant_units_are_the_ones_silenced_on_purpose():
    model = ActorCritic(MNIH, num_actions=2)
    probe = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    before = dormant_units(model, probe, tau=0.1)
    fc = model.encoder[1][0]
    with torch.no_grad():
        fc.bias[[3, 7, 200]] = -1e4  # never active: ReDo score 0
    after = dormant_units(model, probe, tau=0.1)
    silenced = {3, 7, 200}
    # Silencing units lowers the layer's mean activity, so the others' scores can only rise:
    # every unit dormant now is a silenced one or was dormant before.
    assert silenced <= set(after["fc"].tolist())
    assert set(after["fc"].tolist()) - silenced <= set(before["fc"].tolist())
    assert torch.equal(after["conv1"], before["conv1"])


def test_layer_movement_on_known_vectors():
    model = ActorCritic(MNIH, num_actions=2)
    layout = encoder_layout(model)
    phi0 = torch.ones(model.encoder_flat.numel())
    phi = phi0.clone()
    conv2 = layout[1]
    phi[conv2.weight] += 1.0  # every weight of conv2 doubles, its bias stays
    moved = layer_movement(phi, phi0, layout)
    n_w, n_b = conv2.weight.stop - conv2.weight.start, conv2.bias.stop - conv2.bias.start
    assert moved["conv1"] == 0.0 and moved["fc"] == 0.0
    assert moved["conv2"] == pytest.approx(math.sqrt(n_w) / math.sqrt(n_w + n_b))


def test_encoder_diagnostics_count_units_of_the_meta_learned_layers_only():
    probe = torch.randint(0, 256, (4, 4, 84, 84), dtype=torch.uint8)
    cfg = dataclasses.replace(MNIH, encoder_includes_fc=False)
    phi0 = initial_encoder(cfg, 0)
    d = encoder_diagnostics(cfg, phi0, phi0, probe, tau=0.1)
    assert set(d["dormant_by_layer"]) == {"conv1", "conv2"}
    assert d["moved_by_layer"] == {"conv1": 0.0, "conv2": 0.0}
    dormant = sum(d["dormant_by_layer"][k] * n for k, n in (("conv1", 16), ("conv2", 32)))
    assert d["dormant_fraction"] == pytest.approx(dormant / 48)


# ------------------------------------------------------------------ the probe tasks

def test_probe_tasks_are_the_same_at_every_measurement():
    cfg = load("quick", overrides=("meta.meta_steps=7", "runtime.probe_tasks=4", "runtime.probe_every=3"))
    games = ("seaquest", "ms_pacman", "qbert")
    due = [v for v in range(8) if probe_due(cfg, v)]
    assert due == [0, 3, 6, 7]
    plans = [plan_probes(cfg, games, v) for v in due]
    first = [(s.game, s.seed, s.env_steps) for s in plans[0]]
    assert [s.game for s in plans[0]] == ["seaquest", "ms_pacman", "qbert", "seaquest"]
    assert len({s.seed for s in plans[0]}) == 4
    for plan, v in zip(plans, due):
        assert [(s.game, s.seed, s.env_steps) for s in plan] == first
        assert all(s.probe and s.init_version == v for s in plan)


def test_no_probe_when_off():
    cfg = load("quick", overrides=("runtime.probe_tasks=0",))
    assert not any(probe_due(cfg, v) for v in range(cfg.meta.meta_steps + 1))


# ------------------------------------------------------------------ bounded unit steps

def test_bounded_unit_step_caps_exactly_the_units_over_the_bound():
    model = ActorCritic(MNIH, num_actions=2)
    layout = encoder_layout(model)
    before = model.encoder_flat.clone()
    gen = torch.Generator().manual_seed(1)
    after = before + 1e-3 * torch.randn(before.shape, generator=gen)
    fc = layout[2]
    after[fc.weight].view(256, -1)[5] += 0.5  # one unit's weights pushed far
    proposed = after.clone()
    scaled = bound_unit_steps(before, after, layout, max_ratio=0.01)
    for layer in layout:
        w0, w1 = before[layer.weight].view(layer.units, -1), after[layer.weight].view(layer.units, -1)
        b0, b1 = before[layer.bias].view(-1, 1), after[layer.bias].view(-1, 1)
        wp, bp = proposed[layer.weight].view(layer.units, -1), proposed[layer.bias].view(-1, 1)
        step = torch.cat([w1 - w0, b1 - b0], 1).norm(dim=1)
        proposed_step = torch.cat([wp - w0, bp - b0], 1).norm(dim=1)
        limit = 0.01 * torch.cat([w0, b0], 1).norm(dim=1)
        over = proposed_step > limit
        torch.testing.assert_close(step[over], limit[over])  # scaled onto the bound
        assert torch.equal(w1[~over], wp[~over]) and torch.equal(b1[~over], bp[~over])  # untouched
        # the direction of a scaled step is kept
        torch.testing.assert_close((w1 - w0)[over] * proposed_step[over, None],
                                   (wp - w0)[over] * step[over, None])
    assert scaled >= 1
    # the pre-activation bound holds for any input
    w0 = before[fc.weight].view(256, -1)
    w1 = after[fc.weight].view(256, -1)
    x = torch.rand(10, w0.shape[1])
    shift = ((w1 - w0) @ x.T + (after[fc.bias] - before[fc.bias])[:, None]).abs()
    bound = 0.01 * torch.cat([w0, before[fc.bias][:, None]], 1).norm(dim=1)[:, None] \
        * torch.cat([x, torch.ones(10, 1)], 1).norm(dim=1)[None, :]
    assert bool((shift <= bound * (1 + 1e-5)).all())


def _segment(task: str, vector: torch.Tensor) -> Segment:
    return Segment(task, "pong", 0, 0, vector, PathStats(1, 1.0, 1.0, 1, 0.0, 1.0, 0.0), True, 10)


def test_meta_step_with_guards_off_equals_the_plain_optimizer_step():
    phi = initial_encoder(MNIH, 0)
    layout = encoder_layout(ActorCritic(MNIH, num_actions=1))
    vector = torch.randn(phi.shape, generator=torch.Generator().manual_seed(2))
    plain = MetaLearner(phi, MetaConfig(optimizer="adam", lr=1e-3, normalize_tasks=False))
    guarded_off = MetaLearner(phi, MetaConfig(optimizer="adam", lr=1e-3, normalize_tasks=False,
                                              max_unit_step=0.0, recycle_dormant=False), layout)
    for learner in (plain, guarded_off):
        learner.add_segment(_segment("t0", vector))
        update = learner.step()
    reference = phi.clone().requires_grad_(True)
    opt = torch.optim.Adam([reference], lr=1e-3)
    reference.grad = -vector
    opt.step()
    assert torch.equal(plain.phi.detach(), reference.detach())
    assert torch.equal(guarded_off.phi.detach(), reference.detach())
    assert update.units_bounded == 0 and update.recycled is None


def test_meta_learner_refuses_guards_it_cannot_run():
    with pytest.raises(ValueError, match="layout"):
        MetaLearner(torch.zeros(3), MetaConfig(max_unit_step=0.1))
    with pytest.raises(ValueError, match="DormantRecycler"):
        MetaLearner(torch.zeros(3), MetaConfig(recycle_dormant=True))


# ------------------------------------------------------------------ recycling

def _phi_with_silenced_units(cfg: ModelConfig) -> tuple[torch.Tensor, ActorCritic]:
    model = ActorCritic(cfg, num_actions=1)
    model.load_encoder(initial_encoder(cfg, 0))
    with torch.no_grad():
        model.encoder[0][0].bias[[1, 4]] = -1e4  # conv1 channels 1 and 4
        model.encoder[1][0].bias[[10, 11]] = -1e4  # fc units 10 and 11
    return model.encoder_flat.clone(), model


def test_recycling_resets_exactly_the_units_it_reports():
    probe = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    phi, model = _phi_with_silenced_units(MNIH)
    expected = {k: v.tolist() for k, v in dormant_units(model, probe, 0.1).items()}
    assert {1, 4} <= set(expected["conv1"]) and {10, 11} <= set(expected["fc"])
    recycler = DormantRecycler(MNIH, probe, tau=0.1, seed=0)
    new = phi.clone()
    reported, touched = recycler(new, version=1)
    assert reported == expected

    layout = encoder_layout(model)
    changed = torch.nonzero(new != phi).flatten()
    assert set(changed.tolist()) <= set(touched.tolist())  # nothing outside what it reports
    # φ as ReDo describes it: the reported units' rows fresh (taken from the result, checked
    # to be orthogonal-init rows), their biases 0, then their outgoing weights 0.
    expected = phi.clone()
    for i, layer in enumerate(layout):
        ids = reported[layer.name]
        rows = new[layer.weight].view(layer.units, -1)[ids]
        if ids:
            assert not torch.equal(rows, phi[layer.weight].view(layer.units, -1)[ids])
            norms = rows.norm(dim=1)  # rows of an orthogonal matrix × √2 (less the zeroed inputs)
            assert bool((norms <= math.sqrt(2) * (1 + 1e-5)).all())
            if i == 0:
                torch.testing.assert_close(norms, torch.full((len(ids),), math.sqrt(2)))
        expected[layer.weight].view(layer.units, -1)[ids] = rows
        expected[layer.bias][ids] = 0.0
    for layer, nxt in zip(layout, layout[1:]):
        expected[nxt.weight].view(nxt.units, layer.units, -1)[:, reported[layer.name]] = 0.0
    assert torch.equal(new, expected)


def test_recycling_is_deterministic_in_seed_and_version():
    probe = torch.randint(0, 256, (4, 4, 84, 84), dtype=torch.uint8)
    phi, _ = _phi_with_silenced_units(MNIH)
    outs = []
    for seed, version in ((0, 1), (0, 1), (0, 2)):
        new = phi.clone()
        DormantRecycler(MNIH, probe, 0.1, seed)(new, version)
        outs.append(new)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_meta_learner_resets_adam_moments_exactly_where_it_recycled():
    probe = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    phi, _ = _phi_with_silenced_units(MNIH)
    recycler = DormantRecycler(MNIH, probe, 0.1, seed=0)
    learner = MetaLearner(phi, MetaConfig(optimizer="adam", lr=1e-5, recycle_dormant=True), (), recycler)
    vector = torch.randn(phi.shape, generator=torch.Generator().manual_seed(3))
    learner.add_segment(_segment("t0", vector))
    update = learner.step()
    assert update.recycled is not None and {10, 11} <= set(update.recycled["fc"])
    state = learner.optimizer.state[learner.phi]
    zero_avg = torch.nonzero(state["exp_avg"] == 0).flatten()
    # the touched indices, recomputed from the reported units on the pre-recycling φ
    _, touched = DormantRecycler(MNIH, probe, 0.1, seed=0)(
        _adam_step(phi, vector, 1e-5), version=1)
    assert set(zero_avg.tolist()) == set(touched.tolist())
    assert bool((state["exp_avg_sq"][touched] == 0).all())


def _adam_step(phi: torch.Tensor, vector: torch.Tensor, lr: float) -> torch.Tensor:
    p = phi.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    p.grad = -vector
    opt.step()
    return p.detach().clone()


def test_recycle_units_with_nothing_to_recycle_changes_nothing():
    model = ActorCritic(MNIH, num_actions=1)
    phi = model.encoder_flat.clone()
    touched = recycle_units(phi, encoder_layout(model), {"fc": torch.tensor([], dtype=torch.long)},
                            torch.Generator().manual_seed(0))
    assert touched.numel() == 0 and torch.equal(phi, model.encoder_flat)


# ------------------------------------------------------------------ LayerNorm

def test_layer_norm_off_builds_the_unchanged_mnih2013_trunk():
    model = ActorCritic(MNIH, num_actions=3)
    kinds = [type(m).__name__ for m in model.encoder.modules() if not isinstance(m, nn.Sequential)]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten", "Linear", "ReLU"]
    assert model.encoder_flat.numel() == 676_144


def test_layer_norm_on_normalizes_before_every_relu_and_keeps_the_weight_init():
    cfg = dataclasses.replace(MNIH, layer_norm=True)
    model = ActorCritic(cfg, num_actions=3)
    kinds = [type(m).__name__ for m in model.encoder.modules() if not isinstance(m, nn.Sequential)]
    assert kinds == ["Conv2d", "LayerNorm", "ReLU", "Conv2d", "LayerNorm", "ReLU", "Flatten",
                     "Linear", "LayerNorm", "ReLU"]
    plain, normed = initial_encoder(MNIH, 0), initial_encoder(cfg, 0)
    for a, b in zip(encoder_layout(ActorCritic(MNIH, 1)), encoder_layout(model)):
        assert torch.equal(plain[a.weight], normed[b.weight])  # same weights, LN params added
    logits, value = model(torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8))
    assert logits.shape == (2, 3) and value.shape == (2,)


# ------------------------------------------------------------------ off changes nothing, in the loop

def _rollout(num_actions: int, seed: int):
    from leap_rl.task import Rollout
    g = torch.Generator().manual_seed(seed)
    T, N = 5, 4
    return Rollout(obs=torch.randint(0, 256, (T, N, 4, 84, 84), dtype=torch.uint8, generator=g),
                   actions=torch.randint(0, num_actions, (T, N), generator=g),
                   rewards=torch.randn(T, N, generator=g), dones=torch.zeros(T, N),
                   last_obs=torch.randint(0, 256, (N, 4, 84, 84), dtype=torch.uint8, generator=g))


@pytest.mark.parametrize("signal", ["total", "value"])
def test_loss_signal_is_the_f_leap_observes(signal):
    from leap_rl.leap import PathAccumulator
    from leap_rl.leap_inputs import LeapInputs
    from leap_rl.task import a2c_update
    cfg = load("ci")
    seen: dict[str, list[float]] = {}
    for name, leap_loss in (("default", None), (signal, LeapLoss(LeapConfig(loss_signal=signal)))):
        torch.manual_seed(0)
        model = ActorCritic(cfg.model, num_actions=3)
        inputs = LeapInputs(model.encoder_flat.numel(), cfg.leap)
        optimizer = inner_optimizer(model.parameters(), cfg.a2c, step_out=inputs.step_out(model))
        acc = PathAccumulator(model.encoder_flat.numel(), cfg.leap)
        observed = []
        acc.observe_step = lambda f, *vectors, _o=observed, **_: _o.append(f)  # record what Leap is given
        losses = [a2c_update(model, optimizer, _rollout(3, s), cfg.a2c, acc, inputs, leap_loss) for s in range(3)]
        seen[name] = observed
        seen[name + "_terms"] = [(l.total.item(), l.value.item()) for l in losses]
    assert seen["default"] == [t for t, _ in seen["default_terms"]]  # the total when unset
    if signal == "total":
        assert seen["total"] == seen["default"]
    else:
        assert seen["value"] == [v for _, v in seen["value_terms"]]
        assert seen["value"] != seen["default"]


@pytest.mark.slow
def test_probe_tasks_leave_phi_as_a_run_without_them(tmp_path):
    from leap_rl.meta_training import run_sequential
    from leap_rl.run_dir import RunDir
    phis = {}
    for probes in (0, 1):
        cfg = load("ci", overrides=(f"runtime.probe_tasks={probes}",))
        run = RunDir.create(tmp_path / f"p{probes}", cfg, tensorboard=False)
        phis[probes] = run_sequential(cfg, run, echo=lambda line: None).phi.detach()
        rows = run.rows("probe")
        assert [r["version"] for r in rows] == ([] if probes == 0 else [0, 1, 2])
        for r in rows:  # the same fixed task every time: only φ differs between rows
            assert [t["game"] for t in r["tasks"]] == [cfg.meta.games[0]]
        for r in run.rows("meta_step"):  # the diagnostics are on every meta-step row
            assert 0 <= r["dormant_fraction"] <= 1 and 0 <= r["dead_unit_fraction"] <= 1
            assert set(r["dormant_by_layer"]) == set(r["moved_by_layer"]) == {"conv1", "conv2", "fc"}
            assert all(v > 0 for v in r["moved_by_layer"].values())
    assert not torch.equal(phis[0], initial_encoder(load("ci").model, 0))
    assert torch.equal(phis[0], phis[1])
