"""Calibration maps, the uncertain band, the verdict rule, and how training.calibrate fits and chooses them:
against values worked out by hand and against the service's own Pipeline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.calibration import Calibration, UncertainBand, label, verdict
from service.config import Settings
from service.contract import ModelCard
from service.faces import Face
from service.onnx_model import read_card
from service_fixtures import uncalibrated_card
from service.pipeline import Pipeline, Prepared
from training import calibrate
from training.data import Sample
from training.metrics import expected_calibration_error, uncertain_metrics
from training.scoring import Predictions

GRID = np.linspace(0.0, 1.0, 101)


def test_none_is_the_identity_and_a_card_written_before_calibration_has_none():
    assert np.array_equal(Calibration().apply(GRID), GRID)
    shipped = read_card(Settings().model).model_dump()
    older = ModelCard.model_validate({k: v for k, v in shipped.items() if k not in ("calibration", "uncertain_band")})
    assert older.calibration.method == "none" and older.uncertain_band is None


def test_temperature_by_hand():
    half, double = Calibration(method="temperature", temperature=0.5), Calibration(method="temperature", temperature=2.0)
    # logit(0.8) = ln 4; / 0.5 -> ln 16 -> 16/17; / 2 -> ln 2 -> 2/3
    assert half.apply(np.array([0.8]))[0] == pytest.approx(16 / 17)
    assert double.apply(np.array([0.8]))[0] == pytest.approx(2 / 3)
    assert double.apply(np.array([0.5]))[0] == pytest.approx(0.5)
    one = Calibration(method="temperature", temperature=1.0).apply(GRID)
    np.testing.assert_allclose(one, GRID, atol=1e-6)  # T = 1 only clips 0 and 1 to 1e-7 from the ends
    ends = double.apply(np.array([0.0, 1.0]))
    assert np.all(np.isfinite(ends)) and 0.0 < ends[0] < 0.01 and 0.99 < ends[1] < 1.0


def test_isotonic_interpolates_between_its_knots_and_clips_outside():
    iso = Calibration(method="isotonic", x=[0.2, 0.6, 0.9], y=[0.1, 0.1, 0.8])
    np.testing.assert_allclose(iso.apply(np.array([0.0, 0.2, 0.4, 0.75, 0.9, 1.0])), [0.1, 0.1, 0.1, 0.45, 0.8, 0.8])


@pytest.mark.parametrize("calibration", [Calibration(), Calibration(method="temperature", temperature=0.3),
                                         Calibration(method="temperature", temperature=7.0),
                                         Calibration(method="isotonic", x=[0.1, 0.5, 0.5, 0.9], y=[0.0, 0.2, 0.4, 1.0])])
def test_every_map_is_monotone_in_range_and_keeps_the_shape(calibration):
    mapped = calibration.apply(GRID)
    assert np.all(np.diff(mapped) >= 0) and mapped.min() >= 0.0 and mapped.max() <= 1.0
    assert calibration.apply(GRID.reshape(-1, 1)).shape == (101, 1)


@pytest.mark.parametrize("knots", [{"x": [0.5], "y": [0.5]}, {"x": [0.1, 0.2], "y": [0.5]}, {"x": [0.3, 0.2], "y": [0.1, 0.2]},
                                   {"x": [0.1, 0.2], "y": [0.6, 0.2]}, {"x": [0.1, 1.2], "y": [0.1, 0.2]}])
def test_bad_isotonic_knots_are_refused(knots):
    with pytest.raises(ValidationError):
        Calibration(method="isotonic", **knots)
    with pytest.raises(ValidationError):
        Calibration(method="temperature", temperature=0.0)


def test_the_band_holds_its_low_edge_not_its_high_one():
    band = UncertainBand(low=0.4, high=0.6)
    assert [band.contains(p) for p in (0.39, 0.4, 0.5, 0.5999, 0.6)] == [False, True, True, True, False]
    np.testing.assert_array_equal(band.contains(np.array([0.3, 0.4, 0.6])), [False, True, False])
    assert not UncertainBand(low=0.5, high=0.5).contains(0.5)  # an empty band holds nothing
    with pytest.raises(ValidationError):
        UncertainBand(low=0.7, high=0.6)


def test_labels_and_the_verdict_rule():
    band = UncertainBand(low=0.4, high=0.6)
    assert [label(p, 0.5, band) for p in (0.1, 0.4, 0.55, 0.6, 0.9)] == ["real", "uncertain", "uncertain", "fake", "fake"]
    assert [label(p, 0.5, None) for p in (0.49, 0.5)] == ["real", "fake"]
    assert verdict(["real", "uncertain", "real"]) == "uncertain"
    assert verdict(["uncertain", "fake", "real"]) == "fake"  # one fake face makes the image fake
    assert verdict(["real", "real"]) == "real"


def _pipeline(band="card", calibration: Calibration | None = None, threshold: float = 0.5) -> Pipeline:
    card = read_card(Settings().model).model_copy(update={"threshold": threshold, "calibration": calibration or Calibration(), "tta_mirror": False})
    return Pipeline(card, detector=None, angles=(-15.0, 0.0, 15.0), band=band)


def _prepared(faces: int) -> Prepared:
    found = [Face(box=(10.0 * i, 0.0, 10.0 * i + 8, 8.0), score=0.99) for i in range(faces)]
    return Prepared("x.jpg", found, max(faces, 1) if faces else 0, np.zeros((max(faces, 1) * 3, 8, 8, 3), dtype=np.uint8))


@pytest.mark.parametrize(("faces", "expected"), [
    ([0.1, 0.5, 0.2], ["real", "uncertain", "real"]),
    ([0.5, 0.9, 0.1], ["uncertain", "fake", "real"]),
    ([0.1, 0.2], ["real", "real"]),
])
def test_pipeline_labels_each_face_and_the_most_fake_label_decides(faces, expected):
    pipeline = _pipeline(band=UncertainBand(low=0.4, high=0.6))
    result = pipeline.assemble(_prepared(len(faces)), np.repeat(faces, 3))
    assert [face.label for face in result.faces] == expected
    assert result.verdict == verdict(expected) and result.fake_probability == pytest.approx(max(faces))
    assert result.model.uncertain_band == (0.4, 0.6)


def test_pipeline_whole_image_follows_the_same_rule_and_off_means_no_band():
    assert _pipeline(band=UncertainBand(low=0.4, high=0.6)).assemble(_prepared(0), np.full(3, 0.45)).verdict == "uncertain"
    off = _pipeline(band=None).assemble(_prepared(0), np.full(3, 0.45))
    assert off.verdict == "real" and off.model.uncertain_band is None
    card_band = uncalibrated_card().model_copy(update={"uncertain_band": UncertainBand(low=0.3, high=0.5)})  # 0.45 stays 0.45
    assert Pipeline(card_band, None).assemble(_prepared(0), np.full(3, 0.45)).verdict == "uncertain"  # "card": the card's band


def test_pipeline_calibrates_each_rotation_then_averages():
    calibration = Calibration(method="temperature", temperature=2.0)
    raw = np.array([0.8, 0.5, 0.2, 0.9, 0.9, 0.9])  # two faces, three rotations each
    result = _pipeline(calibration=calibration).assemble(_prepared(2), raw)
    expected = calibration.apply(raw).reshape(2, 3)
    assert [p for face in result.faces for p in face.tta.values()] == pytest.approx(expected.ravel().tolist())
    assert [face.fake_probability for face in result.faces] == pytest.approx(expected.mean(axis=1).tolist())
    assert result.model.calibration == "temperature"
    uncalibrated = Pipeline(_pipeline(calibration=calibration).card, None, (-15.0, 0.0, 15.0), calibrated=False).assemble(_prepared(2), raw)
    assert uncalibrated.faces[0].tta["-15"] == pytest.approx(0.8) and uncalibrated.model.calibration == "none"


def test_the_band_setting_card_off_or_edges():
    card = read_card(Settings().model).model_copy(update={"uncertain_band": UncertainBand(low=0.3, high=0.5, rule="r")})
    assert Settings(uncertain_band="card").band_for(card) == card.uncertain_band
    assert Settings(uncertain_band="off").band_for(card) is None
    assert Settings(uncertain_band="0.45, 0.7").band_for(card).edges == (0.45, 0.7)
    assert Settings().uncertain_band == "card"


@pytest.mark.parametrize("value", ["0.7,0.45", "maybe", "0.5", "0.1,0.2,0.3", "-0.1,0.5", "0.5,1.5"])
def test_a_malformed_band_setting_is_a_clear_error(value, monkeypatch):
    monkeypatch.setenv("FACECHECK_UNCERTAIN_BAND", value)
    with pytest.raises(ValidationError, match="FACECHECK_UNCERTAIN_BAND") as caught:
        Settings()
    assert "card, off or LOW,HIGH" in str(caught.value) or "0 <= LOW <= HIGH <= 1" in str(caught.value)


# --- training.calibrate --------------------------------------------------------------------------------


def predictions(labels: np.ndarray, units: np.ndarray, owners: np.ndarray, sets: list[str] | None = None) -> Predictions:
    samples = [Sample(path=Path(f"{i}.jpg"), label=int(y), dataset=(sets[i] if sets else "gen")) for i, y in enumerate(labels)]
    return Predictions(samples, np.zeros(len(samples)), np.ones(len(samples), dtype=bool), 0.5, units=units, owners=owners)


def test_image_probs_is_the_pipelines_most_fake_mean_of_calibrated_rotations():
    calibration = Calibration(method="temperature", temperature=1.7)
    raw = np.random.default_rng(0).uniform(0, 1, (5, 3))  # image 0: faces 0, 1; image 1: faces 2, 3, 4
    found = predictions(np.array([0, 1]), raw, np.array([0, 0, 1, 1, 1]))
    pipeline = _pipeline(calibration=calibration)
    by_pipeline = [pipeline.assemble(_prepared(2), raw[:2].ravel()).fake_probability, pipeline.assemble(_prepared(3), raw[2:].ravel()).fake_probability]
    assert calibrate.image_probs(found, calibration).tolist() == by_pipeline  # exactly: the card's metrics come from one, evaluation from the other
    assert calibrate.image_probs(found).tolist() == [raw[:2].mean(axis=1).max(), raw[2:].mean(axis=1).max()]
    assert calibrate.image_probs(found, calibration, np.array([1])).tolist() == by_pipeline[1:]


def overconfident(n: int = 3000, seed: int = 0) -> Predictions:
    """One face, one rotation per image: true probability q, reported as sigmoid(3 logit q), far too sure."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.02, 0.98, n)
    labels = (rng.uniform(size=n) < q).astype(int)
    reported = 1 / (1 + np.exp(-3 * np.log(q / (1 - q))))
    return predictions(labels, reported.reshape(-1, 1), np.arange(n))


def test_temperature_undoes_overconfidence_and_is_chosen_over_isotonic():
    val = overconfident()
    calibration, fitting = calibrate.choose_calibration(val)
    assert calibration.method == "temperature" and calibration.temperature == pytest.approx(3.0, rel=0.2)
    assert "isotonic regression where its 5-fold cross-validated ECE is at least 0.01 lower" in calibration.rule
    before, after = expected_calibration_error(val.labels, calibrate.image_probs(val)), expected_calibration_error(val.labels, calibrate.image_probs(val, calibration))
    assert before > 0.1 and after < 0.03
    assert set(fitting["cross_validated_ece"]) == {"temperature", "isotonic"}


def test_isotonic_is_chosen_where_no_temperature_can_fit():
    # reported 0.6 for every real photo and 0.7 for every fake one: only a map that moves 0.6 down and 0.7 up fits
    labels = np.array([0] * 200 + [1] * 200)
    val = predictions(labels, np.where(labels == 1, 0.7, 0.6).reshape(-1, 1), np.arange(400))
    calibration, fitting = calibrate.choose_calibration(val)
    assert calibration.method == "isotonic"
    assert fitting["cross_validated_ece"]["isotonic"] <= fitting["cross_validated_ece"]["temperature"] - calibrate.ISOTONIC_GAIN
    np.testing.assert_allclose(calibration.apply(np.array([0.6, 0.7])), [0.0, 1.0])


def test_band_by_hand():
    # one set; threshold 0.5. At or above 0.7 every photo is fake, at or above 0.55 or 0.5: 3 of 4 (75%).
    # Below 0.45 every photo is real (0.1, 0.2, 0.4), below 0.5: 3 of 4; so the band is [0.45, 0.7).
    probs = np.array([0.1, 0.2, 0.4, 0.6, 0.45, 0.55, 0.7, 0.9])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    band, fit = calibrate.choose_band(labels, probs, ["gen"] * 8, 0.5, precision=0.95)
    assert band.edges == (0.45, 0.7) and fit["fake_precision_above"] == 1.0 and fit["real_precision_below"] == 1.0
    assert "at least 95% precise" in band.rule
    band, _ = calibrate.choose_band(labels, probs, ["gen"] * 8, 0.5, precision=0.7)
    assert band.edges == (0.5, 0.5)  # 75% on both sides at the threshold itself: nothing is uncertain
    assert calibrate.choose_band(np.array([0, 1]), np.array([0.9, 0.1]), ["gen"] * 2, 0.5)[0].edges == (0.0, 1.0)  # no cut works


def test_band_weighs_real_and_fake_half_and_half_and_sets_alike():
    weights = calibrate.balanced_weights(np.array([0, 0, 0, 1, 0, 1]), ["a", "a", "a", "a", "b", "b"])
    # reals: set a (3 photos) and set b (1) a quarter each; fakes: set a and set b a quarter each
    np.testing.assert_allclose(weights, [1 / 12, 1 / 12, 1 / 12, 0.25, 0.25, 0.25])


def test_uncertain_metrics_report_both_sides():
    labels, probs = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.55, 0.45, 0.9, 0.3])
    m = uncertain_metrics(labels, probs, 0.5, UncertainBand(low=0.4, high=0.6))
    assert (m["uncertain"], m["uncertain_share"], m["confident_share"]) == (2, 0.4, 0.6)
    assert m["confident_accuracy"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(2 / 5)  # 0.3 is wrong either way
    assert uncertain_metrics(labels, probs, 0.5, None)["confident_accuracy"] == m["accuracy"]
    assert uncertain_metrics(labels, probs, 0.5, UncertainBand(low=0.0, high=1.0))["confident_accuracy"] is None
    # verdicts: fake only at or above the band's high edge (0.9); 0.55 is uncertain, not a real photo answered fake
    assert (m["real_answered_fake"], m["fake_answered_fake"]) == (0.0, pytest.approx(1 / 3))
    forced = uncertain_metrics(labels, probs, 0.5, None)
    assert (forced["real_answered_fake"], forced["fake_answered_fake"]) == (0.5, pytest.approx(1 / 3))
    assert uncertain_metrics(np.array([0, 0]), np.array([0.7, 0.2]), 0.5, None)["fake_answered_fake"] is None
    # let through: 0.3 is below the band, 0.45 inside it (uncertain, not real)
    assert m["fake_answered_real"] == pytest.approx(1 / 3) and forced["fake_answered_real"] == pytest.approx(2 / 3)
    assert uncertain_metrics(np.array([0, 0]), np.array([0.7, 0.2]), 0.5, None)["fake_answered_real"] is None


def test_calibrating_again_measures_every_chain_and_keeps_the_cards_own():
    from training.chains import ROBUSTNESS_CHAINS

    card = uncalibrated_card()
    older = card.model_copy(update={"metrics": {"robustness": {"chains": {"x0.5": {}, "jpeg95": {}, "x0.25>jpeg50": {}}}}})
    assert calibrate.chains_to_measure(older) == [*ROBUSTNESS_CHAINS, "x0.25>jpeg50"]
    assert calibrate.chains_to_measure(card.model_copy(update={"metrics": {}})) == list(ROBUSTNESS_CHAINS)


def test_the_readme_table_gives_each_sets_ece_under_re_processing_from_the_cards_chains():
    card = read_card(Settings().model)
    chains = card.metrics["robustness"]["chains"]
    name = next(iter(card.metrics["calibration"]["test"]))
    eces = {chain: sets[name]["ece"] for chain, sets in chains.items()}
    worst = max(eces, key=eces.get)
    cell = calibrate.reprocessed_ece(card, name)
    assert cell == f"{np.median(list(eces.values())):.3f}, {eces[worst]:.3f} ({worst})"
    row = next(line for line in calibrate.table(card).splitlines() if line.startswith(name))
    assert cell in row and "ECE re-processed: median, worst" in calibrate.table(card)
    bare = card.model_copy(update={"metrics": {k: v for k, v in card.metrics.items() if k != "robustness"}})
    assert calibrate.reprocessed_ece(bare, name) == "–"
