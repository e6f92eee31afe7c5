"""transfer.json: the per-seed numbers of a transfer experiment, in the shape issue 15 fixes.

    {"games": [GAME, ...],
     "inits": {NAME: {GAME: {"auc": [one per seed], "final": [one per seed]}}}}

NAME is each of ``random``, ``reptile``, ``finetune`` and ``leap`` (the best Leap variant);
GAME is a game spec as ``--games`` takes it ('breakout', 'space_invaders:mode=3'); seed i is the
same seed for every init (null where an agent finished no game). Made from an evaluation's
results.json, by ``leap-rl evaluate --transfer-json PATH`` or afterwards by

    python -m leap_rl.evaluate.transfer OUT/results.json [OUT2/results.json ...] \\
        docs/results/transfer.json [--name leap=leap_energy ...]

where ``--name NAME=INIT`` reports the evaluation's init INIT under NAME. Several evaluations
(e.g. one per task family, each with its own meta-trained inits) are merged game by game: a
game may come from one of them only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from leap_rl.evaluate.plan import error
from leap_rl.jsonio import atomic_write_text, dump_json

NAMES = ("random", "reptile", "finetune", "leap")


def parse_names(texts: Sequence[str]) -> dict[str, str]:
    """['leap=leap_energy'] → {'leap': 'leap_energy'} (the NAME must be one of NAMES)."""
    names: dict[str, str] = {}
    for text in texts:
        name, sep, init = text.partition("=")
        if not sep or not init or name not in NAMES:
            raise error(f"--name expects NAME=INIT with NAME one of {', '.join(NAMES)}, got {text!r}")
        if name in names:
            raise error(f"--name {name} is given twice")
        names[name] = init
    return names


def missing_names(inits: Sequence[str], names: dict[str, str] | None = None) -> list[str]:
    """The NAMES that ``inits`` (an evaluation's init names) cannot supply."""
    names = names or {}
    return [n for n in NAMES if names.get(n, n) not in inits]


def transfer_results(results: dict, names: dict[str, str] | None = None) -> dict:
    """The issue's shape from a results.json object; ConfigError when an init is missing."""
    names = names or {}
    missing = missing_names(results["inits"], names)
    if missing:
        raise error(f"transfer.json needs the inits {', '.join(NAMES)}; missing "
                    f"{', '.join(f'{n} (init {names.get(n, n)!r})' for n in missing)}; the evaluation has "
                    f"{', '.join(results['inits'])} (rename with --name NAME=INIT)")
    games = list(results["games"])
    return {"games": games,
            "inits": {name: {game: {metric: list(results["per_game"][game]["inits"][names.get(name, name)]
                                                 [metric]["per_seed"]) for metric in ("auc", "final")}
                             for game in games}
                      for name in NAMES}}


def merge_transfer(parts: Sequence[dict]) -> dict:
    """One transfer.json from several, games in order; a game in two parts is refused (its seeds
    would come from two different sets of initializations)."""
    games: list[str] = []
    for part in parts:
        twice = [g for g in part["games"] if g in games]
        if twice:
            raise error(f"game {twice[0]!r} is in more than one results.json; each game must come from one evaluation")
        games += part["games"]
    return {"games": games,
            "inits": {name: {game: part["inits"][name][game] for part in parts for game in part["games"]}
                      for name in NAMES}}


def write_transfer(results: dict | Sequence[dict], path: Path, names: dict[str, str] | None = None) -> dict:
    """``results``: one results.json object, or several to merge (``merge_transfer``)."""
    parts = [results] if isinstance(results, dict) else list(results)
    data = merge_transfer([transfer_results(r, names) for r in parts])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), dump_json(data))
    return data


def main(argv: Sequence[str] | None = None) -> int:
    from leap_rl.usage import UsageParser
    from leap_rl.config import ConfigError
    parser = UsageParser(prog="python -m leap_rl.evaluate.transfer", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+",
                        help="an evaluation's results.json (several: merged, each game from one of them)")
    parser.add_argument("out", type=Path, help="where to write transfer.json")
    parser.add_argument("--name", dest="names", action="append", default=[], metavar="NAME=INIT",
                        help=f"report init INIT as NAME (one of {', '.join(NAMES)}; repeatable)")
    args = parser.parse_args(argv)
    try:
        results = []
        for path in args.results:
            try:
                results.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as exc:
                raise error(f"{str(path)!r} is not a readable results.json: {exc}") from None
        data = write_transfer(results, args.out, parse_names(args.names))
    except ConfigError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(data['games'])} game(s), inits {', '.join(data['inits'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
