"""transfer.json (issue 15's shape) from tiny hand-made results objects; nothing is trained."""

from __future__ import annotations

import json

import pytest

from leap_rl.config import ConfigError
from leap_rl.evaluate.transfer import NAMES, main, parse_names, transfer_results


def _results(inits: dict[str, dict[str, tuple[list, list]]]) -> dict:
    """A results.json object as analyse writes it, reduced to what transfer.json reads, plus a
    distractor (a pair list) that must not leak through."""
    games = list(next(iter(inits.values())))
    return {"games": games, "inits": list(inits),
            "per_game": {g: {"inits": {name: {"auc": {"per_seed": by_game[g][0], "mean": 0.0},
                                              "final": {"per_seed": by_game[g][1], "mean": 0.0}}
                                       for name, by_game in inits.items()},
                             "pairs": [{"a": "x", "b": "y"}]} for g in games}}


GAMES = ("breakout", "space_invaders:mode=3:difficulty=1")
VALUES = {
    "random": {GAMES[0]: ([1.0, 2.0], [1.5, 2.5]), GAMES[1]: ([3.0, None], [4.0, None])},
    "reptile": {GAMES[0]: ([1.5, 2.0], [1.0, 2.0]), GAMES[1]: ([3.5, 3.0], [4.5, 4.0])},
    "finetune": {GAMES[0]: ([2.0, 2.5], [2.0, 3.0]), GAMES[1]: ([4.0, 3.5], [5.0, 4.5])},
    "leap_energy": {GAMES[0]: ([2.5, 3.0], [3.0, 3.5]), GAMES[1]: ([5.0, 4.0], [6.0, 5.0])},
    "leap_length": {GAMES[0]: ([0.0, 0.0], [0.0, 0.0]), GAMES[1]: ([0.0, 0.0], [0.0, 0.0])},
}


def test_the_shape_and_the_numbers():
    data = transfer_results(_results(VALUES), {"leap": "leap_energy"})
    assert data == {
        "games": ["breakout", "space_invaders:mode=3:difficulty=1"],
        "inits": {
            "random": {"breakout": {"auc": [1.0, 2.0], "final": [1.5, 2.5]},
                       "space_invaders:mode=3:difficulty=1": {"auc": [3.0, None], "final": [4.0, None]}},
            "reptile": {"breakout": {"auc": [1.5, 2.0], "final": [1.0, 2.0]},
                        "space_invaders:mode=3:difficulty=1": {"auc": [3.5, 3.0], "final": [4.5, 4.0]}},
            "finetune": {"breakout": {"auc": [2.0, 2.5], "final": [2.0, 3.0]},
                         "space_invaders:mode=3:difficulty=1": {"auc": [4.0, 3.5], "final": [5.0, 4.5]}},
            "leap": {"breakout": {"auc": [2.5, 3.0], "final": [3.0, 3.5]},
                     "space_invaders:mode=3:difficulty=1": {"auc": [5.0, 4.0], "final": [6.0, 5.0]}},
        }}
    assert list(data["inits"]) == list(NAMES)


def test_a_missing_init_is_named():
    with pytest.raises(ConfigError) as exc:
        transfer_results(_results(VALUES))  # no init is called 'leap'
    message = str(exc.value)
    assert "missing leap (init 'leap')" in message and "leap_energy" in message and "\n" not in message


@pytest.mark.parametrize("texts, words", [(["best=leap_energy"], "NAME one of"), (["leap"], "NAME=INIT"),
                                          (["leap=a", "leap=b"], "given twice")])
def test_bad_names(texts, words):
    with pytest.raises(ConfigError, match=words):
        parse_names(texts)


def test_the_command_writes_the_file_and_refuses_bad_input(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results(VALUES)))
    out = tmp_path / "docs" / "results" / "transfer.json"
    assert main([str(results), str(out), "--name", "leap=leap_energy"]) == 0
    assert json.loads(out.read_text()) == transfer_results(_results(VALUES), {"leap": "leap_energy"})
    assert main([str(results), str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert "missing leap" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.json").exists()
    assert main([str(tmp_path / "nowhere.json"), str(tmp_path / "t.json")]) == 2


def test_two_evaluations_merge_game_by_game(tmp_path):
    """One evaluation per task family (each with its own meta-trained inits) → one transfer.json."""
    first = {n: {GAMES[0]: v[GAMES[0]]} for n, v in VALUES.items()}
    second = {n: {GAMES[1]: v[GAMES[1]]} for n, v in VALUES.items()}
    paths = []
    for i, part in enumerate((first, second)):
        paths.append(tmp_path / f"results{i}.json")
        paths[-1].write_text(json.dumps(_results(part)))
    out = tmp_path / "transfer.json"
    assert main([str(p) for p in paths] + [str(out), "--name", "leap=leap_energy"]) == 0
    assert json.loads(out.read_text()) == transfer_results(_results(VALUES), {"leap": "leap_energy"})


def test_a_game_in_two_evaluations_is_refused(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results(VALUES)))
    assert main([str(path), str(path), str(tmp_path / "t.json"), "--name", "leap=leap_energy"]) == 2
    err = capsys.readouterr().err
    assert "'breakout' is in more than one results.json" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.json").exists()
