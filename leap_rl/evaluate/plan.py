"""What an evaluation is: its initializations, configuration, games, seeds, and file layout.

Everything here is validated before anything is written or trained (``build_plan``); a bad
input raises ``ConfigError`` with one line for the user.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leap_rl.config import RunConfig

# leap_rl.config imports torch: it is imported where it is used, so that building the command
# line's parser (which imports this package) stays fast for every subcommand.

FORMAT = 1
SPEC_FILE = "evaluation.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RUNS = "runs"
CURVES_PNG = "curves.png"
META_PNG = "meta.png"
RANDOM = "random"
FINETUNE = "finetune"
"""Reserved for the fine-tuning baseline: ``--init finetune=RUN`` must be a ``leap-rl pretrain`` run."""
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def error(message: str) -> Exception:
    """A ConfigError (one line for the user; the command line makes it exit code 2)."""
    from leap_rl.config import ConfigError
    return ConfigError(message)


@dataclass(frozen=True)
class Init:
    name: str
    source: str
    """The path given, or 'random'."""
    phi: Any = None
    """torch.Tensor, or None for the random baseline (one encoder per seed)."""
    model: dict | None = None
    """The model section of the run's config, when the init came with one."""
    leap: dict | None = None
    version: int | None = None
    run_dir: Path | None = None
    """Where metrics.jsonl with meta_step rows may be found."""
    kind: str | None = None
    """What made φ when its checkpoint says so: 'pretrain' for a ``leap-rl pretrain`` run."""
    pretrain: dict | None = None
    """A pretrain run's record: its tasks, how many were done, env steps in total."""


def parse_init(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if sep and NAME.match(name):
        if not path:
            raise error(f"--init {text!r}: the path after '=' is empty")
        return name, Path(path)
    path = Path(text)
    stem = path.parent.name if path.name == "checkpoint.pt" else path.name
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", stem.removesuffix(".pt")) or "init"
    return stem, path


def load_init(name: str, path: Path) -> Init:
    """φ, its version, the run's model and leap sections and the run directory, if any."""
    import torch

    from leap_rl.run_dir import CHECKPOINT, CONFIG, METRICS, load_encoder_file

    if not path.exists():
        raise error(f"--init {name}={str(path)!r} does not exist")
    if path.is_dir() and not (path / CHECKPOINT).exists():
        raise error(f"--init {name}={str(path)!r} holds no {CHECKPOINT} (not a meta-training run?)")
    phi = load_encoder_file(path).detach().float().clone()
    file = path / CHECKPOINT if path.is_dir() else path
    run_dir = file.parent
    obj = torch.load(file, map_location="cpu", weights_only=True)
    version = kind = pretrain = None
    config_text = None
    if isinstance(obj, dict):
        version = obj.get("version", obj.get("learner", {}).get("version"))
        config_text = obj.get("config")
        kind = obj.get("kind") if isinstance(obj.get("kind"), str) else None
        pretrain = obj.get("pretrain") if isinstance(obj.get("pretrain"), dict) else None
    if (run_dir / CONFIG).exists() and (path.is_dir() or file.name == CHECKPOINT):
        config_text = (run_dir / CONFIG).read_text()
    model = leap = None
    if isinstance(config_text, str):
        try:
            data = tomllib.loads(config_text)
        except tomllib.TOMLDecodeError as exc:
            raise error(f"--init {name}: its run configuration is not valid TOML: {exc}") from None
        model = data.get("model") if isinstance(data.get("model"), dict) else None
        leap = dict(data["leap"]) if isinstance(data.get("leap"), dict) else None
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        if leap is not None and "normalize_tasks" in meta:
            leap["normalize_tasks"] = meta["normalize_tasks"]
    if kind == "pretrain":
        leap = None  # its config's leap section never touched φ
    if not (run_dir / METRICS).exists():
        run_dir = None
    return Init(name, str(path), phi, model, leap,
                int(version) if isinstance(version, int) else None, run_dir, kind, pretrain)


def load_config(args: argparse.Namespace, model: dict | None) -> RunConfig:
    """Preset, then the init run's model section, then --config, then --set (each validated)."""
    from leap_rl.config import ConfigError, merge, parse_override, preset
    cfg = preset(args.preset or "baselines")
    if model is not None:
        try:
            cfg = merge(cfg, {"model": model})
        except ConfigError as exc:
            raise error(f"the first --init's model section: {exc}") from None
    if args.config is not None:
        try:
            data = tomllib.loads(Path(args.config).read_text())
        except FileNotFoundError:
            raise error(f"--config file {str(args.config)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise error(f"--config file {str(args.config)!r} is not valid TOML: {exc}") from None
        cfg = merge(cfg, data)
    for text in args.overrides:
        cfg = merge(cfg, parse_override(text))
    if args.seed is not None:
        cfg = merge(cfg, {"seed": args.seed})
    return cfg


@dataclass(frozen=True)
class Plan:
    cfg: RunConfig
    games: tuple[str, ...]
    inits: tuple[Init, ...]
    seeds: tuple[int, ...]
    env_steps: int
    out: Path

    @property
    def config_sha(self) -> str:
        return hashlib.sha256(json.dumps(defining_settings(self.cfg), sort_keys=True).encode()).hexdigest()[:16]

    def jobs(self) -> list[tuple[str, Init, int]]:
        """Seed-major order, so an interrupted evaluation has every init at the same seeds."""
        return [(game, init, i) for i in range(len(self.seeds)) for game in self.games for init in self.inits]


def defining_settings(cfg: RunConfig) -> dict:
    """The settings that change what an evaluation agent does or reports: everything but the
    meta section (meta-training only) and the runtime's resources (threads, device, workers)."""
    from leap_rl.config import to_dict
    data = to_dict(cfg)
    del data["meta"]
    data["runtime"] = {k: data["runtime"][k] for k in ("log_every", "dead_unit_probe")}
    return data


def evaluation_seeds(base: int, count: int) -> tuple[int, ...]:
    from leap_rl.schedule import derived_seed
    return tuple(derived_seed(base, 0xE7A1, i) for i in range(count))


def parse_games(text: str) -> tuple[str, ...]:
    """'--games' → canonical game specs, each checked against the installed ROMs and their
    flavours ('breakout', 'space_invaders:mode=3:difficulty=1')."""
    from leap_rl.flavours import normalize_spec
    names = [g for g in (s.strip() for s in text.split(",")) if g]
    if not names:
        raise error(f"--games must name at least one game, got {text!r}")
    return tuple(dict.fromkeys(normalize_spec(g) for g in names))


def build_plan(args: argparse.Namespace) -> Plan:
    """Everything validated before anything is written or trained."""
    from leap_rl.models import encoder_size

    if args.env_steps is None or args.env_steps <= 0:
        raise error(f"--env-steps must be a positive integer, got {args.env_steps}")
    if args.seeds is None or args.seeds < 1:
        raise error(f"--seeds must be an integer ≥ 1, got {args.seeds}")
    if args.points < 2:
        raise error(f"--points must be an integer ≥ 2, got {args.points}")
    if args.jobs < 1:
        raise error(f"--jobs must be an integer ≥ 1, got {args.jobs}")
    games = parse_games(args.games)

    specs = [parse_init(text) for text in args.inits]
    if not specs and not args.random:
        raise error("nothing to evaluate: give --init NAME=RUN_DIR and/or --random")
    seen: set[str] = set()
    for name, _path in specs + ([(RANDOM, None)] if args.random else []):
        if "__" in name or not NAME.match(name):
            raise error(f"--init name {name!r} must be letters, digits, '_', '.', '+', '-' (no '__')")
        if name in seen:
            raise error(f"--init name {name!r} is used twice"
                        + (" (--random is named 'random')" if name == RANDOM else ""))
        seen.add(name)
    inits = [load_init(name, path) for name, path in specs]
    for init in inits:
        if init.name == FINETUNE and init.kind != "pretrain":
            raise error(f"--init {FINETUNE}={init.source}: the name '{FINETUNE}' is the fine-tuning "
                        "baseline and takes a `leap-rl pretrain` run; name this init otherwise")
    model = next((i.model for i in inits if i.model is not None), None)
    cfg = load_config(args, model)
    from leap_rl.config import require_a2c_inner
    require_a2c_inner(cfg, "leap-rl evaluate")
    n = encoder_size(cfg.model)
    for init in inits:
        if init.phi.numel() != n:
            raise error(
                f"--init {init.name}: φ has {init.phi.numel()} parameters, but model.network="
                f"{cfg.model.network!r} with model.encoder_includes_fc={cfg.model.encoder_includes_fc} "
                f"needs {n}; set the model that run was trained with (--set model.network=...)")
    if args.random:
        inits.append(Init(RANDOM, RANDOM))
    updates = math.ceil(args.env_steps / cfg.env_steps_per_update)
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(
        cfg.runtime, log_every=max(1, round(updates / args.points))))
    return Plan(cfg, games, tuple(inits), evaluation_seeds(cfg.seed, args.seeds), args.env_steps,
                Path(args.out))


def run_file(out: Path, game: str, init: str, seed_index: int) -> Path:
    return out / RUNS / f"{game}__{init}__s{seed_index}.json"


def _phi_sha(phi) -> str:
    return hashlib.sha256(phi.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def phi_key(plan: Plan, init: Init, seed_index: int) -> str:
    """What identifies an init's φ in a run file: the hash of a loaded φ; for the random
    baseline its recipe (the orthogonal init's QR is not bit-identical across thread counts or
    BLAS builds, and the model section is already in the config hash)."""
    if init.phi is None:
        return f"initial_encoder(seed={plan.seeds[seed_index]})"
    return _phi_sha(init.phi)


def phi_for(plan: Plan, init: Init, seed_index: int):
    from leap_rl.models import initial_encoder
    if init.phi is not None:
        return init.phi
    return initial_encoder(plan.cfg.model, plan.seeds[seed_index])
