"""Binary metrics against values computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from training.metrics import (balanced_accuracy_threshold, binary_metrics, by_face_size, cautious_threshold, chance_ece, confusion, expected_calibration_error,
                              mean_dataset_auc)

# 4 real, 4 fake. At threshold 0.5: reals 0.12 0.22 0.32 right, 0.62 wrong; fakes 0.82 0.92 0.72 right, 0.42 wrong.
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
PROBS = np.array([0.12, 0.22, 0.62, 0.32, 0.82, 0.92, 0.42, 0.72])


def test_confusion_counts() -> None:
    predicted = (PROBS >= 0.5).astype(int)
    assert confusion(LABELS, predicted) == [[3, 1], [1, 3]]


def test_binary_metrics_by_hand() -> None:
    m = binary_metrics(LABELS, PROBS, 0.5)
    assert m["n"] == 8
    assert m["confusion"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)  # tp / (tp + fp)
    assert m["recall"] == pytest.approx(3 / 4)  # tp / (tp + fn)
    assert m["f1"] == pytest.approx(0.75)
    assert m["per_class"]["real"] == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    assert m["macro_f1"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["false_positive_rate"] == pytest.approx(1 / 4)
    # fake above real in 4 + 4 + 3 + 4 = 15 of the 16 pairs
    assert m["roc_auc"] == pytest.approx(15 / 16)
    assert m["ece"] == pytest.approx(0.30)


def test_threshold_moves_the_counts() -> None:
    m = binary_metrics(LABELS, PROBS, 0.4)  # now 0.42 is caught, 0.62 still a false alarm
    assert m["confusion"] == [[3, 1], [0, 4]]
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(2 * 0.8 * 1.0 / 1.8)
    assert m["per_class"]["real"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["real"]["recall"] == pytest.approx(0.75)


def test_ece_each_sample_alone_in_its_bin() -> None:
    # confidences 0.88 0.78 0.62 0.68 0.82 0.92 0.58 0.72 fall in eight different 0.05-wide bins;
    # |correct - confidence| = .12 .22 .62 .32 .18 .08 .58 .28, mean 2.40 / 8
    assert expected_calibration_error(LABELS, PROBS) == pytest.approx(0.30)


def test_ece_weights_a_shared_bin_by_its_accuracy() -> None:
    # one bin [0.90, 0.95): accuracy 2/3, mean confidence (0.91 + 0.93 + 0.94) / 3
    labels, probs = np.array([1, 1, 0]), np.array([0.91, 0.93, 0.94])
    assert expected_calibration_error(labels, probs) == pytest.approx(0.26)  # |0.6667 - 0.9267|


def test_real_only_folder_reports_its_false_positive_rate() -> None:
    m = binary_metrics(np.zeros(4, int), np.array([0.1, 0.7, 0.2, 0.9]), 0.5)
    assert m["false_positive_rate"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["roc_auc"] is None and m["balanced_accuracy"] is None and m["macro_f1"] is None
    assert m["confusion"] == [[2, 2], [0, 0]]


def test_threshold_choice_maximises_balanced_accuracy() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.1, 0.3, 0.35, 0.6, 0.4, 0.45, 0.8, 0.9])
    # t = 0.40: reals below 3/4, fakes at or above 4/4 -> 0.875; t = 0.8: 4/4 and 2/4 -> 0.75; t = 0.5: 3/4 and 2/4
    assert balanced_accuracy_threshold(labels, probs) == pytest.approx(0.4)
    m = binary_metrics(labels, probs, 0.4)
    assert m["balanced_accuracy"] == pytest.approx(0.875)


def test_threshold_choice_weights_each_datasets_real_and_fake_alike() -> None:
    sets = ["a"] * 6 + ["b"] * 5
    labels = np.array([0] * 6 + [0, 0, 0, 1, 1])
    probs = np.array([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.6, 0.7, 0.55, 0.9])
    # pooled, a's six easy reals outvote b's: t = 0.55 gives reals 7/9, fakes 2/2 -> 0.889 (t = 0.9: 0.75)
    assert balanced_accuracy_threshold(labels, probs) == pytest.approx(0.55)
    # per (set, label) group: t = 0.9 gives a-real 1, b-real 1, b-fake 1/2 -> 0.833; t = 0.55: 1, 1/3, 1 -> 0.778
    assert balanced_accuracy_threshold(labels, probs, sets) == pytest.approx(0.9)


def test_cautious_threshold_is_the_highest_within_a_standard_error_of_the_best() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(200, int), np.ones(200, int)]
    probs = np.r_[rng.uniform(0.0, 0.6, 200), rng.uniform(0.4, 1.0, 200)]  # overlapping: a flat optimum
    balanced = lambda t: binary_metrics(labels, probs, t)["balanced_accuracy"]  # noqa: E731
    best = balanced_accuracy_threshold(labels, probs)
    real_recall, fake_recall = (probs[:200] < best).mean(), (probs[200:] >= best).mean()
    standard_error = np.sqrt(real_recall * (1 - real_recall) / 200 + fake_recall * (1 - fake_recall) / 200) / 2
    cautious = cautious_threshold(labels, probs)
    assert cautious > best and balanced(cautious) >= balanced(best) - standard_error
    assert all(balanced(t) < balanced(best) - standard_error for t in probs[probs > cautious])
    assert (probs[:200] >= cautious).mean() < (probs[:200] >= best).mean()  # fewer reals called fake


def test_cautious_threshold_on_separated_classes_still_catches_every_fake() -> None:
    labels, probs = np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert balanced_accuracy_threshold(labels, probs) == pytest.approx(0.5)
    assert cautious_threshold(labels, probs) == pytest.approx(0.7)  # no error to spend: the highest perfect one


def test_mean_dataset_auc_scores_each_set_alone() -> None:
    # a: fakes above reals, AUC 1. b: one of the four (fake, real) pairs in order, AUC 1/4.
    # Pooled, b's high scores beat a's, so one AUC over both would reward the set, not the fake.
    labels = [0, 1, 0, 0, 1, 1, 0]
    probs = [0.1, 0.2, 0.9, 0.7, 0.8, 0.6, 0.3]
    sets = ["a", "a", "b", "b", "b", "b", "only-real"]
    mean, per_set = mean_dataset_auc(labels, probs, sets)
    # only-real (0.3) against every fake (0.2, 0.8, 0.6): below two of the three
    assert per_set == {"a": 1.0, "b": 0.25, "only-real": pytest.approx(2 / 3)}
    assert mean == pytest.approx((1.0 + 0.25 + 2 / 3) / 3)


def test_mean_dataset_auc_ranks_one_class_sets_against_the_other_class() -> None:
    assert mean_dataset_auc([0, 0, 1], [0.1, 0.2, 0.3], ["r", "r", "f"]) == (1.0, {"f": 1.0, "r": 1.0})
    assert mean_dataset_auc([0, 0], [0.1, 0.2], ["r", "r"]) == (None, {})


def test_chance_ece_is_zero_for_certain_answers_and_shrinks_with_more_photos() -> None:
    assert chance_ece(np.ones(50)) == 0.0
    rng = np.random.default_rng(1)
    few, many = chance_ece(rng.random(50)), chance_ece(rng.random(5000))
    assert 0.0 < many < few
    probs = rng.random(200)
    assert chance_ece(probs, seed=3) == chance_ece(probs, seed=3)  # the same figure on every run


def test_chance_ece_bounds_the_ece_of_labels_drawn_from_the_probabilities() -> None:
    rng = np.random.default_rng(2)
    probs = rng.random(300)
    draws = [expected_calibration_error((rng.random(300) < probs).astype(int), probs) for _ in range(200)]
    assert 0.90 <= np.mean(np.array(draws) <= chance_ece(probs)) <= 0.99


def test_by_face_size_splits_each_class_at_its_quartiles() -> None:
    """Eight real faces 10-80 px wide, the larger half called fake; eight fakes, all caught; faceless photos left out."""
    widths = np.array([10, 20, 30, 40, 50, 60, 70, 80] * 2 + [np.nan, np.nan], dtype=float)
    labels = np.array([0] * 8 + [1] * 8 + [0, 1])
    probs = np.array([0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9] + [0.9] * 8 + [0.9, 0.1])
    rows = by_face_size(labels, probs, widths, threshold=0.5)
    assert rows["real"]["n"] == 8 and rows["real"]["width_range_px"] == [10.0, 80.0]
    assert rows["real"]["width_quartiles_px"] == pytest.approx([27.5, 45.0, 62.5])
    assert rows["real"]["called_fake"] == {"smallest quarter": 0.0, "middle half": 0.5, "largest quarter": 1.0}
    assert rows["fake"]["called_fake"] == {"smallest quarter": 1.0, "middle half": 1.0, "largest quarter": 1.0}


def test_by_face_size_leaves_out_a_class_with_too_few_faces() -> None:
    labels = np.array([0] * 8 + [1] * 3)
    rows = by_face_size(labels, np.full(11, 0.2), np.arange(11, dtype=float) + 20, threshold=0.5)
    assert set(rows) == {"real"} and rows["real"]["called_fake"]["largest quarter"] == 0.0
