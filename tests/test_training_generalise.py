"""The generalisation tables end to end on tiny generated data: robustness chains through the service
pipeline of a real export, and leave-one-source-out training, each written into a README section."""
from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.onnx_model import read_card
from test_training_e2e import TINY, make_dataset
from training import export, generalise, loso, report, robustness, scoring, train
from training.cache import CropCache
from training.data import make_split, scan_dataset

README = "# facecheck\n\nbefore\n<!-- generalise:robustness -->\nold table\n<!-- /generalise:robustness -->\nbetween\n" \
         "<!-- generalise:loso -->\n<!-- /generalise:loso -->\nafter\n"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny whole-image CNN, exported with its card and split: an .onnx the service pipeline can run."""
    tmp = tmp_path_factory.mktemp("generalise")
    data = make_dataset(tmp / "gen", n_real=20, n_fake=20)
    with pytest.MonkeyPatch.context() as mp:
        for module in (train, scoring, report, export):
            mp.setattr(module, "CropCache", partial(CropCache, tmp / "cache"))
        assert train.main(["--model", "cnn", "--data", str(data), "--out", str(tmp / "run"), "--pretrained", "none", *TINY]) == 0
        assert export.main(["--checkpoint", str(tmp / "run" / "best.pt"), "--name", "tiny", "--out", str(tmp / "exports"),
                            "--data", str(data), "--tta", "0"]) == 0
    return tmp / "exports" / "tiny.onnx", data


@pytest.mark.slow
def test_robustness_scores_each_chain_and_writes_json_png_and_readme(exported, tmp_path: Path, capsys) -> None:
    model, data = exported
    readme = tmp_path / "README.md"
    readme.write_text(README)
    out = tmp_path / "out"
    argv = ["robustness", "--model", str(model), "--data", str(data), "--chains", "x0.5;256px>jpeg90", "--tta", "0",
            "--out", str(out), "--readme", str(readme)]
    assert generalise.main(argv) == 0
    printed = capsys.readouterr().out
    assert "x0.5" in printed and "256px>jpeg90" in printed and "Worst:" in printed
    summary = json.loads((out / "robustness.json").read_text())[str(model)]
    test_count = len(json.loads(model.with_name("tiny.split.json").read_text())["datasets"]["gen"]["test"])
    assert list(summary["results"]) == ["none", "x0.5", "256px>jpeg90"]
    assert all(per_set["gen"]["n"] == test_count for per_set in summary["results"].values())
    assert (out / "robustness-tiny.png").stat().st_size > 1000
    for per_set in summary["results"].values():  # measured with the card's band: a verdict is fake only above it
        m = per_set["gen"]
        assert 0.0 <= m["real_answered_fake"] <= m["false_positive_rate"] and 0.0 <= m["fake_answered_fake"] <= m["recall"]
        assert 0.0 <= m["uncertain_share"] <= 1.0
    assert "The verdicts, with the uncertain band" in printed
    text = readme.read_text()
    assert "as the service answers them, with the uncertain band" in text and text.count("| `x0.5` |") == 2
    assert "old table" not in text and "| `x0.5` |" in text and "robustness-tiny.png" in text
    assert text.startswith("# facecheck\n\nbefore\n") and text.endswith("between\n<!-- generalise:loso -->\n<!-- /generalise:loso -->\nafter\n")
    assert generalise.main(argv) == 0  # a second run replaces the section, it does not add one
    assert readme.read_text().count("| `x0.5` |") == 2  # once at the threshold, once with the band
    carded = tmp_path / "carded"
    capsys.readouterr()
    assert generalise.main([*argv[:-4], "--out", str(carded), "--from-card"]) == 0  # the export measured the same chains on the same split
    recorded = json.loads((carded / "robustness.json").read_text())[str(model)]["results"]
    assert recorded == summary["results"], "the card holds what measuring gives, the band's verdicts included"
    assert "The verdicts, with the uncertain band" in capsys.readouterr().out
    assert generalise.main([*argv[:-4], "--out", str(carded), "--from-card", "--chains", "x0.5;jpeg61"]) == 2  # a chain no card records
    own = ["robustness", "--model", str(model), "--data", str(data), "--tta", "0", "--out", str(tmp_path / "own"), "--from-card"]
    assert generalise.main(own) == 0  # without --chains, a card reports the chains it recorded, however old
    reported = json.loads((tmp_path / "own" / "robustness.json").read_text())[str(model)]["results"]
    assert list(reported) == ["none", *read_card(model).metrics["robustness"]["chains"]]


@pytest.mark.slow
def test_robustness_answers_with_the_band_the_service_would_use(exported, tmp_path: Path, capsys, monkeypatch) -> None:
    model, data = exported
    monkeypatch.setattr(scoring, "get_settings", lambda: Settings(uncertain_band="off"))
    argv = ["robustness", "--model", str(model), "--data", str(data), "--chains", "x0.5", "--tta", "0", "--out", str(tmp_path / "off")]
    assert generalise.main(argv) == 0
    assert "The verdicts" not in capsys.readouterr().out  # FACECHECK_UNCERTAIN_BAND=off: every answer is real or fake
    results = json.loads((tmp_path / "off" / "robustness.json").read_text())[str(model)]["results"]
    assert all("uncertain_share" not in m for per_set in results.values() for m in per_set.values())


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["0.01,0.99", "off"])
def test_from_card_leaves_out_verdicts_measured_with_another_band(exported, tmp_path: Path, capsys, monkeypatch, setting: str) -> None:
    model, data = exported
    monkeypatch.setattr(scoring, "get_settings", lambda: Settings(uncertain_band=setting))
    argv = ["robustness", "--model", str(model), "--data", str(data), "--tta", "0", "--out", str(tmp_path / "other"), "--from-card",
            "--readme", str(tmp_path / "README.md")]
    (tmp_path / "README.md").write_text(README)
    assert generalise.main(argv) == 0
    printed = capsys.readouterr().out
    assert "The verdicts" not in printed and "as the service answers them" not in (tmp_path / "README.md").read_text()
    assert ("records no verdicts with the band in force" in printed) == (setting != "off")
    results = json.loads((tmp_path / "other" / "robustness.json").read_text())[str(model)]["results"]
    assert all(set(m) == set(robustness.KEPT) for per_set in results.values() for m in per_set.values())


@pytest.mark.slow
def test_robustness_refuses_before_any_work(exported, tmp_path: Path, capsys) -> None:
    model, data = exported
    bare = tmp_path / "README.md"
    bare.write_text("# no section here\n")
    assert generalise.main(["robustness", "--model", str(model), "--data", str(data), "--readme", str(bare), "--out", str(tmp_path)]) == 2
    assert "no <!-- generalise:robustness -->" in capsys.readouterr().err
    assert not (tmp_path / "robustness.json").exists()
    assert generalise.main(["robustness", "--model", str(model), "--data", str(data), "--chains", "x0.5;sepia"]) == 2
    assert "unknown step 'sepia'" in capsys.readouterr().err


def test_limited_keeps_each_labels_share_and_is_the_same_every_run(tmp_path: Path) -> None:
    from training.data import scan_dataset

    samples = scan_dataset(make_dataset(tmp_path / "gen", n_real=30, n_fake=10))
    chosen = generalise.limited(samples, 20)
    assert sorted(s.label for s in chosen) == [0] * 15 + [1] * 5
    assert chosen == generalise.limited(samples, 20)
    assert generalise.limited(samples, None) == samples


@pytest.mark.slow
def test_loso_trains_without_each_source_scores_it_and_resumes(tmp_path: Path, monkeypatch, capsys) -> None:
    both = make_dataset(tmp_path / "both", n_real=12, n_fake=12)
    fakes = make_dataset(tmp_path / "fakes", n_real=0, n_fake=12)
    reals = make_dataset(tmp_path / "reals", n_real=12, n_fake=0)
    monkeypatch.setattr(generalise, "CropCache", partial(CropCache, tmp_path / "cache"))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    out = tmp_path / "loso"
    argv = ["loso", "--model", "cnn", "--data", str(both), "--data", str(fakes), "--data", str(reals), "--out", str(out),
            "--readme", str(readme), "--pretrained", "none", *TINY]
    assert generalise.main(argv) == 0
    rows = json.loads((out / "loso.json").read_text())["rows"]
    assert [r["source"] for r in rows] == ["both-fake", "fakes-fake", "both-real", "reals-real"]
    assert all(r["n"] == 12 for r in rows)  # every photo of the held-out source, train, val and test
    for row in rows:
        assert 0.0 <= row["called_fake"] <= 1.0 and 0.0 <= row["roc_auc"] <= 1.0
        assert (out / row["source"] / "fold.json").is_file() and not (out / row["source"] / "best.pt").exists()
    assert (out / "loso.png").stat().st_size > 1000
    assert "| both-fake | 12 |" in readme.read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(loso, "run_fold", no_training)
    assert generalise.main(argv) == 0
    assert json.loads((out / "loso.json").read_text())["rows"] == rows

    # an ensemble of a recipe with itself answers as the recipe does
    assert generalise.main(["loso-combine", "--run", str(out), "--run", str(out), "--out", str(tmp_path / "self")]) == 0
    combined = json.loads((tmp_path / "self" / "loso.json").read_text())["rows"]
    assert [(r["source"], r["n"]) for r in combined] == [(r["source"], r["n"]) for r in rows]
    for mine, theirs in zip(combined, rows):
        assert mine["roc_auc"] == pytest.approx(theirs["roc_auc"]) and mine["strict_threshold"] == pytest.approx(theirs["strict_threshold"])


@pytest.mark.slow
def test_loso_splits_afresh_a_set_its_split_file_lacks(tmp_path: Path, monkeypatch) -> None:
    both = make_dataset(tmp_path / "both", n_real=12, n_fake=12)
    added = make_dataset(tmp_path / "added", n_real=0, n_fake=12)
    monkeypatch.setattr(generalise, "CropCache", partial(CropCache, tmp_path / "cache"))
    split = tmp_path / "split.json"
    make_split(scan_dataset(both), seed=0).save(split)
    out = tmp_path / "loso"
    assert generalise.main(["loso", "--model", "cnn", "--data", str(both), "--data", str(added), "--split-file", str(split),
                            "--out", str(out), "--only", "added-fake", "--pretrained", "none", *TINY]) == 0
    rows = json.loads((out / "loso.json").read_text())["rows"]
    assert [(r["source"], r["n"]) for r in rows] == [("added-fake", 12)]


@pytest.mark.slow
def test_compare_scores_models_and_combinations_on_validation_and_caches_them(exported, tmp_path: Path, capsys, monkeypatch) -> None:
    from training import compare

    model, data = exported
    twin = tmp_path / "twin.onnx"
    twin.write_bytes(model.read_bytes())  # same graph, its own file: a second candidate
    monkeypatch.setattr(compare, "DEFAULT_CACHE", tmp_path / "cache")
    argv = ["--model", str(model), "--model", str(twin), "--data", str(data), "--split", str(model.with_name("tiny.split.json")),
            "--tta", "0", "--chain", "x0.5>x2"]
    assert compare.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert "reals called fake after x0.5>x2" in rows[0]
    labels = [row.split(" | ")[0].lstrip("| ") for row in rows[1:]]
    assert labels == ["tiny", "twin", "the larger probability of tiny + twin", "mean logit of tiny + twin"]
    cells = [row.split(" | ")[1:] for row in rows[1:]]
    assert cells[0] == cells[1] == cells[2] == cells[3]  # one model twice: every combination answers as the model
    # kept by the model's bytes: the twin reuses the model's scores, one for validation and one for the chain
    assert len(list((tmp_path / "cache" / "compare").glob("*.npz"))) == 2
    assert compare.main(argv) == 0 and capsys.readouterr().out.splitlines()[-1] == rows[-1]
    assert compare.main([*argv, "--matched"]) == 0
    matched = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][-1]
    assert matched.startswith("| twin at tiny's share of reals called fake | ")
    assert matched.split(" | ")[1:] == rows[1].split(" | ")[1:]  # the same model matched to itself: its own threshold and row
    assert compare.main([*argv, "--chain-fakes"]) == 0
    with_fakes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert "reals called fake / fakes caught after x0.5>x2" in with_fakes[0]
    assert with_fakes[1].rsplit(" | ", 1)[0] == rows[1].rsplit(" | ", 1)[0]  # the unprocessed cells are the same
    reals_cell, both_cell = rows[1].split(" | ")[-1], with_fakes[1].split(" | ")[-1]
    assert re.fullmatch(r"\S+ \d+\.\d% \|", reals_cell) and re.fullmatch(r"\S+ \d+\.\d% / \d+\.\d% caught \|", both_cell)
    assert both_cell.split(" / ")[0] == reals_cell.split(" |")[0]  # the reals' share is the cached one
    assert len(list((tmp_path / "cache" / "compare").glob("*.npz"))) == 3  # only the chained fakes were scored anew
    assert compare.main([*argv, "--cautious"]) == 0
    cautious = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    threshold = lambda row: float(row.split(" | ")[1])  # noqa: E731
    assert all(threshold(c) >= threshold(r) for c, r in zip(cautious[1:], rows[1:]))  # the tie broken upward, never down
    assert compare.main([*argv, "--chain", "x0"]) == 2


def test_a_matched_threshold_calls_as_many_reals_fake_as_the_reference() -> None:
    from training.compare import matched_threshold, mean_real_called_fake

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(200, int), np.ones(100, int)]
    datasets = np.array(["a"] * 100 + ["b"] * 100 + ["a"] * 100)
    reference = rng.uniform(0, 0.8, 300)
    shifted = reference * 0.5 + 0.3  # the same ranking, every probability moved: its own threshold lands elsewhere
    target = mean_real_called_fake(labels, datasets, reference, 0.6)
    threshold = matched_threshold(labels, datasets, shifted, target, near=0.6)
    assert mean_real_called_fake(labels, datasets, shifted, threshold) == pytest.approx(target)
    assert threshold == pytest.approx(0.6 * 0.5 + 0.3, abs=0.01)


def _fold(folder: Path, held: list[float], val: list[float], test: list[float]) -> Path:
    folder.mkdir(parents=True)
    labels = np.array([0, 0, 1, 1])
    loso.FoldScores(np.array(val), labels, np.array(["a"] * 4), np.array(test), labels, np.array(held)).save(folder / loso.SCORES)
    (folder / "fold.json").write_text(json.dumps({"dataset": "gen", "kind": "fake"}))
    return folder


def test_loso_combine_reads_each_fold_at_the_mean_logit(tmp_path: Path, capsys) -> None:
    """Alone, each run ranks one held-out fake below a real photo; their mean logit ranks both above every real."""
    first = _fold(tmp_path / "a" / "gen-fake", held=[0.95, 0.3], val=[0.1, 0.4, 0.6, 0.9], test=[0.1, 0.4, 0.6, 0.9])
    _fold(tmp_path / "b" / "gen-fake", held=[0.3, 0.95], val=[0.1, 0.4, 0.6, 0.9], test=[0.1, 0.4, 0.6, 0.9])
    alone = loso.fold_row(loso.Source("gen", 1), loso.FoldScores.load(first / loso.SCORES), 0.5)
    assert alone["roc_auc"] == 0.75
    assert generalise.main(["loso-combine", "--run", str(tmp_path / "a"), "--run", str(tmp_path / "b"), "--out", str(tmp_path / "ab")]) == 0
    [row] = json.loads((tmp_path / "ab" / "loso.json").read_text())["rows"]
    assert row["source"] == "gen-fake" and row["n"] == 2 and row["roc_auc"] == 1.0 and row["called_fake"] == 1.0
    assert "gen-fake" in capsys.readouterr().out
    assert (tmp_path / "ab" / "loso.png").stat().st_size > 1000


def test_loso_combine_weighs_each_run_as_told(tmp_path: Path, capsys) -> None:
    """All the weight on one run gives that run's own row; a weight for each run, no more, no less."""
    first = _fold(tmp_path / "a" / "gen-fake", held=[0.95, 0.3], val=[0.1, 0.4, 0.6, 0.9], test=[0.1, 0.4, 0.6, 0.9])
    _fold(tmp_path / "b" / "gen-fake", held=[0.3, 0.95], val=[0.1, 0.4, 0.6, 0.9], test=[0.1, 0.4, 0.6, 0.9])
    runs = ["--run", str(tmp_path / "a"), "--run", str(tmp_path / "b")]
    assert generalise.main(["loso-combine", *runs, "--weight", "1", "--weight", "0", "--out", str(tmp_path / "a-only")]) == 0
    [row] = json.loads((tmp_path / "a-only" / "loso.json").read_text())["rows"]
    alone = loso.fold_row(loso.Source("gen", 1), loso.FoldScores.load(first / loso.SCORES), row["threshold"])
    assert row["roc_auc"] == alone["roc_auc"] == 0.75 and row["called_fake"] == alone["called_fake"]
    assert generalise.main(["loso-combine", *runs, "--weight", "1", "--weight", "1", "--out", str(tmp_path / "equal")]) == 0
    [equal] = json.loads((tmp_path / "equal" / "loso.json").read_text())["rows"]
    assert equal["roc_auc"] == 1.0
    capsys.readouterr()
    assert generalise.main(["loso-combine", *runs, "--weight", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "one per member" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_loso_combine_refuses_runs_of_other_photos(tmp_path: Path, capsys) -> None:
    _fold(tmp_path / "a" / "gen-fake", held=[0.9, 0.3], val=[0.1, 0.4, 0.6, 0.9], test=[0.1, 0.4, 0.6, 0.9])
    _fold(tmp_path / "b" / "gen-fake", held=[0.9, 0.3, 0.5], val=[0.1, 0.4, 0.6, 0.9], test=[0.1, 0.4, 0.6, 0.9])
    (tmp_path / "c").mkdir()
    assert generalise.main(["loso-combine", "--run", str(tmp_path / "a"), "--run", str(tmp_path / "b"), "--out", str(tmp_path / "ab")]) == 2
    assert "did not score the same photos" in capsys.readouterr().err
    assert generalise.main(["loso-combine", "--run", str(tmp_path / "a"), "--run", str(tmp_path / "c"), "--out", str(tmp_path / "ac")]) == 2
    assert "no fold with scores.npz" in capsys.readouterr().err


def test_a_lifting_member_raises_where_it_is_surer_than_of_every_real_set_and_never_lowers() -> None:
    from training.loso import lift_floor, lifted

    labels = np.r_[np.zeros(200, int), np.ones(50, int)]
    datasets = np.array(["easy"] * 100 + ["hard"] * 100 + ["easy"] * 50)
    logits = np.r_[np.linspace(-5, -1, 100), np.linspace(-2, 2, 100), np.full(50, 9.0)]  # the fakes' 9.0 must not move the floor
    floor = lift_floor(logits, labels, datasets)
    assert floor == pytest.approx(np.quantile(np.linspace(-2, 2, 100), 0.95))
    assert lifted(np.array([0.0, 0.0, 0.0]), np.array([floor + 2, floor, -10.0]), floor, 0.5).tolist() == [1.0, 0.0, 0.0]


def test_loso_combine_lift_raises_the_first_runs_held_out_fakes_only_where_the_second_is_sure(tmp_path: Path, capsys) -> None:
    """The second run is sure of the first held-out fake and scores the second as real: the first is lifted
    above both test reals (0.1, and 0.4 lifted a little, as it is above the floor), the second keeps the first
    run's 0.3, between them, where a mean logit would have pulled it under both."""
    first = _fold(tmp_path / "a" / "gen-fake", held=[0.3, 0.3], val=[0.1, 0.4, 0.6, 0.9], test=[0.1, 0.4, 0.6, 0.9])
    assert loso.fold_row(loso.Source("gen", 1), loso.FoldScores.load(first / loso.SCORES), 0.5)["roc_auc"] == 0.5
    _fold(tmp_path / "b" / "gen-fake", held=[0.99, 0.01], val=[0.1, 0.4, 0.6, 0.9], test=[0.1, 0.4, 0.6, 0.9])
    runs = ["--run", str(tmp_path / "a"), "--run", str(tmp_path / "b")]
    assert generalise.main(["loso-combine", *runs, "--lift", "1", "--out", str(tmp_path / "lift")]) == 0
    [row] = json.loads((tmp_path / "lift" / "loso.json").read_text())["rows"]
    assert row["roc_auc"] == 0.75 and row["n"] == 2
    capsys.readouterr()
    assert generalise.main(["loso-combine", *runs, "--lift", "1", "--weight", "1", "--weight", "1", "--out", str(tmp_path / "both")]) == 2
    assert "give one" in capsys.readouterr().err


def test_the_strictest_threshold_keeps_a_small_hard_real_set_at_five_percent(tmp_path: Path) -> None:
    """900 easy reals pooled with 100 hard ones: 5% of the pool lets half the hard set through, the strictest
    threshold no more than 5% of it; an old fold's row (no such column) gains it from its scores."""
    easy, hard = np.linspace(0.0, 0.3, 900), np.linspace(0.2, 0.9, 100)
    val = np.r_[easy, hard, np.full(50, 0.95)]
    labels = np.r_[np.zeros(1000, int), np.ones(50, int)]
    datasets = np.array(["easy"] * 900 + ["hard"] * 100 + ["hard"] * 50)  # the fakes: any set; only the reals count
    held = np.linspace(0.5, 1.0, 100)
    scores = loso.FoldScores(val, labels, datasets, val, labels, held)
    row = loso.fold_row(loso.Source("gen", 1), scores, 0.5)
    assert np.mean(hard >= row["strict_threshold"]) > 0.3
    assert np.mean(hard >= row["strictest_threshold"]) <= 0.05 and np.mean(easy >= row["strictest_threshold"]) == 0
    assert row["called_fake_strictest"] < row["called_fake_strict"]

    folder = tmp_path / "gen-fake"
    folder.mkdir()
    scores.save(folder / loso.SCORES)
    old = {key: value for key, value in row.items() if "strictest" not in key} | {"best_epoch": 3}
    (folder / "fold.json").write_text(json.dumps(old))
    again = loso.done_row(folder)
    assert again["called_fake_strictest"] == row["called_fake_strictest"] and again["best_epoch"] == 3
    assert loso.table([again]).splitlines()[-1].split()[5] == f"{row['called_fake_strictest']:.1%}"  # its own column
