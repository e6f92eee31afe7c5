"""``leap-rl bench`` on a tiny budget: every measurement runs, the table and the JSON are complete."""

import argparse
import json
import math
import sys

import pytest

import bench
from bench.ingest import bench_ingest_ray
from bench.ray_workers import bench_ray_workers, start_ray
from bench.timing import serial_limit
from leap_rl.config import ConfigError, load


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_serial_limit_adds_the_times_per_env_step():
    # 1000 steps/s of env + 1000 of acting + 2000 of updates: 1 + 1 + 0.5 ms per step
    assert serial_limit(1000.0, 1000.0, 2000.0) == pytest.approx(400.0)


def test_bench_on_a_tiny_budget_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--game", "pong", "--preset", "ci", "--seconds", "0.05",
                              "--no-ray", "--json", str(out)])
    assert bench.run(args) == 0
    table = capsys.readouterr().out
    for text in ("env stepping alone", "acting alone", "update alone", "limit 1/(1/env",
                 "single-worker loop", "Leap per update", "mnih2013", "nature", "learner ingest"):
        assert text in table, text

    res = json.loads(out.read_text())
    assert res["setup"]["game"] == "pong" and res["setup"]["network"] == "mnih2013"
    assert res["machine"]["torch_threads"] == 1
    N, T = res["setup"]["num_envs"], res["setup"]["unroll"]
    assert (N, T) == (4, 5)  # the ci preset's
    lim = res["limits"]
    for clock in ("env_steps_per_s", "env_steps_per_cpu_s"):
        rates = lim[clock]
        assert set(rates) == {"env", "act", "update", "limit"}
        assert all(positive(v) for v in rates.values())
        # The limit is the serial one of exactly these three parts (one core does them in turn).
        assert rates["limit"] == pytest.approx(serial_limit(rates["env"], rates["act"], rates["update"]))
    # One repetition: the per-step times and the rates are two views of the same measurements.
    wall = lim["env_steps_per_s"]
    assert lim["env_step_ms"] == pytest.approx(1e3 * N / wall["env"])
    assert lim["act_ms"] == pytest.approx(1e3 * N / wall["act"])
    assert lim["update_ms"] == pytest.approx(1e3 * N * T / wall["update"])
    loop = res["loop"]
    for key in ("env_steps_per_s", "env_steps_per_cpu_s", "whole_call_env_steps_per_s"):
        assert positive(loop[key]), key
    assert loop["fraction_of_limit"] == pytest.approx(loop["env_steps_per_s"] / wall["limit"])
    assert loop["fraction_of_limit_cpu"] == pytest.approx(loop["env_steps_per_cpu_s"] / lim["env_steps_per_cpu_s"]["limit"])
    # The loop ran whole updates (at least 4) and was timed from the first progress row (after
    # update 1) to the last, so one update's steps are outside the timed window.
    ov = res["loop_overlap"]  # the ci preset's 4 envs split in two halves
    assert positive(ov["env_steps_per_s"])
    assert ov["fraction_of_limit"] == pytest.approx(ov["env_steps_per_s"] / wall["limit"])
    assert ov["over_serial_loop"] == pytest.approx(ov["env_steps_per_s"] / loop["env_steps_per_s"])
    two = res["loop_overlap_update_threads"]  # these machines have 2 cores: the update gets both
    assert two["update_threads"] == 2 and positive(two["env_steps_per_s"])
    assert two["fraction_of_limit"] == pytest.approx(two["env_steps_per_s"] / wall["limit"])
    assert "the update on 2 threads (runtime.update_threads)" in table
    whole = loop["whole_call_env_steps"]
    assert whole % (N * T) == 0 and whole >= 4 * N * T
    assert loop["env_steps_timed"] == whole - N * T
    assert positive(res["task_setup"]["make_vec_env_s"])
    assert set(res["leap_overhead"]) == {"mnih2013", "nature"}
    for row in res["leap_overhead"].values():
        for key in ("update_ms", "leap_ms", "axpy_ms", "reference_ms"):
            assert positive(row[key]), key
        assert row["frames_per_update"] == N * T
        assert row["fraction"] == pytest.approx(row["leap_ms"] / row["update_ms"])
        # Leap in axpys: observe_step's time, and with the optimizer's step-out, over one axpy's
        assert row["leap_axpys"] == pytest.approx(row["leap_ms"] / row["axpy_ms"])
        assert row["leap_hot_axpys"] == pytest.approx(row["leap_ms"] / row["axpy_hot_ms"])
        assert row["leap_total_axpys"] == pytest.approx((row["leap_ms"] + row["step_out_extra_ms"]) / row["axpy_ms"])
        assert row["reference_axpys"] == pytest.approx(row["reference_ms"] / row["axpy_ms"])
    assert res["leap_overhead"]["mnih2013"]["encoder_params"] == 676_144
    assert res["leap_overhead"]["nature"]["encoder_params"] == 1_684_128  # 3 convs + FC-512
    ctx = res["ingest_context"]
    # A worker of this preset sends one segment per segment_every updates of N·T env steps.
    assert ctx["preset_segments_per_s_per_worker"] == pytest.approx(
        loop["env_steps_per_s"] / (res["setup"]["segment_every"] * N * T))
    assert ctx["preset_segment_interval_s"] == pytest.approx(1 / ctx["preset_segments_per_s_per_worker"])
    for net, row in res["ingest"].items():
        assert positive(row["plain_segments_per_s"])
        assert "ray_segments_per_s" not in row  # --no-ray
        assert row["workers_fed_at_1_segment_per_s"] == row["plain_segments_per_s"]
        assert row["segment_mib"] == pytest.approx(res["leap_overhead"][net]["encoder_params"] * 4 / 2 ** 20)
    assert res["ingest"]["mnih2013"]["workers_fed_at_preset_interval"] == pytest.approx(
        res["ingest"]["mnih2013"]["plain_segments_per_s"] / ctx["preset_segments_per_s_per_worker"])
    assert "ray" not in res and "sb3" not in res
    # The table shows the JSON's numbers.
    limit_line = next(line for line in table.splitlines() if line.startswith("limit 1/(1/env"))
    assert f"{wall['limit']:14.0f}" in limit_line


def test_bench_rejects_bad_options():
    from leap_rl.config import ConfigError

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(ConfigError, match="--seconds"):
        bench.run(parser.parse_args(["--seconds", "0"]))
    with pytest.raises(ConfigError, match="--workers-max"):
        bench.run(parser.parse_args(["--workers-max", "0"]))


@pytest.mark.slow
def test_ray_measurements_on_a_tiny_budget():
    """Two Ray workers and the LearnerActor's ingest (a local Ray on loopback)."""
    started = start_ray(2)
    try:
        cfg = load("ci")
        row = bench_ray_workers(cfg, "pong", 2, 80)
        assert row["workers"] == 2 and row["env_steps"] == 160
        assert positive(row["env_steps_per_s"]) and positive(row["busy_env_steps_per_s"])
        if sys.platform.startswith("linux"):  # read from /proc
            assert positive(row["worker_cores_used"])
        timing = bench_ingest_ray(cfg, "mnih2013", 0.05, window=2)
        assert timing.iters >= 3 and positive(timing.rate(1))
    finally:
        if started:
            import ray
            ray.shutdown()


@pytest.mark.slow
def test_bench_times_the_rllib_inner_loop_beside_ours(tmp_path, capsys):
    """--rllib PPO: one task each way on a local Ray, env and gradient steps/s, the ratio."""
    out = tmp_path / "bench.json"
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--game", "pong", "--preset", "ci", "--seconds", "0.05", "--no-ray",
                              "--rllib", "PPO", "--rllib-env-steps", "200", "--json", str(out)])
    assert bench.run(args) == 0
    assert "Leap over RLlib PPO vs our A2C loop" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["rllib"]
    assert row["algorithm"] == "PPO"
    for side in ("a2c", "rllib"):
        assert row[side]["env_steps"] >= 200 and positive(row[side]["env_steps_per_s"])
        assert positive(row[side]["gradient_steps_per_s"])
    assert row["rllib_over_a2c"] == pytest.approx(row["rllib"]["env_steps_per_s"] / row["a2c"]["env_steps_per_s"])


def test_bench_refuses_an_unknown_rllib_algorithm():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(ConfigError, match="the algorithm must be one of PPO, APPO, IMPALA"):
        bench.run(parser.parse_args(["--rllib", "DQN"]))
