"""``leap-rl train`` on Ray: starts or joins Ray, runs the learner and the workers, logs,
checkpoints after every meta-step, and resumes.

Modes (``meta.mode``):
- sync (paper Algorithm 1): every task of meta-batch v starts from φ_v and φ_{v+1} is made
  when all of them are done. Tasks and seeds are those of the sequential loop, so both give
  the same φ.
- async: no barrier. A free worker starts a new task from the newest φ; the learner steps as
  soon as ``tasks_per_step`` tasks have finished, using those within ``max_staleness``
  versions and dropping older ones (the extra approximation of asynchronous Leap).

A worker that dies mid-task is replaced; its task is dropped at the learner (partial sums are
never used) and run again from the start under a new task id, with the same game, seed and
init version, so the sync guarantee holds.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray.exceptions import ActorDiedError, RayActorError

from actors.task_worker import TaskWorker
from leap_rl.config import RunConfig
from leap_rl.messages import TaskResult, TaskSpec
from leap_rl.meta_training import (checkpoint_state, format_meta_step, format_probe, meta_step_row,
                                   phi_diagnostics, probe_batch, probe_row)
from leap_rl.run_dir import RunDir
from leap_rl.schedule import (derived_seed, meta_training_games, plan_probes, plan_tasks, probe_due,
                              retry_id, sample_games)
from learner.learner_actor import LearnerActor

POLL_SECONDS = 1.0
MAX_RETRIES = 3


@dataclass
class _Running:
    spec: TaskSpec
    worker: int
    attempt: int


class _Workers:
    """A fixed number of worker slots; a dead worker is replaced in its slot."""

    def __init__(self, cfg: RunConfig, learner: ray.actor.ActorHandle, run: RunDir) -> None:
        self.cfg, self.learner, self.run = cfg, learner, run
        self.options = dict(num_cpus=cfg.runtime.cpus_per_worker, num_gpus=cfg.runtime.gpus_per_worker)
        self.actors = [self._new() for _ in range(cfg.runtime.workers)]
        self.free = list(range(len(self.actors)))
        self.running: dict[ray.ObjectRef, _Running] = {}

    def _new(self) -> ray.actor.ActorHandle:
        return TaskWorker.options(**self.options).remote(self.cfg, self.learner)

    def submit(self, spec: TaskSpec, phi_ref: list, attempt: int = 0) -> None:
        slot = self.free.pop(0)
        ref = self.actors[slot].run.remote(spec, phi_ref)
        self.running[ref] = _Running(spec, slot, attempt)

    def wait(self) -> tuple[list[tuple[_Running, TaskResult]], list[_Running]]:
        """Block briefly; return (finished tasks with results, tasks whose worker died)."""
        self.drain_progress()
        if not self.running:
            return [], []
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=POLL_SECONDS)
        done, failed = [], []
        for ref in ready:
            job = self.running.pop(ref)
            try:
                done.append((job, ray.get(ref)))
            except (RayActorError, ActorDiedError) as exc:
                failed.append(job)
                self.run.log({"event": "worker_failed", "task_id": job.spec.task_id,
                              "game": job.spec.game, "attempt": job.attempt,
                              "error": str(exc).splitlines()[0][:300]})
                self.actors[job.worker] = self._new()
            self.free.append(job.worker)
        return done, failed

    def drain_progress(self) -> None:
        for slot, actor in enumerate(self.actors):
            if slot in self.free:
                continue
            try:
                rows = ray.get(actor.take_progress.remote(), timeout=30)
            except (RayActorError, ActorDiedError, ray.exceptions.GetTimeoutError):
                continue  # a dead worker is noticed by wait()
            for row in rows:
                self.run.log({"event": "progress", **row})

    def stop(self) -> None:
        """End the workers, also those still running a task (Ray cannot force-cancel actor calls)."""
        for actor in self.actors:
            ray.kill(actor)
        self.running.clear()

    def restart(self) -> None:
        """Fresh workers in every slot, all free (abandons whatever was running)."""
        self.stop()
        self.actors = [self._new() for _ in self.actors]
        self.free = list(range(len(self.actors)))


class _Probes:
    """The fixed probe tasks of the versions of φ that ``probe_due`` picks, run on the workers
    beside the meta-training tasks; one ``probe`` row per version once all of its are back."""

    def __init__(self, cfg: RunConfig, games: tuple[str, ...], run: RunDir, echo: "_Echo",
                 frames: torch.Tensor) -> None:
        self.cfg, self.games, self.run, self.echo, self.frames = cfg, games, run, echo, frames
        self.pending: list[tuple[TaskSpec, list, int]] = []
        """(spec, φ reference, attempt) not yet handed to a worker."""
        self.results: dict[int, list[TaskResult]] = {}
        self.diagnostics: dict[int, dict] = {}
        self.refs: dict[int, list] = {}
        """The φ reference of every probed version: a retry starts from the same φ."""

    def schedule(self, version: int, phi_ref: list) -> None:
        if probe_due(self.cfg, version) and version not in self.results:
            self.results[version] = []
            self.refs[version] = phi_ref
            self.diagnostics[version] = phi_diagnostics(self.cfg, ray.get(phi_ref[0]), self.frames)
            self.pending += [(spec, phi_ref, 0) for spec in plan_probes(self.cfg, self.games, version)]

    def retry(self, job: _Running) -> None:
        if job.attempt + 1 > MAX_RETRIES:
            raise RuntimeError(f"probe task {job.spec.task_id} failed {MAX_RETRIES + 1} times")
        spec = dataclasses.replace(job.spec, task_id=retry_id(job.spec.task_id, job.attempt + 1))
        self.pending.append((spec, self.refs[spec.init_version], job.attempt + 1))

    def finish(self, result: TaskResult) -> None:
        done = self.results[result.init_version]
        done.append(result)
        if len(done) == self.cfg.runtime.probe_tasks:
            row = probe_row(result.init_version, sorted(done, key=lambda r: r.task_id),
                            self.diagnostics[result.init_version])
            self.run.log(row)
            self.echo.line(format_probe(row))

    @property
    def outstanding(self) -> bool:
        return bool(self.pending) or any(len(r) < self.cfg.runtime.probe_tasks for r in self.results.values())


def _init_ray(cfg: RunConfig, address: str | None, dashboard: bool) -> bool:
    """Join ``address`` or start a local Ray bound to loopback. True if we started it.

    A local Ray listens on 127.0.0.1 only, with token authentication on (Ray's default): see
    README, "On a Ray cluster", and tests/test_binding.py."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, logging_level="warning")
        return False
    needed = cfg.runtime.workers * cfg.runtime.cpus_per_worker + cfg.runtime.learner_cpus
    _keep_auth_token_private()
    restore = _single_machine_ray()
    try:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, int(needed + 0.999)),
            object_store_memory=_object_store_bytes(),
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            logging_level="warning",
            log_to_driver=True,
        )
    finally:
        restore()
    return True


_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _single_machine_ray():
    """Keep a local Ray's node address at 127.0.0.1, which makes every server of it listen on
    loopback only.

    Ray 2.60 decides each bind from the node address: loopback if it is localhost, all
    interfaces or the node address otherwise (GCS, raylet, core workers, agents, metrics).
    But ``ray.init(_node_ip_address="127.0.0.1")`` (like ``ray start --node-ip-address``)
    rewrites a localhost address to the machine's external one
    (``ray._private.services.resolve_ip_for_localhost``), unless Ray runs in single-machine
    mode: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's switch that keeps Windows and macOS
    on loopback. Ray reads it into ``ray_constants.ENABLE_RAY_CLUSTER`` when imported, so
    this sets both while Ray starts (its processes inherit the environment); call the
    function it returns to restore them. Only for a Ray we start: a node in that mode cannot
    join or be joined by others."""
    from ray._private import ray_constants

    saved_env = os.environ.get(_SINGLE_MACHINE_ENV)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False

    def restore() -> None:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = saved_env
    return restore


def _keep_auth_token_private() -> None:
    """Loopback keeps the network out, not the machine's other users: Ray's token does. Ray
    2.60 writes the token it generates (``~/.ray/auth_token``) with the process umask, often
    world-readable; create it owner-only ourselves when missing, or make it owner-only.
    Nothing to do when the token comes from ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``
    (the user keeps those) or authentication is off."""
    if (os.environ.get("RAY_AUTH_MODE", "token").lower() != "token"
            or os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        return
    import secrets

    path = Path.home() / ".ray" / "auth_token"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            st = path.stat()
            if st.st_uid == os.getuid() and st.st_mode & 0o077:
                os.chmod(path, 0o600)
                print(f"note: made {path} readable by its owner only (Ray's token)", file=sys.stderr)
        except OSError:
            pass
        return
    except OSError:
        return  # Ray reports a token it cannot write or read itself
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # the format of Ray's own generated token


def _object_store_bytes() -> int | None:
    """Ray's default object store (30 % of RAM) but no more than /dev/shm can hold: in a
    container /dev/shm is often small, and Ray then falls back to a slower store in /tmp.
    Leap's traffic is one φ per version and one vector per segment, so this is plenty."""
    try:
        shm_free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return None
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(min(int(0.3 * ram), int(0.8 * shm_free)), 80 * 1024**2)


class _Echo:
    """A progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, start: int) -> None:
        self.bar = None
        if sys.stdout.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit="meta-step", dynamic_ncols=True)

    def __call__(self, line: str) -> None:
        """A meta-step's line: the bar moves one step."""
        self.line(line)
        if self.bar is not None:
            self.bar.update(1)

    def line(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Session:
    """Everything one `leap-rl train` on Ray works with, and the counters its checkpoints keep."""

    cfg: RunConfig
    games: tuple[str, ...]
    learner: ray.actor.ActorHandle
    workers: _Workers
    run: RunDir
    probe: torch.Tensor
    echo: _Echo
    probes: _Probes
    env_steps_total: int = 0
    elapsed: float = 0.0
    rejections_logged: int = 0
    next_ticket: int | None = None
    """Async mode: the next ticket (game and seed) to hand out. Kept in the checkpoint so a
    resume starts fresh games and seeds instead of repeating those of the lost tasks."""

    def log_task(self, version: int, result: TaskResult) -> None:
        self.run.log({"event": "task_done", "version": version, "init_version": result.init_version,
                      "task_id": result.task_id, "game": result.game, "env_steps": result.env_steps,
                      "final_return_mean": result.final_return_mean,
                      "path_length": result.path_length, "seconds": result.seconds})

    def is_dropped(self, task_id: str) -> bool:
        return ray.get(self.learner.is_dropped.remote(task_id))

    def finish_meta_step(self, task_ids: list[str], results: list[TaskResult], seconds: float) -> None:
        """Step φ with the given tasks, then log, checkpoint and print the meta-step."""
        update = ray.get(self.learner.step.remote(task_ids))
        self.env_steps_total += sum(r.env_steps for r in results)
        self.elapsed += seconds
        state = ray.get(self.learner.state_dict.remote())
        row = meta_step_row(update, results, phi_diagnostics(self.cfg, state["phi"], self.probe),
                            self.env_steps_total, seconds, self.elapsed)
        self.run.log(row)
        self.run.save_checkpoint(checkpoint_state(self.cfg, state, self.env_steps_total, self.elapsed,
                                                  next_ticket=self.next_ticket))
        for rejection in ray.get(self.learner.rejections.remote(self.rejections_logged)):
            self.run.log({"event": "rejected_segment", **rejection.__dict__})
            print(f"rejected a segment of {rejection.task_id} ({rejection.game}): {rejection.reason}",
                  file=sys.stderr, flush=True)
            self.rejections_logged += 1
        self.echo(format_meta_step(row, self.cfg.meta.meta_steps))


def run_train_ray(cfg: RunConfig, run_dir: Path, run: RunDir | None, address: str | None = None,
                  dashboard: bool = False) -> int:
    resume = run is not None
    if run is None:
        run = RunDir.create(run_dir, cfg)
    games = meta_training_games(cfg)
    state = run.load_checkpoint() if resume else None
    started = _init_ray(cfg, address, dashboard)
    try:
        probe = probe_batch(cfg, games, cfg.runtime.dead_unit_probe)
        learner = LearnerActor.options(num_cpus=cfg.runtime.learner_cpus,
                                       num_gpus=cfg.runtime.learner_gpus).remote(cfg, probe)
        if state is not None:
            ray.get(learner.load_state_dict.remote(state["learner"]))
            torch.set_rng_state(state["torch_rng"])
        version = ray.get(learner.version.remote())
        run.log({"event": "start", "mode": cfg.meta.mode, "resume": resume, "version": version,
                 "workers": cfg.runtime.workers, "games": list(games)})
        echo = _Echo(cfg.meta.meta_steps, version)
        session = _Session(cfg, games, learner, _Workers(cfg, learner, run), run, probe, echo,
                           _Probes(cfg, games, run, echo, probe))
        if state is not None:
            session.env_steps_total, session.elapsed = state["env_steps_total"], state["elapsed"]
            session.next_ticket = state.get("next_ticket")
        try:
            (_sync_loop if cfg.meta.mode == "sync" else _async_loop)(session)
        finally:
            session.echo.close()
            session.workers.stop()
        run.close()
        print(f"done: φ at version {cfg.meta.meta_steps}; checkpoint in {run.path}/checkpoint.pt")
        return 0
    finally:
        if started:
            ray.shutdown()


def _run_probes_alone(s: _Session) -> None:
    """Run the pending probe tasks on otherwise idle workers."""
    while s.probes.outstanding:
        while s.probes.pending and s.workers.free:
            spec, phi_ref, attempt = s.probes.pending.pop(0)
            s.workers.submit(spec, phi_ref, attempt)
        done, failed = s.workers.wait()
        for _job, result in done:
            s.probes.finish(result)
        for job in failed:
            s.probes.retry(job)


def _sync_loop(s: _Session) -> None:
    cfg, workers = s.cfg, s.workers
    while True:
        version, phi_ref = ray.get(s.learner.current.remote())
        s.probes.schedule(version, phi_ref)
        if version >= cfg.meta.meta_steps:
            _run_probes_alone(s)  # the final φ
            return
        start = time.perf_counter()
        # the probes of φ_v run beside meta-step v's tasks: both start from φ_v
        queue = [(spec, 0) for spec, _ref, _attempt in s.probes.pending]
        s.probes.pending.clear()
        queue += [(spec, 0) for spec in plan_tasks(cfg, s.games, version)]
        results: dict[str, TaskResult] = {}
        while queue or workers.running:
            while queue and workers.free:
                spec, attempt = queue.pop(0)
                workers.submit(spec, phi_ref, attempt)
            done, failed = workers.wait()
            for job, result in done:
                if job.spec.probe:
                    s.probes.finish(result)
                    continue
                results[job.spec.task_id] = result
                s.log_task(version, result)
            for job in failed:
                ray.get(s.learner.discard_task.remote(job.spec.task_id))
                if job.attempt + 1 > MAX_RETRIES:
                    raise RuntimeError(f"task {job.spec.task_id} ({job.spec.game}) failed {MAX_RETRIES + 1} times")
                retry = dataclasses.replace(job.spec, task_id=retry_id(job.spec.task_id, job.attempt + 1))
                queue.append((retry, job.attempt + 1))
        kept = [t for t in sorted(results) if not s.is_dropped(t)]
        s.finish_meta_step(kept, list(results.values()), time.perf_counter() - start)


def _async_loop(s: _Session) -> None:
    cfg, workers = s.cfg, s.workers
    version, phi_ref = ray.get(s.learner.current.remote())
    ticket = s.next_ticket if s.next_ticket is not None else version * cfg.meta.tasks_per_step
    waiting: dict[str, TaskResult] = {}
    start = time.perf_counter()
    s.probes.schedule(version, phi_ref)
    while version < cfg.meta.meta_steps:
        while workers.free and s.probes.pending:  # probes first: they measure a version of φ
            spec, probe_ref, attempt = s.probes.pending.pop(0)
            workers.submit(spec, probe_ref, attempt)
        while workers.free:
            game = sample_games(s.games, 1, cfg.seed, ticket)[0]
            spec = TaskSpec(f"a{ticket:06d}", game, version, derived_seed(cfg.seed, ticket, 1),
                            cfg.meta.env_steps_per_task)
            workers.submit(spec, phi_ref)
            ticket += 1
            s.next_ticket = ticket
        done, failed = workers.wait()
        for job in failed:
            if job.spec.probe:
                s.probes.retry(job)
                continue
            ray.get(s.learner.discard_task.remote(job.spec.task_id))  # replaced by a fresh ticket
        for job, result in done:
            if job.spec.probe:
                s.probes.finish(result)
                continue
            s.log_task(version, result)
            if not s.is_dropped(result.task_id):
                waiting[result.task_id] = result
        if len(waiting) >= cfg.meta.tasks_per_step:
            ids = sorted(waiting)
            s.finish_meta_step(ids, [waiting[t] for t in ids], time.perf_counter() - start)
            waiting.clear()
            start = time.perf_counter()
            version, phi_ref = ray.get(s.learner.current.remote())
            s.probes.schedule(version, phi_ref)
    # Tasks still running started from older versions and can no longer count: end them and
    # probe the final φ (and any probe still out) on fresh workers.
    workers.restart()
    for version_pending in [v for v, r in s.probes.results.items() if len(r) < cfg.runtime.probe_tasks]:
        del s.probes.results[version_pending]
        s.probes.pending = [p for p in s.probes.pending if p[0].init_version != version_pending]
    s.probes.schedule(version, phi_ref)
    _run_probes_alone(s)
