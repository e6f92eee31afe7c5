"""A run directory: resolved config, metrics.jsonl (+ TensorBoard), atomic checkpoints.

Layout::

    DIR/config.toml        the resolved configuration
    DIR/metrics.jsonl      one JSON object a line; meta-steps carry "event": "meta_step"
    DIR/checkpoint.pt      the latest checkpoint (written to a temp file, then renamed)
    DIR/tb/                TensorBoard event files with the same figures

A run directory is never silently reused: a new run refuses a directory that already holds a
run, and ``--resume`` requires one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from leap_rl.config import ConfigError, RunConfig, dumps_toml, from_dict

CHECKPOINT = "checkpoint.pt"
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
            if key not in ("version", "env_steps"):
                self._tb.add_scalar(f"{prefix}/{key}", value, step)
        self._tb.flush()

    def rows(self, event: str | None = None) -> list[dict[str, Any]]:
        if not (self.path / METRICS).exists():
            return []
        with open(self.path / METRICS) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        return [r for r in rows if event is None or r.get("event") == event]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".checkpoint-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / CHECKPOINT)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_checkpoint(self) -> dict[str, Any] | None:
        path = self.path / CHECKPOINT
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)


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
