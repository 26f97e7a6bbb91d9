"""Claims say no more than the records carry: Holm's correction, the seed rule read on the
validation split, and the wording of counts, bounds and convergence in the generated prose."""
import functools
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from lowrank_helpers.reports.prose import count_of, overclaims, settled_phrase, upper_bound
from lowrank_helpers.core.stats import (change, correct, holm, noninferior, spread_caveat,
                                   std_factor_range, welch)
from lowrank_helpers.studies.tuned import close_models, tuned_table

ROOT = Path(__file__).resolve().parent.parent


def test_holm_against_a_hand_computed_case():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [q < 0.05 for q in holm(p)] == [True, False, False, True]
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == [] and holm([0.2]) == [0.2]         # a family of one is uncorrected


def test_correct_keeps_the_interval_and_decides_by_the_family():
    a, b, c = [1.0, 1.1, 0.9], [0.5, 0.6, 0.55], [1.02, 0.98, 1.1]
    raw = [welch(a, b), None, welch(c, a)]
    fixed = correct(raw)
    assert fixed[1] is None and fixed[0].family == 2 == fixed[2].family
    assert (fixed[0].low, fixed[0].high) == (raw[0].low, raw[0].high)  # uncorrected interval
    assert fixed[0].p_holm == pytest.approx(min(1, 2 * min(raw[0].p, raw[2].p)))
    assert fixed[0].real == (fixed[0].p_holm < 0.05)
    assert "Holm p" in fixed[0].describe() and "over 2" in fixed[0].describe()
    # a difference only the uncorrected interval calls real
    many = correct([welch([0.0, 0.1, 0.2], [0.3, 0.4, 0.5])] + [welch([0, 1], [0, 1])] * 20)
    assert many[0].real_uncorrected and not many[0].real


def test_non_inferiority_p_agrees_with_the_interval():
    d = welch([0.880, 0.884, 0.879, 0.886], [0.882, 0.887, 0.884])
    # p < 0.025 exactly where the 95 % interval's lower end lies above the bound
    for bound in (d.low - 1e-4, d.low + 1e-4):
        assert (d.p_above(bound) < 0.025) == (d.low > bound)
    ref = stats.ttest_ind([0.880, 0.884, 0.879, 0.886], [x - 0.005 for x in
                                                         (0.882, 0.887, 0.884)],
                          equal_var=False, alternative="greater")
    assert d.p_above(-0.005) == pytest.approx(ref.pvalue, rel=1e-9)
    # over a family, Holm-adjusted: here a family of two equal tests doubles the p
    assert noninferior([d, None, d], 0.005) == pytest.approx([2 * ref.pvalue, None,
                                                              2 * ref.pvalue])


def test_the_change_of_a_gap_adds_the_errors_in_quadrature():
    """A gap measured twice (two budgets): the change's standard error and degrees of freedom
    from the four raw samples (Welch–Satterthwaite over four independent means), its
    interval from Student's t, and a change that is only noise is not called real."""
    import math
    import statistics
    from scipy import stats as st
    samples = ([1.0, 1.1, 1.2], [0.9, 0.95, 1.0], [1.3, 1.5, 1.4], [0.9, 0.92, 0.94])
    before, after = welch(*samples[:2]), welch(*samples[2:])
    c = change(before, after)
    means = [statistics.mean(x) for x in samples]
    assert math.isclose(c.diff, (means[2] - means[3]) - (means[0] - means[1]))
    parts = [statistics.variance(x) / len(x) for x in samples]        # s²/n of each mean
    assert math.isclose(c.se, math.sqrt(sum(parts)))
    df = sum(parts) ** 2 / sum(v ** 2 / (len(x) - 1) for v, x in zip(parts, samples))
    assert math.isclose(c.df, df)
    half = st.t.ppf(0.975, df) * c.se
    assert math.isclose(c.high - c.low, 2 * half) and c.real
    same = change(before, welch([1.0, 1.1, 1.2], [0.9, 0.95, 1.0]))
    assert same.diff == 0 and not same.real


def test_three_seeds_estimate_a_spread_poorly():
    lo, hi = std_factor_range(3)
    assert (round(lo, 2), round(hi, 1)) == (0.52, 6.3)
    assert "0.52" in spread_caveat(3) and "6.3" in spread_caveat(3)
    with pytest.raises(ValueError, match="at least 2 values"):
        std_factor_range(1)


def test_counts_bounds_and_convergence_are_worded_from_the_numbers():
    assert count_of(12, 12, "models") == "all 12 models"
    assert count_of(9, 12, "models") == "9 of 12 models"
    assert count_of(0, 4, "models") == "none of the 4 models"
    assert count_of(2, 2, "ranks") == "both ranks"
    assert upper_bound(1.448e-4) == "≤ 1.5e-04"     # never rounded down below the number
    assert upper_bound(1.4e-4) == "≤ 1.4e-04" and upper_bound(0.1952) == "≤ 2.0e-01"
    moving = settled_phrase(69, 156)
    assert "87 were still moving" in moving and "not converged" in moving
    assert not overclaims(moving)
    assert "does not show convergence" in settled_phrase(5, 5)


def test_overclaims_finds_a_universal_word_beside_a_short_count():
    assert overclaims("Every student reaches the floor: 246 of 288 do.")
    assert overclaims("The models converged (69 of 156 settled).")
    assert not overclaims("Not converged: 69 of 156 settled.")
    assert not overclaims("All 12 gain; 9 of 12 detectably.")  # separate clauses
    assert not overclaims("rank 1 never in 2 of 3 seeds")


def test_generated_prose_never_says_all_where_a_count_falls_short():
    from tests.test_readme import rendered_blocks
    bad = [(kind, s) for kind, _, _, text in rendered_blocks() for s in overclaims(text)]
    assert not bad, f"universal words beside short counts: {bad}"


@functools.lru_cache(maxsize=1)
def _tuned_records():
    from lowrank_helpers.core.results import load_records
    return load_records(ROOT / "results" / "tuned")


def test_generated_prose_says_converged_only_when_nothing_moves():
    from lowrank_helpers.reports.tuned import tuned_answer
    from lowrank_helpers.studies.tuned import split_budget
    table = tuned_table(_tuned_records())
    study = split_budget(table)[0]
    moving = int((study.late_val_gain.abs() >= 0.005).sum())
    text = tuned_answer(table)
    assert moving > 0 and f"{moving} were still moving: not converged" in text
    assert "to convergence" not in text


def _table(rows):
    base = {"rescale": 1.0, "epochs": 10, "optimizer": "sgd"}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_close_calls_read_validation_means_never_test():
    """Two models close on test but far on validation are not close calls, and the other
    way round: the number of seeds never depends on the split the answers are read on."""
    table = _table([
        {"key": "dense", "method": "full", "rank": math.nan, "mean_val": 0.90, "mean_test": 0.90},
        {"key": "near_val", "method": "lora", "rank": 8, "mean_val": 0.898, "mean_test": 0.85},
        {"key": "near_test", "method": "lora", "rank": 16, "mean_val": 0.85, "mean_test": 0.899},
    ])
    assert close_models(table, 0.5) == {"dense", "near_val"}


def test_the_table_uses_the_seeds_of_the_rule_only():
    """Seeds beyond the rule (trained under an earlier rule) are on disk but in no number."""
    runs = _tuned_records()
    table = tuned_table(runs)
    assert set(table.seeds) <= {3, 5}
    rule3 = tuned_table(runs, seeds=3, close_seeds=3)
    assert (rule3.seeds == 3).all()
    five = table[table.seeds == 5]
    close = close_models(rule3, 0.5)
    assert set(five.key) == close    # every close call got its seeds, and only close calls
