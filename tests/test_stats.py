"""The evaluation's statistics against literal values: the minimal detectable difference (MDE)
of the two-sided Welch test at 80 % power, Welch's degrees of freedom, and how the MDE reaches
results.json and results.md (on hand-made run files; nothing is trained)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from leap_rl.evaluate import Init, Plan, analyse, markdown, run_file
from leap_rl.evaluate.stats import compare, mde_welch, summary, welch_df

torch.set_num_threads(1)


def test_mde_of_equal_groups_matches_t_tables():
    """sd 1 and 10 seeds a side: df = 18, t_{0.975,18} = 2.101, t_{0.8,18} = 0.862 (tables)."""
    assert welch_df(1.0, 10, 1.0, 10) == pytest.approx(18.0)
    assert mde_welch(1.0, 10, 1.0, 10) == pytest.approx((2.101 + 0.862) * math.sqrt(0.2), abs=1e-3)
    assert mde_welch(1.0, 10, 1.0, 10) == pytest.approx(1.325081, abs=1e-6)


def test_mde_with_one_side_without_spread_has_n_minus_1_df():
    """s_b = 0: se² = s_a²/n_a = 0.8 and df = n_a − 1 = 4; t_{0.975,4} = 2.776, t_{0.8,4} = 0.941."""
    assert welch_df(4.0, 5, 0.0, 10) == pytest.approx(4.0)
    assert mde_welch(2.0, 5, 0.0, 10) == pytest.approx((2.776 + 0.941) * math.sqrt(0.8), abs=2e-3)
    assert mde_welch(2.0, 5, 0.0, 10) == pytest.approx(3.324952, abs=1e-6)


def test_mde_of_unequal_groups_by_hand():
    """s = 3, 1.5 and n = 10, 12: se² = 0.9 + 0.1875 = 1.0875;
    df = 1.0875² / (0.9²/9 + 0.1875²/11) = 12.68999; t quantiles 2.16575 and 0.87087."""
    assert welch_df(9.0, 10, 2.25, 12) == pytest.approx(1.0875 ** 2 / (0.81 / 9 + 0.1875 ** 2 / 11))
    assert welch_df(9.0, 10, 2.25, 12) == pytest.approx(12.68999, abs=1e-5)
    assert mde_welch(3.0, 10, 1.5, 12) == pytest.approx((2.165746 + 0.870871) * math.sqrt(1.0875), abs=1e-5)


def test_mde_of_large_samples_is_the_normal_one():
    """z_{0.975} + z_{0.8} = 1.959964 + 0.841621 for thousands of seeds."""
    assert mde_welch(1.0, 10_000, 1.0, 10_000) == pytest.approx((1.959964 + 0.841621) * math.sqrt(2e-4),
                                                              rel=1e-4)


def test_power_at_the_mde_is_80_percent():
    """The exact power of the equal-variance t-test (noncentral t) at the MDE of 10 + 10 seeds."""
    from scipy import stats
    se, df = math.sqrt(0.2), 18
    ncp = mde_welch(1.0, 10, 1.0, 10) / se
    crit = stats.t.ppf(0.975, df)
    power = stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp)
    assert power == pytest.approx(0.80, abs=0.002)


@pytest.mark.parametrize("args", [(None, 5, 1.0, 5), (1.0, 1, 1.0, 5), (1.0, 5, 1.0, 1), (0.0, 5, 0.0, 5)])
def test_mde_is_undefined_without_two_seeds_and_spread(args):
    assert mde_welch(*args) is None


def test_compare_carries_the_welch_test_and_the_mde():
    """a = 1..5, b = 2, 4, .., 10: diff −3, se² = 0.5 + 2, t = −3/√2.5, df = 6.25/1.0625 = 5.882;
    t_{0.975,5.882} = 2.45882 and t_{0.8,5.882} = 0.90707, so MDE = 3.36589·√2.5 = 5.32195."""
    c = compare(summary([1.0, 2.0, 3.0, 4.0, 5.0]), summary([2.0, 4.0, 6.0, 8.0, 10.0, None]))
    assert (c["n_a"], c["n_b"]) == (5, 5)
    assert c["diff"] == pytest.approx(-3.0) and c["t"] == pytest.approx(-3 / math.sqrt(2.5))
    assert c["df"] == pytest.approx(6.25 / 1.0625)
    assert c["p_welch"] == pytest.approx(0.1075, abs=1e-3)
    assert c["mde80"] == pytest.approx(mde_welch(math.sqrt(2.5), 5, math.sqrt(10.0), 5))
    assert c["mde80"] == pytest.approx((2.45882 + 0.90707) * math.sqrt(2.5), abs=1e-4)


def _write(out: Path, game: str, init: str, i: int, scores: list[float]) -> None:
    path = run_file(out, game, init, i)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "progress": [{"env_steps": 100 * (k + 1), "episode_return_mean": s, "episodes": 1}
                     for k, s in enumerate(scores)],
        "final_return_mean": scores[-1], "episodes": 3, "path_length": 1.0, "diverged": False,
        "seconds": 1.0}))


def test_results_name_auc_primary_and_give_the_mde_against_random(tmp_path):
    """AUCs: leap 2, 4, 6 (sd 2), random 1, 1, 4 (sd √3): MDE80 from those sds and 3 + 3 seeds."""
    from leap_rl.config import preset
    game = "pong"
    plan = Plan(preset("ci"), (game,), (Init("leap", "x"), Init("random", "random")), (1, 2, 3), 200, tmp_path)
    for i, (a, b) in enumerate([(2.0, 1.0), (4.0, 1.0), (6.0, 4.0)]):
        _write(tmp_path, game, "leap", i, [a, a])
        _write(tmp_path, game, "random", i, [b, b])
    results = analyse(plan)
    assert results["primary_metric"] == "auc"
    (pair,) = results["per_game"][game]["pairs"]
    expected = mde_welch(2.0, 3, math.sqrt(3.0), 3)
    assert pair["auc"]["mde80"] == pytest.approx(expected)
    # df = (4/3 + 1)² / ((4/3)²/2 + 1/2) = 3.92; t_{0.975,3.92} = 2.79893, t_{0.8,3.92} = 0.94320.
    assert pair["auc"]["df"] == pytest.approx((7 / 3) ** 2 / ((16 / 9) / 2 + 0.5))
    assert expected == pytest.approx((2.79893 + 0.94320) * math.sqrt(7 / 3), abs=1e-4)
    results["inits_info"] = {n: {"source": n, "version": None, "estimator": "—", "dead_unit_fraction": 0.0,
                                 "meta_curve": []} for n in ("leap", "random")}
    md = markdown(results)
    assert "Primary metric: the AUC of the learning curve" in md
    assert f"leap {expected:.2f} (n=3+3)" in md
