"""A run directory: resolved config, metrics.jsonl (+ TensorBoard), atomic checkpoints.

Layout::

    DIR/config.toml        the resolved configuration
    DIR/metrics.jsonl      one JSON object a line; meta-steps carry "event": "meta_step"
    DIR/checkpoint.pt      the latest checkpoint (written to a temp file, then renamed)
    DIR/checkpoint.prev.pt the checkpoint before it, kept for when the latest is damaged
    DIR/tb/                TensorBoard event files with the same figures

A run directory is never silently reused: a new run refuses a directory that already holds a
run, and ``--resume`` requires one.

What a crash can leave, and how it is read back:
- a torn last line of metrics.jsonl (a write cut short): readers skip it with a warning, and
  the next write of a resumed run first cuts it off, so new rows start on a line of their own;
- a damaged or missing checkpoint.pt: ``load_checkpoint`` falls back to checkpoint.prev.pt
  with a one-line warning, and the next save does not rotate the damaged file into its place;
- ``meta_step`` rows of versions a resumed session re-makes (after such a fallback): a
  ``start`` row of version V supersedes the earlier rows of versions above V (``rows``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import torch

from leap_rl.config import ConfigError, RunConfig, dumps_toml, from_dict, to_dict

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
_TAIL_CHUNK = 1 << 16
"""Bytes read at a time when looking back for the end of the last whole row."""
METRICS = "metrics.jsonl"
CONFIG = "config.toml"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null reads as "no data"
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RunDir:
    def __init__(self, path: Path, tensorboard: bool = True) -> None:
        self.path = Path(path)
        self._tb = None
        self._tensorboard = tensorboard
        self._tail_checked = False
        self._latest_damaged = False
        """checkpoint.pt was found damaged: the next save must not rotate it into the place
        of the good previous one."""

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: Path, cfg: RunConfig, tensorboard: bool = True) -> "RunDir":
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--run-dir {str(path)!r} exists and is not a directory")
        if (path / CHECKPOINT).exists() or (path / METRICS).exists():
            raise ConfigError(f"--run-dir {str(path)!r} already holds a run; "
                              "use --resume to continue it or choose a new directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
            probe.close()
        except OSError as exc:
            raise ConfigError(f"--run-dir {str(path)!r} is not writable: {exc.strerror}") from None
        run = cls(path, tensorboard)
        _atomic_write_bytes(path / CONFIG, dumps_toml(cfg).encode())
        return run

    @classmethod
    def open_existing(cls, path: Path, tensorboard: bool = True) -> tuple["RunDir", RunConfig]:
        path = Path(path)
        if not (path / CONFIG).exists():
            raise ConfigError(f"--resume: {str(path)!r} holds no run (no {CONFIG})")
        import tomllib
        cfg = from_dict(tomllib.loads((path / CONFIG).read_text()))
        return cls(path, tensorboard), cfg

    # ------------------------------------------------------------------ metrics
    def log(self, row: dict[str, Any]) -> None:
        if not self._tail_checked:
            self._cut_torn_tail()
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")
        if self._tensorboard and row.get("event") in ("meta_step", "progress"):
            self._log_tensorboard(row)

    def _log_tensorboard(self, row: dict[str, Any]) -> None:
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=str(self.path / "tb"))
        event = row["event"]
        step = row.get("version") if event == "meta_step" else row.get("env_steps")
        prefix = "meta" if event == "meta_step" else f"task/{row.get('game')}"
        for key, value in _flatten_numbers(row).items():
            if key not in ("version", "env_steps", "worker_pid"):  # axes and labels, not curves
                self._tb.add_scalar(f"{prefix}/{key}", value, step)
        self._tb.flush()

    def _cut_torn_tail(self) -> None:
        """A crash mid-write leaves a last line without its newline: cut it off before
        appending, or the next row would be glued to it and both be lost."""
        self._tail_checked = True
        path = self.path / METRICS
        try:
            f = open(path, "r+b")
        except FileNotFoundError:
            return
        with f:
            size = f.seek(0, os.SEEK_END)
            end = size
            while end > 0:  # back from the end, a chunk at a time, to the last newline
                start = max(0, end - _TAIL_CHUNK)
                f.seek(start)
                chunk = f.read(end - start)
                if end == size and chunk.endswith(b"\n"):
                    return  # the common case: the last write was whole
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
            f.truncate(end)
        warn(f"{path}: cut off a torn last line ({size - end} bytes, a write cut short by a crash)")

    def rows(self, event: str | None = None) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl (of one ``event`` if given), as the run's history: lines
        that are not JSON (a torn last line) are skipped with a warning, and meta_step and
        probe rows of versions that a later session re-made are left out (see the module)."""
        path = self.path / METRICS
        if not path.exists():
            return []
        rows = read_jsonl(path)
        kept: list[dict[str, Any]] = []
        for row in rows:
            if row.get("event") == "start" and isinstance(row.get("version"), int):
                kept = [r for r in kept if not _superseded(r, row["version"])]
            kept.append(row)
        return [r for r in kept if event is None or r.get("event") == event]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``state`` as checkpoint.pt and keep the one it replaces as checkpoint.prev.pt.

        Every step is a rename of a complete file, so at any moment a kill leaves both names
        holding whole checkpoints (or not yet existing): the new one is written and synced
        under a temporary name; the current one is hard-linked (copied where links are not
        supported) to a temporary name that is renamed over checkpoint.prev.pt; then the new
        one is renamed over checkpoint.pt."""
        latest, previous = self.path / CHECKPOINT, self.path / PREVIOUS_CHECKPOINT
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".checkpoint-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            if latest.exists() and not self._latest_damaged:
                keep = self.path / f".{PREVIOUS_CHECKPOINT}-{os.getpid()}.tmp"
                keep.unlink(missing_ok=True)
                try:
                    os.link(latest, keep)
                except OSError:
                    shutil.copyfile(latest, keep)
                os.replace(keep, previous)
            os.replace(tmp, latest)
            self._latest_damaged = False
            _sync_directory(self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_checkpoint(self, expect: RunConfig | None = None) -> dict[str, Any] | None:
        """The latest complete checkpoint, or None if the run has none yet.

        A damaged or missing checkpoint.pt falls back to checkpoint.prev.pt with a one-line
        warning (the run then re-does the meta-step after it); when neither can be read the
        run cannot go on, and a ConfigError says so. ``expect``: the run's config.toml, which
        must equal the config the checkpoint was written with (``config_differences``)."""
        latest, previous = self.path / CHECKPOINT, self.path / PREVIOUS_CHECKPOINT
        if not latest.exists() and not previous.exists():
            return None
        try:
            state = _read_checkpoint(latest)
        except _Unreadable as latest_error:
            self._latest_damaged = True
            try:
                state = _read_checkpoint(previous)
            except _Unreadable as previous_error:
                raise ConfigError(f"{latest} cannot be read ({latest_error}) and neither can "
                                  f"{previous.name} ({previous_error}); the run cannot be resumed") from None
            warn(f"{latest} cannot be read ({latest_error}); using {previous.name} "
                 f"(version {state.get('version')}) instead")
        if expect is not None and "config" in state:
            differences = config_differences(expect, state["config"])
            if differences:
                raise ConfigError(f"{self.path / CONFIG} differs from the config its checkpoint was written "
                                  f"with: {'; '.join(differences)}. --resume continues a run unchanged: "
                                  "undo the edit, or start a new run with --init")
        return state


class _Unreadable(Exception):
    """A checkpoint file that is missing, truncated or not a checkpoint."""


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise _Unreadable("missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise _Unreadable(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'damaged'}") from None
    if not isinstance(state, dict):
        raise _Unreadable(f"holds a {type(state).__name__}, not a checkpoint")
    return state


def _sync_directory(path: Path) -> None:
    """Make the renames durable: a rename lives in the directory, not in the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is atomic
    finally:
        os.close(fd)


def _flat_settings(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(cfg: RunConfig, checkpoint_toml: str) -> list[str]:
    """The settings in which ``cfg`` differs from the config saved in a checkpoint, as
    'name: CHECKPOINT in the checkpoint, NOW in config.toml' (empty when they agree)."""
    saved = tomllib.loads(checkpoint_toml)
    try:
        saved = to_dict(from_dict(saved))  # defaults filled in, as config.toml was read
    except ConfigError:
        pass  # a setting that no longer exists shows up as a difference below
    now, then = _flat_settings(to_dict(cfg)), _flat_settings(saved)
    missing = object()

    def shown(settings: dict[str, Any], key: str) -> str:
        return repr(settings[key]) if key in settings else "unset"
    return [f"{key} is {shown(then, key)} in the checkpoint and {shown(now, key)} in {CONFIG}"
            for key in sorted(set(now) | set(then))
            if now.get(key, missing) != then.get(key, missing)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON rows of a file, one a line. A line that is not JSON — the torn last line a
    crash mid-write leaves, or any other — is skipped with one warning line naming it."""
    rows: list[dict[str, Any]] = []
    lines = Path(path).read_text().split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            torn = number == len(lines)  # no newline after it: the write was cut short
            warn(f"{path}: skipped line {number}, " + ("a torn last line (a write cut short by a crash)"
                                                       if torn else "which is not JSON"))
    return rows


def _superseded(row: dict[str, Any], version: int) -> bool:
    """A meta_step or probe row of a version above ``version``, which a session that
    restarted from ``version`` re-makes."""
    return row.get("event") in ("meta_step", "probe") and row.get("version", 0) > version


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _flatten_numbers(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten_numbers(value, prefix=f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                out[name] = float(value)
    return out


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a config is for everyone to read
    os.replace(tmp, path)


def load_encoder_file(path: Path) -> torch.Tensor:
    """φ from a run's checkpoint.pt or from a file holding a bare 1-D tensor."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise ConfigError(f"--init {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise ConfigError(f"--init {str(path)!r} is not a leap_rl checkpoint: {type(exc).__name__}") from None
    phi = obj["learner"]["phi"] if isinstance(obj, dict) else obj
    if not isinstance(phi, torch.Tensor) or phi.dim() != 1:
        raise ConfigError(f"--init {str(path)!r} holds no 1-D encoder vector")
    return phi
