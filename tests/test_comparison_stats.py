"""The benchmark's statistics (kd_env.comparison.stats) on hand-made score arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
from output_checks import assert_csv_matches_json, assert_png

from kd_env.comparison import stats

REPS = 300  # enough resamples for these checks, fast

# 4 runs x 3 tasks; pooled sorted: -50 0 1 | 2 3 4 5 6 7 | 8 10 100 -> IQM = mean(2..7) = 4.5;
# task means 1.5, 6.25, 16.25 -> mean 8.0, median 6.25
KNOWN = np.array([[0.0, 10.0, 100.0], [1.0, 4.0, 7.0], [2.0, 5.0, 8.0], [3.0, 6.0, -50.0]])


def test_iqm_mean_median_of_a_known_array():
    assert stats.iqm(KNOWN) == pytest.approx(4.5)
    assert stats.mean(KNOWN) == pytest.approx(8.0)
    assert stats.median(KNOWN) == pytest.approx(6.25)


def test_optimality_gap_clips_at_gamma():
    scores = np.array([[0.5, 1.5], [1.0, 0.0]])  # clipped at 1: 0.5 1 1 0 -> mean 0.625
    assert stats.optimality_gap(scores) == pytest.approx(0.375)
    assert stats.optimality_gap(scores, gamma=2.0) == pytest.approx(2.0 - 0.75)


def test_metrics_are_batched_over_leading_axes():
    batch = np.stack([KNOWN, KNOWN + 1.0])
    np.testing.assert_allclose(stats.iqm(batch), [4.5, 5.5])
    np.testing.assert_allclose(stats.mean(batch), [8.0, 9.0])
    np.testing.assert_allclose(stats.median(batch), [6.25, 7.25])


def test_dominating_method_has_probability_of_improvement_one_and_a_positive_difference():
    rng = np.random.default_rng(0)
    y = rng.random((5, 3))
    x = 10.0 + rng.random((5, 3))  # every run of X above every run of Y, on every task
    assert stats.probability_of_improvement(x, y) == 1.0
    assert stats.probability_of_improvement(y, x) == 0.0
    improvement = stats.probability_of_improvement_ci(x, y, reps=REPS)
    assert (improvement.point, improvement.low, improvement.high) == (1.0, 1.0, 1.0)
    for key, metric in stats.METRICS.items():
        difference = stats.paired_difference_ci(x, y, metric, reps=REPS)
        # the point estimate is the metric's difference on the data themselves, not a bootstrap's
        assert difference.point == pytest.approx(float(metric(x) - metric(y)), rel=1e-12)
        assert difference.low <= difference.point <= difference.high
        if key == "optimality_gap":  # lower is better
            assert difference.high < 0
        else:
            assert difference.low > 0


def test_identical_methods_and_ties_count_one_half():
    rng = np.random.default_rng(1)
    x = rng.random((5, 2))
    assert stats.probability_of_improvement(x, x.copy()) == 0.5
    # one task: pairs (1,1) (1,1) tie, (2,1) (2,1) win -> (0.5 + 0.5 + 1 + 1) / 4
    assert stats.probability_of_improvement(np.array([[1.0], [2.0]]), np.array([[1.0], [1.0]])) == 0.75
    # averaged over tasks: task 0 always better, task 1 always worse
    assert stats.probability_of_improvement(np.array([[1.0, 0.0], [1.0, 0.0]]), np.zeros((2, 2)) + [0.0, 1.0]) == 0.5
    # different numbers of runs: 3 x 2 pairs, X's 2 beats both, X's 0 and 1 tie once each
    assert stats.probability_of_improvement(np.array([[0.0], [1.0], [2.0]]), np.array([[0.0], [1.0]])) == pytest.approx(
        (0.5 + 0 + 1 + 0.5 + 1 + 1) / 6
    )


def test_bootstrap_is_stratified_over_tasks():
    # every task's runs are identical: resampling within tasks changes nothing, mixing tasks would
    scores = np.tile([0.0, 1.0, 5.0], (5, 1))
    estimates = stats.aggregate_interval_estimates({"A": scores}, reps=REPS)["A"]
    assert (estimates["mean"].low, estimates["mean"].high) == (2.0, 2.0)
    assert (estimates["median"].low, estimates["median"].high) == (1.0, 1.0)
    assert estimates["iqm"].low == estimates["iqm"].high == pytest.approx(stats.iqm(scores))


def test_paired_difference_resamples_seeds_jointly():
    # seeds vary a lot, X is Y + 0.1 at every seed: a paired resample's difference is always 0.1
    y = np.random.default_rng(2).normal(0.0, 10.0, size=(6, 3))
    x = y + 0.1
    difference = stats.paired_difference_ci(x, y, stats.mean, reps=REPS)
    assert difference.point == pytest.approx(0.1)
    assert difference.low == pytest.approx(0.1) and difference.high == pytest.approx(0.1)
    # an unpaired view of the same data cannot tell X from Y
    assert stats.probability_of_improvement_ci(x, y, reps=REPS).low < 0.5


def test_interval_estimates_contain_the_point_and_are_reproducible():
    rng = np.random.default_rng(3)
    score_dict = {"A": rng.normal(0.5, 0.2, (5, 4)), "B": rng.normal(0.0, 0.2, (5, 4))}
    first = stats.aggregate_interval_estimates(score_dict, reps=REPS, seed=7)
    assert first == stats.aggregate_interval_estimates(score_dict, reps=REPS, seed=7)
    for per_metric in first.values():
        for estimate in per_metric.values():
            assert estimate.low <= estimate.point <= estimate.high


def test_normalized_score():
    assert stats.normalized_score(85.0, 80.0, 90.0) == pytest.approx(0.5)
    np.testing.assert_allclose(stats.normalized_score(np.array([[80.0, 50.0]]), [80.0, 40.0], [90.0, 60.0]), [[0.0, 0.5]])
    with pytest.raises(ValueError, match="high > low"):
        stats.normalized_score(85.0, 80.0, 80.0)
    with pytest.raises(ValueError, match="high > low"):
        stats.normalized_score([1.0, 2.0], [0.0, 3.0], [1.0, 3.0])


def test_normalize_maps_the_references_means_to_zero_and_one():
    raw = {
        "AVER": np.array([[80.0, 60.0], [82.0, 62.0]]),
        "oracle": np.array([[90.0, 70.0], [92.0, 70.0]]),
        "PPO": np.array([[86.0, 66.0], [86.0, 66.0]]),
    }
    normalised = stats.normalize(raw, low="AVER", high="oracle", tasks=["pool-a", "pool-b"])
    np.testing.assert_allclose(normalised["AVER"].mean(axis=0), [0.0, 0.0])
    np.testing.assert_allclose(normalised["oracle"].mean(axis=0), [1.0, 1.0])
    np.testing.assert_allclose(normalised["PPO"], [[0.5, 5 / 9], [0.5, 5 / 9]])
    raw["oracle"] = raw["AVER"].copy()
    with pytest.raises(ValueError, match="pool-a"):
        stats.normalize(raw, low="AVER", high="oracle", tasks=["pool-a", "pool-b"])
    with pytest.raises(ValueError, match="'best'"):
        stats.normalize(raw, low="AVER", high="best")


def test_performance_profile_of_a_known_array():
    scores = np.array([[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_allclose(stats.run_score_distribution(scores, 1.5), 0.5)
    profile = stats.performance_profile({"A": scores}, taus=[-1.0, 0.5, 1.5, 3.0], reps=REPS)["A"]
    np.testing.assert_allclose(profile.point, [1.0, 0.75, 0.5, 0.0])  # strictly above tau
    assert np.all(profile.low <= profile.point) and np.all(profile.point <= profile.high)
    assert (profile.low[0], profile.high[0], profile.low[-1], profile.high[-1]) == (1.0, 1.0, 0.0, 0.0)


def test_invalid_input_is_refused_with_a_clear_error():
    good = np.zeros((5, 3))
    with pytest.raises(ValueError, match="'B'.*shape"):
        stats.aggregate_interval_estimates({"A": good, "B": np.zeros((4, 3))})
    failed = good.copy()
    failed[2, 1] = np.nan
    with pytest.raises(ValueError, match="'PPO'.*run 2, pool-b"):
        stats.validate_scores({"AVER": good, "PPO": failed}, tasks=["pool-a", "pool-b", "pool-c"])
    with pytest.raises(ValueError, match="non-finite"):
        stats.aggregate_interval_estimates({"PPO": failed})
    with pytest.raises(ValueError, match="same shape"):
        stats.paired_difference_ci(good, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="same number of tasks"):
        stats.probability_of_improvement(good, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="at least 2 runs"):
        stats.aggregate_interval_estimates({"A": np.zeros((1, 3))})
    with pytest.raises(ValueError, match="baseline"):
        stats.summary_table({"A": good}, baseline="AVER")


def test_scores_from_records_builds_the_array_and_names_missing_runs():
    records = [
        {"method": m, "scenario": s, "seed": seed, "test_acc": 10 * seed + i}
        for m in ["AVER", "PPO"]
        for i, s in enumerate(["pool-b", "pool-a"])
        for seed in [1, 0]
    ]
    score_dict, tasks, seeds = stats.scores_from_records(records, value="test_acc")
    assert list(score_dict) == ["AVER", "PPO"] and tasks == ["pool-a", "pool-b"] and seeds == [0, 1]
    np.testing.assert_array_equal(score_dict["PPO"], [[1.0, 0.0], [11.0, 10.0]])
    with pytest.raises(ValueError, match="'PPO', scenario 'pool-a', seed 0"):
        stats.scores_from_records(records[:-1], value="test_acc")
    with pytest.raises(ValueError, match="two results"):
        stats.scores_from_records(records + records[:1], value="test_acc")


def test_report_writes_tables_and_plots(tmp_path):
    rng = np.random.default_rng(4)
    score_dict = {
        "PPO": rng.normal(0.6, 0.2, (5, 3)),
        "REINFORCE": rng.normal(0.3, 0.2, (5, 3)),
        "AVER": rng.normal(0.0, 0.1, (5, 3)),
        "oracle": rng.normal(1.0, 0.1, (5, 3)),
    }
    rows = stats.write_report(
        score_dict, tmp_path, baseline="AVER", references={"AVER", "oracle"}, taus=np.linspace(-0.5, 1.5, 9), reps=REPS
    )
    assert [row["method"] for row in rows] == ["PPO", "REINFORCE", "AVER", "oracle"]
    assert [row["group"] for row in rows] == ["competitor", "competitor", "reference", "reference"]
    aver = rows[2]
    assert aver["p_improvement"] == 0.5 and aver["iqm_diff"] == 0.0
    for row in rows:
        for key in ["iqm", "mean", "median", "optimality_gap", "p_improvement", "iqm_diff"]:
            assert row[f"{key}_ci_low"] <= row[key] <= row[f"{key}_ci_high"]
    for name in ["interval_estimates.png", "performance_profiles.png"]:
        assert_png(tmp_path / name)
    assert json.loads((tmp_path / "stats.json").read_text()) == rows
    assert_csv_matches_json(tmp_path / "stats.csv", rows)  # every column, every row
    markdown = (tmp_path / "stats.md").read_text()
    assert "| PPO | competitor | 5 x 3 |" in markdown and "P(X > AVER)" in markdown


def test_leader_is_named_against_the_best_label_confidence_rule(tmp_path):
    from kd_env.comparison.report import write_leader_comparison

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, size=(5, 2))
    normalised = {
        "Router": 0.95 + noise,
        "CE softmax": 0.80 + noise[::-1],
        "CE route": 0.70 + noise,
        "EBKD": 0.10 + noise,
        "Oracle": 1.0 + noise,
    }
    rows = write_leader_comparison(normalised, tmp_path, {"Oracle"}, {"CE softmax", "CE route"})
    text = (tmp_path / "leader.md").read_text()
    assert "**Router**" in text and "Against the strongest label-confidence rule, **CE softmax**" in text and "clears it" in text
    assert {row["versus"] for row in rows if row["label_confidence_rule"]} == {"CE softmax", "CE route"}
    # the same method level with the rule: named, and not called the leader over it
    swings = np.array([[0.06, -0.05], [-0.05, 0.06], [0.06, -0.05], [-0.05, 0.06], [0.06, -0.05]])  # ahead on average, not reliably
    normalised["Router"] = normalised["CE softmax"] + swings
    write_leader_comparison(normalised, tmp_path, {"Oracle"}, {"CE softmax", "CE route"})
    text = (tmp_path / "leader.md").read_text()
    assert "**Router**" in text and "does **not** clear it" in text
    # the rule itself leads: said so
    normalised["CE softmax"] = normalised["Router"] + 0.1
    write_leader_comparison(normalised, tmp_path, {"Oracle"}, {"CE softmax", "CE route"})
    assert "The leader is a label-confidence rule (no learning): **CE softmax**" in (tmp_path / "leader.md").read_text()
    # without such a rule in the comparison: no sentence
    write_leader_comparison({k: v for k, v in normalised.items() if not k.startswith("CE")}, tmp_path, {"Oracle"}, set())
    assert "label-confidence" not in (tmp_path / "leader.md").read_text()
