"""Every measurement in one run, interleaved so that load changes hit all alike: the dict ``--json`` writes."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import statistics
from dataclasses import dataclass
from typing import Any, Callable

import torch

from bench.ingest import bench_ingest_plain, bench_ingest_ray
from bench.limits import bench_act, bench_env, sample_frames
from bench.loop import bench_env_setup, bench_loop
from bench.ray_workers import bench_ray_workers, start_ray
from bench.sb3 import bench_sb3
from bench.timing import machine_busy, median_timing, serial_limit, with_network
from bench.update import bench_axpy, bench_step_out, bench_update
from leap_rl.config import load
from leap_rl.envs import normalize_game
from leap_rl.models import encoder_size

from bench import DEFAULT_SECONDS, SB3_ENVS

NETWORKS = ("mnih2013", "nature")

Echo = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    game: str = "seaquest"
    seconds: float = DEFAULT_SECONDS
    preset: str = "baselines"
    overrides: tuple[str, ...] = ()
    repeat: int = 1
    workers_max: int = 2
    ray: bool = True
    sb3: bool = False
    sb3_envs: tuple[str, ...] = SB3_ENVS
    torch_threads: int = 1
    rllib: tuple[str, ...] = ()
    rllib_env_steps: int = 8192


def machine_info() -> dict:
    import ale_py

    return {"date": _dt.date.today().isoformat(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "ale_py": ale_py.__version__, "cuda": torch.cuda.is_available(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def run_bench(opts: BenchOptions, echo: Echo = lambda line: None) -> dict:
    """Every measurement; returns the nested dict that ``--json`` writes."""
    torch.set_num_threads(opts.torch_threads)  # deliberately: oversubscription costs 5-10x
    cfg = load(opts.preset, None, opts.overrides)
    game = normalize_game(opts.game)
    secs, T, N = opts.seconds, cfg.a2c.unroll, cfg.env.num_envs
    out: dict[str, Any] = {
        "machine": machine_info(),
        "setup": {"game": game, "preset": opts.preset, "overrides": list(opts.overrides),
                  "network": cfg.model.network, "encoder_includes_fc": cfg.model.encoder_includes_fc,
                  "num_envs": N, "unroll": T, "env_threads": cfg.env.env_threads,
                  "segment_every": cfg.meta.segment_every, "seconds_per_measurement": secs,
                  "repeat": opts.repeat},
    }

    busy_start = machine_busy()

    # --- limits and the loop, interleaved ``repeat`` times so that load changes hit all alike
    echo("frames for the stored batch ...")
    frames = sample_frames(cfg, game, T)
    envs, acts, ups, leaps, loops, overlapped, two_core = [], [], [], [], [], [], []
    loop_steps = 0
    serial_cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, overlap=False))
    overlap_cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, overlap=True))
    # the envs idle during an update: with a second core the update can have it
    update_threads = 2 * opts.torch_threads
    two_core_cfg = dataclasses.replace(overlap_cfg, runtime=dataclasses.replace(cfg.runtime,
                                                                                 update_threads=update_threads))
    two_cores = (os.cpu_count() or 1) >= update_threads
    for r in range(opts.repeat):
        echo(f"[{r + 1}/{opts.repeat}] env stepping alone ...")
        envs.append(bench_env(cfg, game, secs))
        echo(f"[{r + 1}/{opts.repeat}] acting alone ...")
        acts.append(bench_act(cfg, game, frames, secs))
        echo(f"[{r + 1}/{opts.repeat}] update alone ({cfg.model.network}) ...")
        u = bench_update(cfg, game, frames, secs)
        ups.append(u.update)
        leaps.append(u)
        limit = serial_limit(envs[-1].rate(N), acts[-1].rate(N), u.update.rate(N * T))
        loop_steps = loop_steps or int(limit * secs)
        echo(f"[{r + 1}/{opts.repeat}] single-worker loop, {loop_steps} env steps ...")
        loops.append(bench_loop(serial_cfg, game, loop_steps))
        if N >= 2:
            echo(f"[{r + 1}/{opts.repeat}] single-worker loop, env stepping overlapped (env.overlap) ...")
            overlapped.append(bench_loop(overlap_cfg, game, loop_steps))
            if two_cores:
                echo(f"[{r + 1}/{opts.repeat}] the same, the update on {update_threads} threads ...")
                two_core.append(bench_loop(two_core_cfg, game, loop_steps))

    env_w, env_c = median_timing(envs, N)
    act_w, act_c = median_timing(acts, N)
    upd_w, upd_c = median_timing(ups, N * T)
    loop_w = statistics.median(lp.timing.rate(lp.env_steps, "wall") for lp in loops)
    loop_c = statistics.median(lp.timing.rate(lp.env_steps, "cpu") for lp in loops)
    lim_w, lim_c = serial_limit(env_w, act_w, upd_w), serial_limit(env_c, act_c, upd_c)
    out["limits"] = {
        "env_steps_per_s": {"env": env_w, "act": act_w, "update": upd_w, "limit": lim_w},
        "env_steps_per_cpu_s": {"env": env_c, "act": act_c, "update": upd_c, "limit": lim_c},
        "update_ms": 1e3 * statistics.median(t.wall / t.iters for t in ups),
        "act_ms": 1e3 * statistics.median(t.wall / t.iters for t in acts),
        "env_step_ms": 1e3 * statistics.median(t.wall / t.iters for t in envs),
    }
    out["loop"] = {"env_steps_per_s": loop_w, "env_steps_per_cpu_s": loop_c,
                   "fraction_of_limit": loop_w / lim_w, "fraction_of_limit_cpu": loop_c / lim_c,
                   "env_steps_timed": loops[0].env_steps,
                   "whole_call_env_steps": loops[0].whole_env_steps,
                   "whole_call_env_steps_per_s": statistics.median(
                       lp.whole.rate(lp.whole_env_steps) for lp in loops),
                   "whole_call_env_steps_per_cpu_s": statistics.median(
                       lp.whole.rate(lp.whole_env_steps, "cpu") for lp in loops)}
    if overlapped:
        ov_w = statistics.median(lp.timing.rate(lp.env_steps, "wall") for lp in overlapped)
        ov_c = statistics.median(lp.timing.rate(lp.env_steps, "cpu") for lp in overlapped)
        out["loop_overlap"] = {"env_steps_per_s": ov_w, "env_steps_per_cpu_s": ov_c,
                               "fraction_of_limit": ov_w / lim_w, "over_serial_loop": ov_w / loop_w}
    if two_core:
        tc_w = statistics.median(lp.timing.rate(lp.env_steps, "wall") for lp in two_core)
        tc_c = statistics.median(lp.timing.rate(lp.env_steps, "cpu") for lp in two_core)
        out["loop_overlap_update_threads"] = {"update_threads": update_threads, "env_steps_per_s": tc_w,
                                              "env_steps_per_cpu_s": tc_c, "fraction_of_limit": tc_w / lim_w,
                                              "over_serial_loop": tc_w / loop_w}
    echo("task setup (env creation, seeded reset) ...")
    out["task_setup"] = bench_env_setup(cfg, game)

    # --- Leap's overhead for both networks (the preset's one is already measured)
    overhead = {}
    for network in NETWORKS:
        if network == cfg.model.network:
            timings = leaps
        else:
            echo(f"update + Leap ({network}) ...")
            net_cfg = with_network(cfg, network)
            timings = [bench_update(net_cfg, game, frames, secs) for _ in range(opts.repeat)]

        def ms(part: str, clock: str) -> float:
            return statistics.median(1e3 * getattr(getattr(t, part), clock) / getattr(t, part).iters
                                     for t in timings)

        n = timings[0].encoder_params
        axpys = [bench_axpy(n, secs / 4) for _ in range(opts.repeat)]
        hot = statistics.median(1e3 * t.wall / t.iters for t in (bench_axpy(n, secs / 4, cold=False)
                                                                  for _ in range(opts.repeat)))
        step_outs = [bench_step_out(n, secs / 4) for _ in range(opts.repeat)]
        axpy = statistics.median(1e3 * t.wall / t.iters for t in axpys)
        # per update: with leap.path_stats_every = n the step is written out every n-th update
        step_out_extra = statistics.median(1e3 * (kept.wall / kept.iters - fused.wall / fused.iters)
                                           for fused, kept in step_outs) / cfg.leap.path_stats_every
        up, leap, ref = ms("update", "wall"), ms("leap", "wall"), ms("reference", "wall")
        up_c, leap_c, ref_c = ms("update", "cpu"), ms("leap", "cpu"), ms("reference", "cpu")
        overhead[network] = {
            "encoder_params": n, "frames_per_update": N * T,
            "update_ms": up, "leap_ms": leap, "fraction": leap / up,
            "update_cpu_ms": up_c, "leap_cpu_ms": leap_c,
            "fraction_cpu": leap_c / up_c if up_c > 0 else float("nan"),
            # the axpy with both vectors from memory, as Leap's are in the loop; hot: in cache
            "axpy_ms": axpy, "leap_axpys": leap / axpy, "axpy_hot_ms": hot, "leap_hot_axpys": leap / hot,
            # what the optimizer pays to write Δθ out for Leap (inside update_ms)
            "step_out_extra_ms": step_out_extra, "step_out_extra_axpys": step_out_extra / axpy,
            "leap_total_axpys": (leap + step_out_extra) / axpy,
            "reference_ms": ref, "reference_axpys": ref / axpy,
        }
    out["leap_overhead"] = overhead
    out["leap_metric"] = cfg.leap.metric
    out["leap_path_stats_every"] = cfg.leap.path_stats_every

    # --- learner ingest, in process
    ingest: dict[str, Any] = {}
    for network in NETWORKS:
        echo(f"learner ingest, in process ({network}) ...")
        t = bench_ingest_plain(cfg, network, secs / 2)
        n = encoder_size(dataclasses.replace(cfg.model, network=network))
        ingest[network] = {"encoder_params": n, "segment_mib": n * 4 / 2**20,
                           "plain_segments_per_s": t.rate(1)}
    # a worker of this preset sends one segment per segment_every updates
    seg_per_worker = loop_w / (cfg.meta.segment_every * N * T)
    out["ingest"] = ingest

    # --- Ray: workers and ingest through the actor
    if opts.ray:
        import ray

        started = start_ray(max(opts.workers_max, 1))
        try:
            per_worker = max(4 * N * T, int(loop_w * secs))
            runs: dict[int, list[dict]] = {w: [] for w in range(1, opts.workers_max + 1)}
            for r in range(opts.repeat):  # interleaved, like the single-process measurements
                for w in runs:
                    echo(f"[{r + 1}/{opts.repeat}] Ray: {w} worker(s), {per_worker} env steps each ...")
                    runs[w].append(bench_ray_workers(cfg, game, w, per_worker))
            rows = []
            for w, reps in runs.items():
                row = {"workers": w, "env_steps": reps[0]["env_steps"]}
                for key in reps[0]:
                    if key not in row and all(key in x for x in reps):
                        row[key] = statistics.median(x[key] for x in reps)
                rows.append(row)
            for key in ("env_steps_per_s", "busy_env_steps_per_s"):
                base = rows[0][key]
                for row in rows:
                    eff = "scaling_efficiency" if key == "env_steps_per_s" else "busy_scaling_efficiency"
                    row[eff] = row[key] / (row["workers"] * base)
            out["ray"] = {"workers": rows}
            for network in NETWORKS:
                echo(f"learner ingest through the LearnerActor ({network}) ...")
                ingest[network]["ray_segments_per_s"] = bench_ingest_ray(cfg, network, secs / 2).rate(1)
        finally:
            if started:
                ray.shutdown()
    for network, row in ingest.items():
        best = row.get("ray_segments_per_s", row["plain_segments_per_s"])
        row["workers_fed_at_1_segment_per_s"] = best
    out["ingest_context"] = {
        "preset_segment_interval_s": 1.0 / seg_per_worker,
        "preset_segments_per_s_per_worker": seg_per_worker,
        "note": "workers one learner can feed = ingest rate x a worker's seconds between segments",
    }
    net = cfg.model.network
    key = "ray_segments_per_s" if "ray_segments_per_s" in ingest[net] else "plain_segments_per_s"
    ingest[net]["workers_fed_at_preset_interval"] = ingest[net][key] / seg_per_worker

    # --- SB3, side by side with our loop on the nature network
    if opts.sb3:
        nat = with_network(cfg, "nature")
        nat = dataclasses.replace(nat, model=dataclasses.replace(nat.model, encoder_includes_fc=True))
        sb3_rows = []
        ours = []
        steps = int(loop_w * secs) if net == "nature" else 0
        for r in range(opts.repeat):
            echo(f"[{r + 1}/{opts.repeat}] our loop (nature) for SB3 comparison ...")
            if not steps:
                u = bench_update(nat, game, frames, secs / 2)
                steps = int(serial_limit(env_w, act_w, u.update.rate(N * T)) * secs)
            lp = bench_loop(nat, game, steps)
            ours.append((lp.timing.rate(lp.env_steps), lp.timing.rate(lp.env_steps, "cpu")))
            for kind in opts.sb3_envs:
                echo(f"[{r + 1}/{opts.repeat}] SB3 A2C ({kind} env) ...")
                sb3_rows.append(bench_sb3(nat, game, steps, kind))
        ours_w = statistics.median(o[0] for o in ours)
        ours_c = statistics.median(o[1] for o in ours)
        result = {"version": sb3_rows[0]["version"], "ours_env_steps_per_s": ours_w,
                  "ours_env_steps_per_cpu_s": ours_c, "envs": {}}
        for kind in opts.sb3_envs:
            rows_k = [s for s in sb3_rows if s["env"] == kind]
            w = statistics.median(s["env_steps_per_s"] for s in rows_k)
            c = statistics.median(s["env_steps_per_cpu_s"] for s in rows_k)
            result["envs"][kind] = {"env_steps_per_s": w, "env_steps_per_cpu_s": c,
                                    "ours_over_sb3": ours_w / w, "ours_over_sb3_cpu": ours_c / c}
        out["sb3"] = result
    # --- Leap over RLlib beside our loop (a local Ray: RLlib needs a session)
    if opts.rllib:
        from bench.rllib import bench_rllib

        started = start_ray(1)
        try:
            out["rllib"] = []
            for algorithm in opts.rllib:
                echo(f"RLlib {algorithm} inner loop beside ours, {opts.rllib_env_steps} env steps each ...")
                out["rllib"].append(bench_rllib(cfg, game, opts.rllib_env_steps, algorithm))
        finally:
            if started:
                import ray
                ray.shutdown()
    busy_end = machine_busy()
    if busy_start is not None and busy_end is not None and busy_end[1] > busy_start[1]:
        # all CPUs, all processes (other jobs included), over the whole bench
        out["machine"]["busy_fraction_during_run"] = (busy_end[0] - busy_start[0]) / (busy_end[1] - busy_start[1])
    return out
