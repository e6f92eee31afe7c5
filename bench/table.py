"""The table ``leap-rl bench`` prints from the results dict."""

from __future__ import annotations


def format_table(res: dict) -> str:
    s, m = res["setup"], res["machine"]
    lim_w, lim_c = res["limits"]["env_steps_per_s"], res["limits"]["env_steps_per_cpu_s"]
    lines = [
        f"leap-rl bench  {m['date']}  {m['cpus']} cpus, {'CUDA' if m['cuda'] else 'no GPU'}, "
        f"torch {m['torch']} ({m['torch_threads']} thread(s)), ale-py {m['ale_py']}",
        f"game {s['game']}, preset {s['preset']}: {s['network']} network, {s['num_envs']} envs x "
        f"unroll {s['unroll']}, {s['env_threads']} env thread(s); {s['seconds_per_measurement']:g} s per "
        f"measurement, median of {s['repeat']}; machine: load {m.get('loadavg_1min_at_start') or 0:.1f} at start, "
        f"CPUs {100 * m.get('busy_fraction_during_run', float('nan')):.0f} % busy during the run (all processes)",
        "",
        f"{'measurement':<52}{'steps/s wall':>14}{'per CPU-s':>12}  note",
    ]

    def row(name: str, wall: float, cpu: float | None = None, note: str = "") -> None:
        c = f"{cpu:12.0f}" if cpu is not None else " " * 12
        lines.append(f"{name:<52}{wall:14.0f}{c}  {note}")

    L = res["limits"]
    row("env stepping alone (random actions)", lim_w["env"], lim_c["env"], f"{L['env_step_ms']:.2f} ms / step of all envs")
    row("acting alone (no-grad forward + sampling)", lim_w["act"], lim_c["act"], f"{L['act_ms']:.2f} ms / step of all envs")
    row("update alone (value+returns+fwd+bwd+clip+RMSProp)", lim_w["update"], lim_c["update"], f"{L['update_ms']:.1f} ms / update")
    row("limit 1/(1/env + 1/act + 1/update)", lim_w["limit"], lim_c["limit"], "one core, serial")
    lp = res["loop"]
    row("single-worker loop (TaskRunner.run)", lp["env_steps_per_s"], lp["env_steps_per_cpu_s"],
        f"{100 * lp['fraction_of_limit']:.1f} % of limit ({100 * lp['fraction_of_limit_cpu']:.1f} % by CPU)")
    if "loop_overlap" in res:
        ov = res["loop_overlap"]
        row("  the same, env stepping overlapped (env.overlap)", ov["env_steps_per_s"], ov["env_steps_per_cpu_s"],
            f"{100 * ov['fraction_of_limit']:.1f} % of limit, {ov['over_serial_loop']:.2f}x the loop")
    if "loop_overlap_update_threads" in res:
        tc = res["loop_overlap_update_threads"]
        row(f"  the same, the update on {tc['update_threads']} threads (runtime.update_threads)",
            tc["env_steps_per_s"], tc["env_steps_per_cpu_s"],
            f"{100 * tc['fraction_of_limit']:.1f} % of limit, {tc['over_serial_loop']:.2f}x the loop")
    row(f"  the whole call ({lp['whole_call_env_steps']} steps, env and model creation included)",
        lp["whole_call_env_steps_per_s"], lp["whole_call_env_steps_per_cpu_s"])
    su = res["task_setup"]
    lines.append(f"  task setup: make_vec_env {su['make_vec_env_s']:.2f} s ({su['make_vec_env_cpu_s']:.2f} CPU-s), "
                 f"then the seeded reset {su['seeded_reset_s']:.2f} s ({su['seeded_reset_cpu_s']:.2f} CPU-s)")
    lines.append("")
    every = res.get("leap_path_stats_every", 1)
    title = f"Leap per update ({res['leap_metric']} metric{f', ‖Δθ‖ every {every}' if every > 1 else ''})"
    lines.append(f"{title:<52}{'update ms':>14}{'Leap ms':>12}  fraction wall; CPU | in axpys: "
                 f"observe_step + the optimizer's step-out = total (the reference observe)")
    for net, o in res["leap_overhead"].items():
        name = f"{net} ({o['encoder_params']:,} encoder params)"
        lines.append(f"{name:<52}{o['update_ms']:14.2f}{o['leap_ms']:12.3f}  "
                     f"{100 * o['fraction']:.2f} %; {100 * o['fraction_cpu']:.2f} % | "
                     f"{o['leap_axpys']:.2f} + {o['step_out_extra_axpys']:.2f} = {o['leap_total_axpys']:.2f} "
                     f"({o['reference_axpys']:.2f}); one axpy {1e3 * o['axpy_ms']:.0f} µs from memory, "
                     f"{1e3 * o['axpy_hot_ms']:.0f} µs in cache ({o['leap_hot_axpys']:.2f} such)")
    if "ray" in res:
        lines.append("")
        lines.append(f"{'Ray, local (all workers together)':<52}{'end to end':>14}{'steady':>12}  "
                     f"scaling (end to end; steady); cores the workers got; machine busy")
        for r in res["ray"]["workers"]:
            name = f"{r['workers']} worker(s), {r['env_steps'] // r['workers']} env steps each"
            cores = f"{r['worker_cores_used']:.2f}" if "worker_cores_used" in r else "?"
            busy = f"{100 * r['machine_busy_fraction']:.0f} %" if "machine_busy_fraction" in r else "?"
            lines.append(f"{name:<52}{r['env_steps_per_s']:14.0f}{r['busy_env_steps_per_s']:12.0f}  "
                         f"{100 * r['scaling_efficiency']:.0f} %; {100 * r['busy_scaling_efficiency']:.0f} %; "
                         f"{cores}; {busy}")
    lines.append("")
    ctx = res["ingest_context"]
    lines.append(f"{'learner ingest (segments/s)':<52}{'in process':>14}{'via Ray':>12}  "
                 f"workers fed at 1 segment/s each")
    for net, g in res["ingest"].items():
        ray_rate = g.get("ray_segments_per_s")
        rc = f"{ray_rate:12.1f}" if ray_rate is not None else f"{'-':>12}"
        name = f"{net} ({g['segment_mib']:.2f} MiB / segment)"
        lines.append(f"{name:<52}"
                     f"{g['plain_segments_per_s']:14.1f}{rc}  {g['workers_fed_at_1_segment_per_s']:.0f}")
    net = res["setup"]["network"]
    lines.append(f"  a {s['preset']} worker sends a segment every {ctx['preset_segment_interval_s']:.1f} s "
                 f"(segment_every {s['segment_every']}): one learner feeds about "
                 f"{res['ingest'][net]['workers_fed_at_preset_interval']:.0f} such workers")
    if "sb3" in res:
        sb = res["sb3"]
        lines.append("")
        lines.append(f"{'Stable-Baselines3 ' + sb['version'] + ' A2C vs ours (nature)':<52}{'steps/s wall':>14}{'per CPU-s':>12}  ours / SB3")
        row("ours (TaskRunner.run, nature)", sb["ours_env_steps_per_s"], sb["ours_env_steps_per_cpu_s"])
        for kind, e in sb["envs"].items():
            row(f"SB3 A2C CnnPolicy, {kind} env", e["env_steps_per_s"], e["env_steps_per_cpu_s"],
                f"{e['ours_over_sb3']:.2f}x ({e['ours_over_sb3_cpu']:.2f}x by CPU)")
    for r in res.get("rllib", []):
        lines.append("")
        lines.append(f"{'Leap over RLlib ' + r['algorithm'] + ' vs our A2C loop':<52}{'env steps/s':>14}"
                     f"{'grad st/s':>12}  RLlib / ours (env steps/s); RLlib set-up per task")
        for name, x, note in (("ours (TaskRunner.run)", r["a2c"], ""),
                              (f"RLlib {r['algorithm']} (RLlibTaskRunner.run)", r["rllib"],
                               f"{r['rllib_over_a2c']:.2f}x; {r['rllib_setup_s']:.1f} s")):
            lines.append(f"{name:<52}{x['env_steps_per_s']:14.0f}{x['gradient_steps_per_s']:12.1f}  {note}")
    return "\n".join(lines)
