"""Meta-batches: games and seeds derived from (run seed, version, slot), and retry ids."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from leap_rl.config import ConfigError, preset
from leap_rl.schedule import (derived_seed, meta_training_games, plan_tasks, retry_id, sample_games,
                              task_id)

torch.set_num_threads(1)

GAMES = ("pong", "qbert", "seaquest")


def test_derived_seeds_are_reproducible_in_range_and_differ_by_every_part():
    assert derived_seed(0, 1, 2) == derived_seed(0, 1, 2)
    seeds = {derived_seed(run, version, slot) for run in range(3) for version in range(5) for slot in range(4)}
    assert len(seeds) == 3 * 5 * 4  # no two (run, version, slot) share a seed
    assert all(0 <= s < 2 ** 31 for s in seeds)
    assert derived_seed(1, 0) != derived_seed(0, 1)  # order matters


def test_sample_games_draws_without_replacement_when_the_pool_allows():
    draws = [sample_games(GAMES, 3, run_seed=0, version=v) for v in range(20)]
    for d in draws:
        assert sorted(d) == sorted(GAMES)  # every game once
    assert len({tuple(d) for d in draws}) > 1  # the order changes with the version
    assert draws[4] == sample_games(GAMES, 3, run_seed=0, version=4)  # reproducible
    assert [sample_games(GAMES, 3, run_seed=s, version=0) for s in range(10)] != [draws[0]] * 10
    two = [sample_games(GAMES, 2, 0, v) for v in range(20)]
    assert all(len(set(d)) == 2 for d in two)
    assert {g for d in two for g in d} == set(GAMES)


def test_sample_games_repeats_games_only_when_it_must():
    draws = [sample_games(("pong", "qbert"), 5, run_seed=0, version=v) for v in range(5)]
    for d in draws:
        assert len(d) == 5 and set(d) <= {"pong", "qbert"}


def test_plan_tasks_ids_seeds_and_versions():
    cfg = preset("ci")
    cfg = dataclasses.replace(cfg, meta=dataclasses.replace(cfg.meta, tasks_per_step=3, env_steps_per_task=123))
    plans = {v: plan_tasks(cfg, GAMES, v) for v in range(4)}
    for v, specs in plans.items():
        assert [s.task_id for s in specs] == [task_id(v, slot) for slot in range(3)]
        assert [s.task_id for s in specs] == [f"v{v:05d}-t{slot:03d}" for slot in range(3)]
        assert all(s.init_version == v and s.env_steps == 123 for s in specs)
        assert [s.game for s in specs] == sample_games(GAMES, 3, cfg.seed, v)
        assert [s.seed for s in specs] == [derived_seed(cfg.seed, v, slot) for slot in range(3)]
    seeds = [s.seed for specs in plans.values() for s in specs]
    assert len(set(seeds)) == len(seeds)  # every task of every version its own seed
    # The Ray driver and the sequential loop plan the same tasks: a plan is a pure function.
    assert plan_tasks(cfg, GAMES, 2) == plans[2]
    other = dataclasses.replace(cfg, seed=1)
    assert [s.seed for s in plan_tasks(other, GAMES, 2)] != [s.seed for s in plans[2]]


def test_retry_ids_are_new_and_do_not_grow():
    assert retry_id("v00001-t000", 1) == "v00001-t000-r1"
    assert retry_id("v00001-t000-r1", 2) == "v00001-t000-r2"
    assert retry_id("a000007", 3) == "a000007-r3"
    assert len({"v00001-t000", *(retry_id("v00001-t000", a) for a in range(1, 4))}) == 4


def test_meta_training_games_are_the_configured_ones_normalized():
    cfg = preset("ci")
    named = dataclasses.replace(cfg, meta=dataclasses.replace(cfg.meta, games=("MsPacman", "ALE/Pong-v5")))
    assert meta_training_games(named) == ("ms_pacman", "pong")
    bad = dataclasses.replace(cfg, meta=dataclasses.replace(cfg.meta, games=("seaquestt",)))
    with pytest.raises(ConfigError, match="seaquestt"):
        meta_training_games(bad)
