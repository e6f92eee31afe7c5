"""``leap-rl train`` on Ray: starts or joins Ray, runs the learner and the workers, logs,
checkpoints after every meta-step, and resumes.

Modes (``meta.mode``):
- sync (paper Algorithm 1): every task of meta-batch v starts from φ_v and φ_{v+1} is made
  when all of them are done. Tasks and seeds are those of the sequential loop, so both give
  the same φ.
- async: no barrier. A free worker starts a new task from the newest φ; the learner steps as
  soon as ``tasks_per_step`` tasks have finished (the extra approximation of asynchronous
  Leap). A task older than ``max_staleness`` versions counts down-weighted (``meta.stale =
  "weight"``) or is refused, and then its worker stops it at its next segment (``"drop"``).
  No task is started that the run could not use: at most the tasks its remaining meta-steps
  need are running or waiting at any time, so the last meta-step leaves nothing half-trained.

Faults (README, "Faults"):
- a task whose worker died, raised, or made no progress for ``runtime.stall_timeout_s`` is
  dropped at the learner (partial sums are never used) and run again from the start under a
  new task id, with the same game, seed and init version, so the sync guarantee holds; after
  ``runtime.max_task_retries`` re-runs it is dropped and logged with its error;
- every call to the learner has a deadline (``runtime.call_timeout_s``); a learner that died
  or missed one is replaced by a new one loaded from the last checkpoint, the workers are
  replaced too, and the interrupted meta-step is re-run: in sync mode with the same tasks, so
  φ is the one an undisturbed run makes;
- resources the cluster cannot give are refused before the run starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayError, RayTaskError

from actors.task_worker import TaskWorker
from leap_rl.config import ConfigError, RunConfig
from leap_rl.messages import TaskResult, TaskSpec, TaskStopped
from leap_rl.meta_training import Recorder, format_meta_step, format_probe, phi_diagnostics, probe_batch, probe_row
from leap_rl.run_dir import RunDir
from leap_rl.schedule import (derived_seed, meta_training_games, plan_probes, plan_tasks, probe_due,
                              retry_id, sample_games)
from learner.learner_actor import LearnerActor

POLL_SECONDS = 1.0
"""How long the driver blocks waiting for a task to end before it looks at progress, stalls
and the learner again."""


class LearnerLost(Exception):
    """The learner actor died or missed a deadline: its sums since the last checkpoint are gone."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[-1] if isinstance(exc, RayTaskError) and text else
            text.splitlines()[0] if text else type(exc).__name__)[:300]


class _Learner:
    """The LearnerActor behind a deadline: every call waits at most ``runtime.call_timeout_s``;
    a learner that died or did not answer in time raises ``LearnerLost``."""

    def __init__(self, cfg: RunConfig, probe: torch.Tensor) -> None:
        self.cfg, self.probe = cfg, probe
        self.handle = self._new()

    def _new(self) -> ray.actor.ActorHandle:
        return LearnerActor.options(num_cpus=self.cfg.runtime.learner_cpus,
                                    num_gpus=self.cfg.runtime.learner_gpus).remote(self.cfg, self.probe)

    def call(self, method: str, *args):
        ref = getattr(self.handle, method).remote(*args)
        return self.get(ref, method)

    def get(self, ref: ray.ObjectRef, what: str):
        try:
            return ray.get(ref, timeout=self.cfg.runtime.call_timeout_s)
        except GetTimeoutError:
            raise LearnerLost(f"{what} got no answer within runtime.call_timeout_s="
                              f"{self.cfg.runtime.call_timeout_s:g} s") from None
        except (RayActorError, ObjectLostError) as exc:  # φ in the object store dies with its owner
            raise LearnerLost(f"{what}: {_first_line(exc)}") from None

    def replace(self) -> None:
        ray.kill(self.handle)  # one that missed a deadline may still be alive
        self.handle = self._new()


@dataclass
class _Running:
    spec: TaskSpec
    worker: int
    attempt: int
    beats: int = -1
    """The worker's beat count at its last answer (``TaskWorker.take_progress``)."""
    last_beat: float = field(default_factory=time.monotonic)
    env_steps: int = 0
    """Env steps the task last reported."""


@dataclass
class _Outcome:
    """What one ``_Workers.wait`` saw end."""

    done: list[tuple[_Running, TaskResult]] = field(default_factory=list)
    stopped: list[tuple[_Running, TaskStopped]] = field(default_factory=list)
    failed: list[tuple[_Running, str]] = field(default_factory=list)
    """Tasks whose worker died, raised or stalled, with the error."""


class _Workers:
    """A fixed number of worker slots; a dead, failed or stalled worker is replaced in its slot."""

    def __init__(self, cfg: RunConfig, learner: _Learner, run: RunDir) -> None:
        self.cfg, self.learner, self.run = cfg, learner, run
        self.options = dict(num_cpus=cfg.runtime.cpus_per_worker, num_gpus=cfg.runtime.gpus_per_worker)
        self.actors = [self._new() for _ in range(cfg.runtime.workers)]
        self.free = list(range(len(self.actors)))
        self.running: dict[ray.ObjectRef, _Running] = {}
        self.polls: dict[int, ray.ObjectRef] = {}
        """slot → its unanswered ``take_progress`` call: a stuck worker never blocks the driver."""

    def _new(self) -> ray.actor.ActorHandle:
        return TaskWorker.options(**self.options).remote(self.cfg, self.learner.handle)

    def _replace(self, slot: int) -> None:
        ray.kill(self.actors[slot])
        self.actors[slot] = self._new()
        self.polls.pop(slot, None)

    def running_tasks(self) -> int:
        """Meta-training tasks running now (probes aside)."""
        return sum(not job.spec.probe for job in self.running.values())

    def submit(self, spec: TaskSpec, phi_ref: list, attempt: int = 0) -> None:
        slot = self.free.pop(0)
        ref = self.actors[slot].run.remote(spec, phi_ref)
        self.running[ref] = _Running(spec, slot, attempt)

    def wait(self) -> _Outcome:
        """Block briefly; return what ended. Raises ``LearnerLost`` when the learner is gone,
        which every task streams to: found within a poll, not at the end of the meta-step."""
        self.learner.call("version")
        self._poll_progress()
        outcome = _Outcome()
        self._reap_stalled(outcome)
        if not self.running:
            return outcome
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=POLL_SECONDS)
        for ref in ready:
            job = self.running.pop(ref)
            try:
                value = ray.get(ref)
            except RayTaskError as exc:  # the task raised; a fresh worker, in case it broke this one
                error = _first_line(exc)
                self._fail(outcome, job, "task_error", error)
            except RayActorError as exc:
                self._fail(outcome, job, "worker_failed", _first_line(exc))
            else:
                self._flush_progress(job)
                if isinstance(value, TaskStopped):
                    outcome.stopped.append((job, value))
                else:
                    outcome.done.append((job, value))
            self.free.append(job.worker)
        return outcome

    def _fail(self, outcome: _Outcome, job: _Running, event: str, error: str) -> None:
        self.run.log({"event": event, "task_id": job.spec.task_id, "game": job.spec.game,
                      "attempt": job.attempt, "error": error})
        self._replace(job.worker)
        outcome.failed.append((job, error))

    def _reap_stalled(self, outcome: _Outcome) -> None:
        """A task without a beat for ``runtime.stall_timeout_s`` is treated as a dead worker:
        alive but stuck, it would hold a sync barrier for ever."""
        limit = self.cfg.runtime.stall_timeout_s
        now = time.monotonic()
        for ref, job in list(self.running.items()):
            if now - job.last_beat > limit:
                del self.running[ref]
                self._fail(outcome, job, "worker_stalled",
                           f"no progress for {now - job.last_beat:.0f} s (runtime.stall_timeout_s={limit:g})")
                self.free.append(job.worker)

    def _poll_progress(self) -> None:
        jobs = {job.worker: job for job in self.running.values()}
        for slot in jobs:
            if slot not in self.polls:
                self.polls[slot] = self.actors[slot].take_progress.remote()
        if not self.polls:
            return
        answered, _ = ray.wait(list(self.polls.values()), num_returns=len(self.polls), timeout=0)
        slots = {ref: slot for slot, ref in self.polls.items()}
        now = time.monotonic()
        for ref in answered:
            slot = slots[ref]
            del self.polls[slot]
            try:
                rows, beats = ray.get(ref)
            except RayError:
                continue  # a dead worker: its task's reference says so
            job = jobs.get(slot)
            self._log_progress(rows, job)
            if job is not None and beats != job.beats:
                job.beats, job.last_beat = beats, now

    def _flush_progress(self, job: _Running) -> None:
        """The progress rows a finished task made since the last poll (its last row, mostly)."""
        refs = [self.polls.pop(job.worker)] if job.worker in self.polls else []
        refs.append(self.actors[job.worker].take_progress.remote())
        for ref in refs:
            try:
                rows, _ = ray.get(ref, timeout=self.cfg.runtime.call_timeout_s)
            except RayError:
                return
            self._log_progress(rows, job)

    def _log_progress(self, rows: list[dict], job: _Running | None) -> None:
        for row in rows:
            self.run.log({"event": "progress", **row})
            if job is not None and row.get("task_id") == job.spec.task_id:
                job.env_steps = max(job.env_steps, row.get("env_steps", 0))

    def stop(self) -> None:
        """End the workers, also those still running a task (Ray cannot force-cancel actor calls)."""
        for actor in self.actors:
            ray.kill(actor)
        self.running.clear()
        self.polls.clear()

    def restart(self) -> None:
        """Fresh workers in every slot, all free (abandons whatever was running)."""
        self.stop()
        self.actors = [self._new() for _ in self.actors]
        self.free = list(range(len(self.actors)))


class _Probes:
    """The fixed probe tasks of the versions of φ that ``probe_due`` picks, run on the workers
    beside the meta-training tasks; one ``probe`` row per version once all of its are back."""

    def __init__(self, cfg: RunConfig, games: tuple[str, ...], run: RunDir, echo: "_Echo",
                 frames: torch.Tensor, learner: _Learner, logged: set[int] | None = None) -> None:
        self.cfg, self.games, self.run, self.echo, self.frames = cfg, games, run, echo, frames
        self.learner = learner
        self.pending: list[tuple[TaskSpec, list, int]] = []
        """(spec, φ reference, attempt) not yet handed to a worker."""
        self.results: dict[int, list[TaskResult]] = {}
        self.expected: dict[int, int] = {}
        """Probe tasks of each version still expected: fewer once one is dropped."""
        self.diagnostics: dict[int, dict] = {}
        self.refs: dict[int, list] = {}
        """The φ reference of every probed version: a retry starts from the same φ."""
        self.logged: set[int] = set() if logged is None else logged
        """Versions whose probe row is written (kept across a learner restart: never twice)."""

    def schedule(self, version: int, phi_ref: list) -> None:
        if probe_due(self.cfg, version) and version not in self.results and version not in self.logged:
            phi = self.learner.get(phi_ref[0], "φ of the probe")
            self.results[version] = []
            self.expected[version] = self.cfg.runtime.probe_tasks
            self.refs[version] = phi_ref
            self.diagnostics[version] = phi_diagnostics(self.cfg, phi, self.frames)
            self.pending += [(spec, phi_ref, 0) for spec in plan_probes(self.cfg, self.games, version)]

    def retry(self, job: _Running, error: str, session: "_Session") -> None:
        again = session.retry(job, error)
        if again is None:
            self.expected[job.spec.init_version] -= 1
            self._maybe_finish(job.spec.init_version)
            return
        spec, attempt = again
        self.pending.append((spec, self.refs[spec.init_version], attempt))

    def finish(self, result: TaskResult) -> None:
        self.results[result.init_version].append(result)
        self._maybe_finish(result.init_version)

    def _maybe_finish(self, version: int) -> None:
        done = self.results[version]
        if len(done) == self.expected[version] and version not in self.logged:
            self.logged.add(version)
            if done:  # every probe task of this version dropped: no row
                row = probe_row(version, sorted(done, key=lambda r: r.task_id), self.diagnostics[version])
                self.run.log(row)
                self.echo.line(format_probe(row))

    @property
    def outstanding(self) -> bool:
        return bool(self.pending) or any(len(r) < self.expected[v] for v, r in self.results.items())

    def forget_unfinished(self) -> None:
        """Drop the versions whose probes are not all back (async: their tasks are ended)."""
        for version in [v for v, r in self.results.items() if len(r) < self.expected[v]]:
            del self.results[version]
            self.pending = [p for p in self.pending if p[0].init_version != version]


def _init_ray(cfg: RunConfig, address: str | None, dashboard: bool) -> bool:
    """Join ``address`` or start a local Ray bound to loopback. True if we started it.

    A local Ray listens on 127.0.0.1 only, with token authentication on (Ray's default): see
    README, "On a Ray cluster", and tests/test_binding.py."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with _keep_sigterm_handler():
        if address:
            ray.init(address=address, logging_level="warning")
            return False
        _init_local_ray(cfg, dashboard)
    return True


@contextlib.contextmanager
def _keep_sigterm_handler():
    """ray.init installs its C++ failure handler for SIGTERM, which dumps a stack trace and
    aborts, over the Python handler that stops the run cleanly and says how to resume
    (leap_rl/cli.py): put the Python one back once Ray is up."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)


def _init_local_ray(cfg: RunConfig, dashboard: bool) -> None:
    needed = cfg.runtime.workers * cfg.runtime.cpus_per_worker + cfg.runtime.learner_cpus
    _keep_auth_token_private()
    _hide_token_notice()
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


class _TokenNotice(logging.Filter):
    """Drops Ray's notice that it turned token authentication on, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _hide_token_notice() -> None:
    """Ray 2.60 warns at every local start that it turned token authentication on: on a local
    run that is noise (README says so once). Setting RAY_AUTH_MODE=token would silence it too,
    but after Ray is imported that skips the refresh of Ray's cached settings that turns the
    token on; filtering the one message changes nothing else."""
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenNotice) for f in log.filters):
        log.addFilter(_TokenNotice())


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


def _check_resources(cfg: RunConfig, local: bool) -> None:
    """Refuse, before the run starts, resources the Ray cluster cannot give: Ray would wait for
    them for ever (its autoscaler repeating "No available node types can fulfill resource
    request"). An actor's own demand must fit one of the cluster's live nodes; the demand of
    all of them must fit the cluster when it is the local Ray this run started (a joined
    cluster may be growing: there it is a warning)."""
    r = cfg.runtime
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for name, kind, amount in (("runtime.cpus_per_worker", "CPU", r.cpus_per_worker),
                               ("runtime.gpus_per_worker", "GPU", r.gpus_per_worker),
                               ("runtime.learner_cpus", "CPU", r.learner_cpus),
                               ("runtime.learner_gpus", "GPU", r.learner_gpus)):
        largest = max((n.get(kind, 0.0) for n in nodes), default=0.0)
        if amount > largest:
            raise ConfigError(f"{name}={amount:g} cannot be had: no node of the Ray cluster has "
                              f"{amount:g} {kind} (the largest has {largest:g}); allowed here: ≤ {largest:g}")
    total = ray.cluster_resources()
    for kind, per_worker, learner in (("CPU", r.cpus_per_worker, r.learner_cpus),
                                      ("GPU", r.gpus_per_worker, r.learner_gpus)):
        need, have = r.workers * per_worker + learner, total.get(kind, 0.0)
        if need > have:
            what = (f"runtime.workers × runtime.{kind.lower()}s_per_worker + runtime.learner_{kind.lower()}s "
                    f"= {r.workers} × {per_worker:g} + {learner:g} = {need:g} {kind}, but the Ray cluster has {have:g}")
            if local:
                raise ConfigError(f"{what}; lower them to fit")
            print(f"warning: {what} now: the workers beyond it wait until the cluster grows",
                  file=sys.stderr, flush=True)


@dataclass
class _Session:
    """Everything one `leap-rl train` on Ray works with."""

    cfg: RunConfig
    games: tuple[str, ...]
    learner: _Learner
    workers: _Workers
    run: RunDir
    probe: torch.Tensor
    echo: _Echo
    probes: _Probes
    recorder: Recorder
    rejections_logged: int = 0
    restarts: int = 0

    def log_task(self, version: int, result: TaskResult) -> None:
        self.run.log({"event": "task_done", "version": version, "init_version": result.init_version,
                      "task_id": result.task_id, "game": result.game, "env_steps": result.env_steps,
                      "final_return_mean": result.final_return_mean,
                      "path_length": result.path_length, "seconds": result.seconds})

    def log_stopped(self, version: int, stopped: TaskStopped) -> None:
        self.run.log({"event": "task_stopped", "version": version, **dataclasses.asdict(stopped)})

    def is_dropped(self, task_id: str) -> bool:
        return self.learner.call("is_dropped", task_id)

    def retry(self, job: _Running, error: str) -> tuple[TaskSpec, int] | None:
        """The re-run of a failed task, under a new id, or None once it has had its
        ``runtime.max_task_retries`` re-runs: then it is dropped and logged with its error."""
        if job.attempt >= self.cfg.runtime.max_task_retries:
            self.run.log({"event": "task_dropped", "task_id": job.spec.task_id, "game": job.spec.game,
                          "init_version": job.spec.init_version, "attempts": job.attempt + 1, "error": error})
            print(f"dropped task {job.spec.task_id} ({job.spec.game}) after {job.attempt + 1} attempts: {error}",
                  file=sys.stderr, flush=True)
            return None
        spec = dataclasses.replace(job.spec, task_id=retry_id(job.spec.task_id, job.attempt + 1))
        return spec, job.attempt + 1

    def finish_meta_step(self, task_ids: list[str], results: list[TaskResult], seconds: float,
                         lost_env_steps: int) -> None:
        """Step φ with the given tasks, then record (checkpoint, then row) and print it."""
        update = self.learner.call("step", task_ids)
        state = self.learner.call("state_dict")
        row = self.recorder.commit(update, results, state, seconds, lost_env_steps)
        for rejection in self.learner.call("rejections", self.rejections_logged):
            self.run.log({"event": "rejected_segment", **rejection.__dict__})
            print(f"rejected a segment of {rejection.task_id} ({rejection.game}): {rejection.reason}",
                  file=sys.stderr, flush=True)
            self.rejections_logged += 1
        self.echo(format_meta_step(row, self.cfg.meta.meta_steps))

    def recover(self, lost: LearnerLost) -> None:
        """A new learner from the last checkpoint, new workers streaming to it, and the probes
        of φ not yet written started again; the loop then re-runs the interrupted meta-step."""
        self.restarts += 1
        if self.restarts > self.cfg.runtime.learner_restarts:
            raise RuntimeError(f"the learner was lost {self.restarts} times (runtime.learner_restarts="
                               f"{self.cfg.runtime.learner_restarts}), last: {lost}")
        self.workers.stop()
        self.learner.replace()
        state = self.run.load_checkpoint()
        if state is not None:
            self.learner.call("load_state_dict", state["learner"])
            torch.set_rng_state(state["torch_rng"])
        version = self.learner.call("version")
        self.run.log({"event": "learner_restarted", "restart": self.restarts, "version": version,
                      "reason": str(lost)})
        print(f"warning: the learner was lost ({lost}); restarted from the checkpoint of version {version}, "
              "re-running the meta-step it was in", file=sys.stderr, flush=True)
        self.workers.restart()
        self.probes = _Probes(self.cfg, self.games, self.run, self.echo, self.probe, self.learner,
                              logged=self.probes.logged)
        self.rejections_logged = 0


def run_train_ray(cfg: RunConfig, run_dir: Path, run: RunDir | None, address: str | None = None,
                  dashboard: bool = False) -> int:
    resume = run is not None
    games = meta_training_games(cfg)
    if cfg.inner == "rllib":  # a misspelt setting would fail every task inside its worker
        from actors.rllib_inner.runner import check_settings
        check_settings(cfg)
    recorder = Recorder(cfg, run, probe=None) if resume else None
    state = recorder.resume() if recorder is not None else None  # a damaged or edited run stops here
    started = _init_ray(cfg, address, dashboard)
    try:
        _check_resources(cfg, local=started)
        if run is None:
            run = RunDir.create(run_dir, cfg)  # only once the run can start
            recorder = Recorder(cfg, run, probe=None)
        probe = probe_batch(cfg, games, cfg.runtime.dead_unit_probe)
        recorder.probe = probe
        learner = _Learner(cfg, probe)
        if state is not None:
            learner.call("load_state_dict", state["learner"])
        version = learner.call("version")
        recorder.start(resume, version, mode=cfg.meta.mode, workers=cfg.runtime.workers, games=list(games))
        echo = _Echo(cfg.meta.meta_steps, version)
        session = _Session(cfg, games, learner, _Workers(cfg, learner, run), run, probe, echo,
                           _Probes(cfg, games, run, echo, probe, learner), recorder)
        try:
            lost: LearnerLost | None = None
            while True:
                try:
                    if lost is not None:  # inside the try: a learner lost again while it restarts counts too
                        session.recover(lost)
                        lost = None
                    (_sync_loop if cfg.meta.mode == "sync" else _async_loop)(session)
                    break
                except LearnerLost as exc:
                    lost = exc
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
        out = s.workers.wait()
        for _job, result in out.done:
            s.probes.finish(result)
        for job, error in out.failed:
            s.probes.retry(job, error, s)


def _sync_loop(s: _Session) -> None:
    cfg, workers = s.cfg, s.workers
    while True:
        version, phi_ref = s.learner.call("current")
        s.probes.schedule(version, phi_ref)
        if version >= cfg.meta.meta_steps:
            _run_probes_alone(s)  # the final φ
            return
        start = time.perf_counter()
        # the probes of φ_v run beside meta-step v's tasks: both start from φ_v
        queue = [(spec, attempt) for spec, _ref, attempt in s.probes.pending]
        s.probes.pending.clear()
        queue += [(spec, 0) for spec in plan_tasks(cfg, s.games, version)]
        results: dict[str, TaskResult] = {}
        lost_env_steps = 0
        while queue or workers.running:
            while queue and workers.free:
                spec, attempt = queue.pop(0)
                workers.submit(spec, phi_ref, attempt)
            out = workers.wait()
            for job, result in out.done:
                if job.spec.probe:
                    s.probes.finish(result)
                    continue
                results[job.spec.task_id] = result
                s.log_task(version, result)
            for job, stopped in out.stopped:  # refused at the learner (a non-finite segment)
                s.log_stopped(version, stopped)
                lost_env_steps += stopped.env_steps
            for job, error in out.failed:
                if job.spec.probe:
                    before = len(s.probes.pending)
                    s.probes.retry(job, error, s)
                    queue += [(spec, attempt) for spec, _ref, attempt in s.probes.pending[before:]]
                    del s.probes.pending[before:]
                    continue
                s.learner.call("discard_task", job.spec.task_id)
                lost_env_steps += job.env_steps
                again = s.retry(job, error)
                if again is not None:
                    queue.append(again)
        kept = [t for t in sorted(results) if not s.is_dropped(t)]
        s.finish_meta_step(kept, list(results.values()), time.perf_counter() - start, lost_env_steps)


def _async_loop(s: _Session) -> None:
    cfg, workers, totals = s.cfg, s.workers, s.recorder.totals
    version, phi_ref = s.learner.call("current")
    if totals.next_ticket is None:
        totals.next_ticket = version * cfg.meta.tasks_per_step
    waiting: dict[str, TaskResult] = {}
    lost_env_steps = 0
    start = time.perf_counter()
    s.probes.schedule(version, phi_ref)
    while version < cfg.meta.meta_steps:
        while workers.free and s.probes.pending:  # probes first: they measure a version of φ
            spec, probe_ref, attempt = s.probes.pending.pop(0)
            workers.submit(spec, probe_ref, attempt)
        # Start no task that could not count: the run needs (meta-steps left) × tasks_per_step
        # more, and the ones running or waiting are already on their way.
        needed = (cfg.meta.meta_steps - version) * cfg.meta.tasks_per_step - len(waiting)
        while workers.free and workers.running_tasks() < needed:
            ticket = totals.next_ticket
            game = sample_games(s.games, 1, cfg.seed, ticket)[0]
            spec = TaskSpec(f"a{ticket:06d}", game, version, derived_seed(cfg.seed, ticket, 1),
                            cfg.meta.env_steps_per_task)
            workers.submit(spec, phi_ref)
            totals.next_ticket = ticket + 1
        out = workers.wait()
        for job, error in out.failed:
            if job.spec.probe:
                s.probes.retry(job, error, s)
                continue
            # replaced by a fresh ticket: a re-run would start from an older φ than the newest
            s.learner.call("discard_task", job.spec.task_id)
            lost_env_steps += job.env_steps
        for job, stopped in out.stopped:  # refused as stale: it stopped at its next segment
            s.log_stopped(version, stopped)
            lost_env_steps += stopped.env_steps
        for job, result in out.done:
            if job.spec.probe:
                s.probes.finish(result)
                continue
            s.log_task(version, result)
            if s.is_dropped(result.task_id):
                lost_env_steps += result.env_steps
            else:
                waiting[result.task_id] = result
        if len(waiting) >= cfg.meta.tasks_per_step:
            ids = sorted(waiting)
            s.finish_meta_step(ids, [waiting[t] for t in ids], time.perf_counter() - start, lost_env_steps)
            waiting.clear()
            lost_env_steps = 0
            start = time.perf_counter()
            version, phi_ref = s.learner.call("current")
            s.probes.schedule(version, phi_ref)
    # Tasks still running started from older versions and can no longer count: end them and
    # probe the final φ (and any probe still out) on fresh workers.
    workers.restart()
    s.probes.forget_unfinished()
    s.probes.schedule(version, phi_ref)
    _run_probes_alone(s)
