"""Small dataclasses that travel between a task and the learner (in-process or over Ray)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leap_rl.leap import PathStats

MESSAGE_VERSION = 1


@dataclass(frozen=True)
class TaskSpec:
    """One task: train a fresh agent on ``game`` from the encoder φ of ``init_version``."""

    task_id: str
    game: str
    init_version: int
    seed: int
    env_steps: int
    probe: bool = False
    """A probe task measures the path length from φ like for like; its segments never reach φ."""


@dataclass(frozen=True)
class Segment:
    """M_seg of LEAP.md §3 for updates since the previous segment of the same task."""

    task_id: str
    game: str
    init_version: int
    index: int
    """0, 1, 2, … within the task."""
    vector: torch.Tensor
    """Σ (Δθ_i + Δf̃_i·g_{i−1}) / w_i over this segment, on the CPU."""
    stats: PathStats
    final: bool
    env_steps: int
    """Env steps of the task so far."""
    diverged: bool = False
    """The agent's loss or policy became non-finite; the task stopped early."""
    message_version: int = MESSAGE_VERSION

    @property
    def increments(self) -> int:
        return self.stats.increments

    @property
    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.vector).all())


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    game: str
    init_version: int
    env_steps: int
    updates: int
    segments: int
    seconds: float
    episode_returns: tuple[float, ...]
    """Raw game scores of every finished game, in order."""
    path_length: float
    """Σ w_i over the whole task."""
    param_part_norm: float
    """‖Σ_task Δθ/w‖."""
    loss_part_norm: float
    """‖Σ_task Δf̃·g/w‖."""
    final_return_mean: float
    """Mean raw score of the last 100 games (nan if none finished)."""
    diverged: bool = False
    encoder: torch.Tensor | None = None
    """The trained encoder θ_K (flat, on the CPU), only when asked for (``keep_encoder``): the
    fine-tuning baseline carries it to its next task; meta-training never needs it."""


@dataclass(frozen=True)
class TaskStopped:
    """A task its worker stopped early because the learner refused its segments (stale, or
    dropped): nothing it trained after that could reach φ, so it is not trained further."""

    task_id: str
    game: str
    init_version: int
    env_steps: int
    """Env steps trained before the stop."""
    segments: int
    """Segments sent, the refused one included."""
