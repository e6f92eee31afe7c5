"""Game flavours: a task is (game, mode, difficulty), and a vector env that can play one.

Game specs are what users write: ``space_invaders``, ``space_invaders:mode=3``,
``SpaceInvaders:mode=3:difficulty=1``. Mode and difficulty are optional and are checked against
the ROM's ``getAvailableModes()`` / ``getAvailableDifficulties()``. A plain name (no ``:``) is
a plain game: it keeps ale-py's C++ ``AtariVectorEnv``, exactly as before.

ale-py's ``AtariVectorEnv`` has no mode or difficulty argument (ALE issue #699), so a flavoured
spec is played by gymnasium's ALE env (``ale_py.env.AtariEnv``, what ``gym.make("ALE/...")``
builds, with ``mode=`` / ``difficulty=``) under a Python re-implementation of the vector env's
DeepMind preprocessing, so that the two envs are interchangeable for ``TaskRunner``:

- reset: the ALE is seeded with the seed itself (not gymnasium's SeedSequence-derived seed) and
  the ROM reloaded; FIRE is pressed when the action set has it; then U − 1 no-ops (U − 1 ≥ 0)
  with U uniform in [0, noop_max) drawn from a ``std::mt19937`` seeded with the same seed, as
  libstdc++'s ``uniform_int_distribution`` draws it (Lemire's method); the frame stack is
  zeroed and the reset frame pushed;
- step: the action repeated ``frame_skip`` frames, stopping early at game over or the time
  limit; the last two frames captured in grey (ALE's palette) and max-pooled; 84×84 by
  OpenCV's INTER_AREA; a 4-frame stack; raw integer rewards;
- the time limit counts frames stepped since the reset (``env.max_episode_frames``);
  ``terminated`` is game over or, with ``env.life_loss_terminal``, a life lost (the game goes
  on); ``truncated`` is the time limit when not terminated;
- the vector: sub-envs stepped in turn; a sub-env whose game is over or cut is reset on the
  same step (SameStep autoreset) and its last observation put in ``info["final_obs"]``; the
  info arrays ``lives``, ``frame_number``, ``episode_frame_number`` (after the reset, for a
  sub-env that was reset) and ``env_id``.

Why not gymnasium's ``SyncVectorEnv``: in SameStep mode it resets a sub-env whenever it
reports ``terminated``, and here a life loss is reported as terminated without ending the game
(ale-py's ``life_loss_info``). Why not ``AsyncVectorEnv``: its worker processes would compete
with the learner for the cores (PLATFORM.md). docs/TRANSFER.md has the measured agreement with
``AtariVectorEnv`` and the speed.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv

from leap_rl.config import ConfigError, EnvConfig

OPTIONS = ("mode", "difficulty")


@dataclass(frozen=True)
class GameSpec:
    """A game and, optionally, a mode and a difficulty (None: the ROM's default)."""

    game: str
    mode: int | None = None
    difficulty: int | None = None

    @property
    def flavoured(self) -> bool:
        return self.mode is not None or self.difficulty is not None

    @property
    def text(self) -> str:
        """The canonical spec: ``game[:mode=M][:difficulty=D]``."""
        return self.game + (f":mode={self.mode}" if self.mode is not None else "") + \
            (f":difficulty={self.difficulty}" if self.difficulty is not None else "")


@lru_cache(maxsize=None)
def flavours_of(game: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(modes, difficulties) that the ROM of ``game`` (a normalised id) offers."""
    import ale_py
    from ale_py import roms
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # before the first ALE: no banner
    ale = ale_py.ALEInterface()
    ale.loadROM(roms.get_rom_path(game))
    return tuple(int(m) for m in ale.getAvailableModes()), tuple(int(d) for d in ale.getAvailableDifficulties())


def describe_values(values: tuple[int, ...]) -> str:
    """0, 1, 2, 3, 7 → '0–3, 7': runs of consecutive values as ranges."""
    parts: list[str] = []
    start = prev = None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}–{prev}")
    return ", ".join(parts)


def parse_spec(text: str) -> GameSpec:
    """A game spec → GameSpec, or ConfigError (one line naming what is allowed)."""
    from leap_rl.envs import normalize_game
    raw = text.strip()
    name, *options = raw.split(":")
    game = normalize_game(name)
    values: dict[str, int] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep or key not in OPTIONS:
            raise ConfigError(f"game spec {raw!r}: {option!r} is not an option; write "
                              f"{game}:mode=M:difficulty=D (both optional)")
        if key in values:
            raise ConfigError(f"game spec {raw!r}: {key} is given twice")
        if not re.fullmatch(r"\s*\d+\s*", value):
            raise ConfigError(f"game spec {raw!r}: {key} must be an integer ≥ 0, got {value!r}")
        values[key] = int(value)
    spec = GameSpec(game, values.get("mode"), values.get("difficulty"))
    if spec.flavoured:
        modes, difficulties = flavours_of(game)
        for key, allowed in (("mode", modes), ("difficulty", difficulties)):
            v = values.get(key)
            if v is not None and v not in allowed:
                raise ConfigError(f"game spec {raw!r}: {key} {v} is not available; {game} has modes "
                                  f"{describe_values(modes)} and difficulties {describe_values(difficulties)}")
    return spec


def normalize_spec(text: str) -> str:
    """The canonical form of a game spec; for a plain name the same as ``normalize_game``."""
    return parse_spec(text).text


def spec_game(text: str) -> str:
    """The ROM id of an already canonical spec ('space_invaders:mode=3' → 'space_invaders')."""
    return text.split(":", 1)[0]


def is_flavoured(text: str) -> bool:
    return ":" in text


# ================================================================================ the env

class _NoopCount:
    """The vector env's no-op count: ``std::uniform_int_distribution<int>(0, noop_max − 1)`` on
    ``std::mt19937(seed)``. numpy's legacy RandomState seeded with a 32-bit int is the same
    Mersenne Twister (init_genrand); libstdc++ (GCC ≥ 11) maps its 32-bit output x into
    [0, n) by Lemire's method: the high word of x·n, redrawing while the low word is below
    2³² mod n."""

    def __init__(self, noop_max: int) -> None:
        self._n = max(noop_max, 1)  # noop_max 0: the C++ uses (0, 0), one value, still one draw
        self._rng = np.random.RandomState(0)

    def seed(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed & 0xFFFFFFFF)

    def draw(self) -> int:
        n = self._n
        product = int(self._rng.randint(0, 2 ** 32, dtype=np.uint64)) * n
        low = product & 0xFFFFFFFF
        if low < n:
            threshold = (2 ** 32 - n) % n
            while low < threshold:
                product = int(self._rng.randint(0, 2 ** 32, dtype=np.uint64)) * n
                low = product & 0xFFFFFFFF
        return product >> 32


class FlavouredAtariEnv:
    """One game flavour with the vector env's DeepMind preprocessing (module docstring)."""

    HEIGHT = WIDTH = 84
    STACK = 4

    def __init__(self, spec: GameSpec, cfg: EnvConfig) -> None:
        import ale_py
        import cv2
        from ale_py.env import AtariEnv

        cv2.setNumThreads(1)  # an 84×84 resize gains nothing from threads; they would compete
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        self._cv2 = cv2
        self.spec = spec
        self.cfg = cfg
        # frameskip=1: this class skips frames itself (it needs the last two for the max-pool).
        # No ALE-side frame limit: the time limit is counted here, as the vector env does.
        self._atari = AtariEnv(spec.game, mode=spec.mode, difficulty=spec.difficulty, obs_type="grayscale",
                               frameskip=1, repeat_action_probability=cfg.repeat_action_probability,
                               full_action_space=cfg.full_action_space, max_num_frames_per_episode=None)
        self.ale = self._atari.ale
        self.action_set = list(self._atari._action_set)
        self._NOOP, self._FIRE = ale_py.Action.NOOP, ale_py.Action.FIRE
        self._fire = self._FIRE in self.action_set
        h, w = self.ale.getScreenDims()
        self._raw = [np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)]
        self._stack: deque[np.ndarray] = deque(
            [np.zeros((self.HEIGHT, self.WIDTH), np.uint8) for _ in range(self.STACK)], maxlen=self.STACK)
        self._noops = _NoopCount(cfg.noop_max)
        self._noops.seed(int(np.random.SeedSequence().generate_state(1)[0]))  # unseeded: like random_device
        self._elapsed = 0
        self._lives = 0
        self.game_over = False
        self.truncated = False

    @property
    def num_actions(self) -> int:
        return len(self.action_set)

    def _push(self) -> None:
        """Max-pool the two captured frames (into the first, as the C++ does), resize, stack."""
        np.maximum(self._raw[0], self._raw[1], out=self._raw[0])
        frame = self._cv2.resize(self._raw[0], (self.WIDTH, self.HEIGHT), interpolation=self._cv2.INTER_AREA)
        self._stack.append(frame)

    def observation(self) -> np.ndarray:
        return np.stack(self._stack)

    def info(self) -> dict[str, int]:
        return {"lives": self.ale.lives(), "frame_number": self.ale.getFrameNumber(),
                "episode_frame_number": self.ale.getEpisodeFrameNumber()}

    def reset(self, seed: int | None = None) -> np.ndarray:
        ale = self.ale
        if seed is not None:
            ale.setInt("random_seed", int(seed))
            self._atari.load_game()  # loadROM, then setMode / setDifficulty
            self._noops.seed(int(seed))
        ale.reset_game()
        if self._fire:
            ale.act(self._FIRE)
        noops = self._noops.draw() - int(self._fire)
        while noops > 0:
            ale.act(self._NOOP)
            if ale.game_over():
                ale.reset_game()
            noops -= 1
        ale.getScreenGrayscale(self._raw[0])
        self._raw[1].fill(0)
        for frame in self._stack:
            frame.fill(0)
        self._push()
        self._elapsed = 0
        self._lives = ale.lives()
        self.game_over = self.truncated = False
        return self.observation()

    def step(self, action: int) -> tuple[np.ndarray, int, bool, bool]:
        """One agent step: (observation, raw reward, terminated, truncated)."""
        ale, cfg = self.ale, self.cfg
        a = self.action_set[action]
        reward = 0
        life_lost = False
        for skip in range(cfg.frame_skip, 0, -1):
            reward += ale.act(a, 1.0)
            self.game_over = ale.game_over()
            self._elapsed += 1
            lives = ale.lives()
            life_lost = lives < self._lives and lives > 0
            if self.game_over or self._elapsed >= cfg.max_episode_frames:
                break  # the C++ stops before capturing this frame: the stale ones are pooled
            if skip <= 2:
                ale.getScreenGrayscale(self._raw[skip - 1])
        self._push()
        self._lives = ale.lives()
        terminated = self.game_over or (cfg.life_loss_terminal and life_lost)
        self.truncated = self._elapsed >= cfg.max_episode_frames and not terminated
        return self.observation(), int(reward), bool(terminated), self.truncated

    @property
    def episode_over(self) -> bool:
        return self.game_over or self._elapsed >= self.cfg.max_episode_frames

    def close(self) -> None:
        self._atari.close()


def make_flavoured_vec_env(text: str, cfg: EnvConfig):
    """A FlavouredVectorEnv for a (canonical or not) game spec."""
    return FlavouredVectorEnv(parse_spec(text), cfg)


class FlavouredVectorEnv(VectorEnv):
    """``cfg.num_envs`` FlavouredAtariEnvs stepped in turn, SameStep autoreset on game over or
    time limit only; the same spaces, dtypes and info keys as the AtariVectorEnv that
    ``make_vec_env`` builds. Like it, it is not reset here: call ``reset(seed=seed)`` first
    (sub-env i gets seed + i)."""

    def __init__(self, spec: GameSpec, cfg: EnvConfig) -> None:
        from gymnasium.spaces import Box, Discrete
        from gymnasium.vector import AutoresetMode
        from gymnasium.vector.utils import batch_space

        self.spec_ = spec
        self.envs = [FlavouredAtariEnv(spec, cfg) for _ in range(cfg.num_envs)]
        self.num_envs = cfg.num_envs
        self.single_observation_space = Box(0, 255, (FlavouredAtariEnv.STACK, FlavouredAtariEnv.HEIGHT,
                                                     FlavouredAtariEnv.WIDTH), np.uint8)
        self.single_action_space = Discrete(self.envs[0].num_actions)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.autoreset_mode = AutoresetMode.SAME_STEP
        self.metadata = {"autoreset_mode": self.autoreset_mode}

    def _infos(self) -> dict[str, np.ndarray]:
        rows = [env.info() for env in self.envs]
        info = {"env_id": np.arange(self.num_envs, dtype=np.int32)}
        for key in ("lives", "frame_number", "episode_frame_number"):
            info[key] = np.array([r[key] for r in rows], dtype=np.int32)
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options:
            raise ValueError("FlavouredVectorEnv.reset takes no options")
        obs = np.stack([env.reset(None if seed is None else seed + i) for i, env in enumerate(self.envs)])
        return obs, self._infos()

    def step(self, actions: np.ndarray):
        n = self.num_envs
        obs = np.empty((n, *self.single_observation_space.shape), np.uint8)
        rewards = np.zeros(n, np.int32)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        final_obs = None
        for i, (env, action) in enumerate(zip(self.envs, np.asarray(actions))):
            obs[i], rewards[i], terminated[i], truncated[i] = env.step(int(action))
            if terminated[i] or truncated[i]:
                if final_obs is None:
                    final_obs = np.zeros_like(obs)
                final_obs[i] = obs[i]
                if env.episode_over:
                    obs[i] = env.reset()
        info = self._infos()
        if final_obs is not None:
            # Only the rows of sub-envs that ended on this step mean anything (as in ale-py).
            info["final_obs"] = final_obs
        return obs, rewards, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        for env in getattr(self, "envs", ()):  # also when __init__ failed half-way
            env.close()
