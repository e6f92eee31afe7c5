"""Atari games: ids checked against the installed ROMs, the meta-training pool, vector envs.

Game ids are ale-py ROM names in snake_case ('ms_pacman'); 'MsPacman' and 'ALE/MsPacman-v5'
are accepted and normalised. A game spec with a flavour ('space_invaders:mode=3:difficulty=1',
leap_rl.flavours) is played by a Python vector env with the same interface; plain ids keep the
C++ AtariVectorEnv.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache

import ale_py
import numpy as np
from ale_py import roms
from ale_py.vector_env import AtariVectorEnv

from leap_rl.config import ConfigError, EnvConfig

HELD_OUT = ("breakout", "space_invaders")
"""Held out of meta-training, as in the paper (LEAP.md §4)."""
POOL_MAX_ACTIONS = 10


@lru_cache(maxsize=1)
def installed_games() -> tuple[str, ...]:
    """ROMs that ale-py ships and supports. A few shipped ROMs (combat, joust, maze_craze,
    warlords) are not supported, and loading one ends the process from C++: leave them out."""
    return tuple(sorted(g for g in roms.get_all_rom_ids()
                        if ale_py.ALEInterface.isSupportedROM(roms.get_rom_path(g)) is not None))


def normalize_game(name: str) -> str:
    """'ALE/MsPacman-v5' / 'MsPacman' / 'ms_pacman' → 'ms_pacman', or ConfigError naming close ids."""
    raw = name.strip()
    stem = re.sub(r"^ALE/|-v\d+$", "", raw)
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", stem).lower().replace("-", "_")
    games = installed_games()
    if snake in games:
        return snake
    close = difflib.get_close_matches(snake, games, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `leap-rl pool --all` lists them"
    raise ConfigError(f"unknown game {name!r}: not one of the {len(games)} installed ALE ROMs{hint}")


@lru_cache(maxsize=None)
def num_actions(game: str, full_action_space: bool = False) -> int:
    if full_action_space:
        return 18
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(roms.get_rom_path(game.split(":", 1)[0]))  # a flavour has its game's action set
    return len(ale.getMinimalActionSet())


@dataclass(frozen=True)
class PoolEntry:
    game: str
    actions: int
    in_pool: bool
    reason: str


def meta_training_pool() -> list[PoolEntry]:
    """Every installed game, marked in or out of the pool (≤ 10 minimal actions, not held out)."""
    entries = []
    for game in installed_games():
        n = num_actions(game)
        if game in HELD_OUT:
            entries.append(PoolEntry(game, n, False, "held out for evaluation"))
        elif n > POOL_MAX_ACTIONS:
            entries.append(PoolEntry(game, n, False, f"more than {POOL_MAX_ACTIONS} actions"))
        else:
            entries.append(PoolEntry(game, n, True, ""))
    return entries


def pool_games() -> tuple[str, ...]:
    return tuple(e.game for e in meta_training_pool() if e.in_pool)


def make_vec_env(game: str, cfg: EnvConfig, autoreset_mode: str = "SameStep") -> AtariVectorEnv:
    """The C++ vector env in synchronous mode with SameStep autoreset (the reset observation
    comes back on the terminal step; the last real one is in info['final_obs']); RLlib's env
    asks for NextStep instead (actors/rllib_inner/env.py), with every other setting the same.

    Rewards come back raw (clipping is A2C's business, and episode scores must be raw).
    Life losses are reported as terminations without resetting the game when
    ``cfg.life_loss_terminal`` is set (ale-py's ``episodic_life`` would restart the game).

    The env is not reset here: call ``env.reset(seed=seed)`` once before stepping (a seeded
    reset of 16 envs costs over a second; the caller needs its frames anyway).

    A flavoured spec ('breakout:mode=4') gets leap_rl.flavours.FlavouredVectorEnv instead, which
    AtariVectorEnv cannot be (it has no mode or difficulty): the same spaces, semantics and
    info keys, and for the default flavour the same observations, in Python.
    """
    if ":" in game:
        if autoreset_mode != "SameStep":
            raise ValueError(f"a flavoured game steps with SameStep autoreset only, not {autoreset_mode}")
        from leap_rl.flavours import make_flavoured_vec_env
        return make_flavoured_vec_env(game, cfg)
    env = AtariVectorEnv(
        game,
        cfg.num_envs,
        num_threads=cfg.env_threads,
        frameskip=cfg.frame_skip,
        noop_max=cfg.noop_max,
        repeat_action_probability=cfg.repeat_action_probability,
        full_action_space=cfg.full_action_space,
        max_num_frames_per_episode=cfg.max_episode_frames,
        autoreset_mode=autoreset_mode,
        episodic_life=False,
        life_loss_info=cfg.life_loss_terminal,
        reward_clipping=False,
    )
    return env


class EpisodeTracker:
    """Raw game scores of whole games (a life loss is not the end of a game)."""

    def __init__(self, num_envs: int) -> None:
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self._frame = np.zeros(num_envs, dtype=np.int64)

    def update(self, raw_reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
               episode_frame: np.ndarray, part: slice = slice(None)) -> list[tuple[float, int]]:
        """Add one step of the envs in ``part`` (all by default); return (score, length) of the
        games that ended on it."""
        returns, lengths = self._returns[part], self._lengths[part]  # views: updated in place
        returns += raw_reward
        lengths += 1
        # A new game restarts the frame counter; a life loss does not.
        game_over = truncated | (terminated & (episode_frame < self._frame[part]))
        self._frame[part] = episode_frame
        done = []
        for i in np.flatnonzero(game_over):
            done.append((float(returns[i]), int(lengths[i])))
            returns[i] = 0.0
            lengths[i] = 0
        return done
