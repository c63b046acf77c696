"""The evaluation command: options, where it finds the split, clear errors, and TTA sets through ONNX."""
from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.config import REPO_ROOT, Settings
from service_fixtures import gradient, synthetic_face
from training import evaluate, scoring
from training.cache import CachingDetector
from training.data import Sample, make_split, scan_dataset

DEFAULT_ONNX = REPO_ROOT / "exports" / "default.onnx"


def make_dataset(root: Path, n_real: int = 4, n_fake: int = 4) -> Path:
    rng = np.random.default_rng(1)
    for label, count in (("real", n_real), ("fake", n_fake)):
        for i in range(count):
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def test_help_explains_every_option(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        evaluate.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--data", "--split", "--split-file", "--tta", "--tta-sets", "--band", "--out", "--threshold", "--workers", "--device"):
        assert option in text
    assert "split.json" in text and ".split.json" in text and "runs/eval-" in text


def test_negative_angles_parse_with_or_without_equals() -> None:
    args = evaluate.parse_args(["--model", "m.pt", "--data", "d", "--tta", "-15,0,15", "--tta-sets", "-30,0,30;0"])
    assert args.tta == (-15.0, 0.0, 15.0)
    assert args.tta_sets == [(-30.0, 0.0, 30.0), (0.0,)]
    assert evaluate.parse_args(["--model", "m.pt", "--data", "d", "--tta=-5"]).tta == (-5.0,)
    assert evaluate.parse_args(["--model", "m.pt", "--data", "d"]).split == "test"


def test_split_file_and_output_are_found_beside_the_model(tmp_path: Path) -> None:
    assert scoring.default_split_file(tmp_path / "runs" / "a" / "best.pt") == tmp_path / "runs" / "a" / "split.json"
    assert scoring.default_split_file(tmp_path / "exports" / "lite0.onnx") == tmp_path / "exports" / "lite0.split.json"
    assert scoring.default_out(tmp_path / "runs" / "a" / "best.pt") == tmp_path / "runs" / "a" / "eval"
    assert scoring.default_out(Path("exports/lite0.onnx")) == REPO_ROOT / "runs" / "eval-lite0"


def test_choose_samples_uses_the_split_and_notes_unknown_datasets(tmp_path: Path) -> None:
    known = make_dataset(tmp_path / "known", 10, 10)
    other = make_dataset(tmp_path / "other", 3, 0)
    split = make_split(scan_dataset(known), seed=0)
    split.save(tmp_path / "run" / "split.json")
    datasets = evaluate.scan_folders([known, other])
    notes: list[str] = []
    chosen, used = evaluate.choose_samples(datasets, "test", None, tmp_path / "run" / "best.pt", notes)
    assert used == tmp_path / "run" / "split.json"
    assert sorted(s.key for s in chosen["known"][0]) == sorted(split.datasets["known"]["test"])
    assert len(chosen["other"][0]) == 3 and "not in the split file" in chosen["other"][1]
    assert len(notes) == 1 and "other" in notes[0]
    val, _ = evaluate.choose_samples(datasets, "val", None, tmp_path / "run" / "best.pt", [])
    assert sorted(s.key for s in val["known"][0]) == sorted(split.datasets["known"]["val"])
    everything, none = evaluate.choose_samples(datasets, "all", None, tmp_path / "run" / "best.pt", [])
    assert none is None and len(everything["known"][0]) == 20


def test_split_file_for_other_files_is_an_error(tmp_path: Path) -> None:
    known = make_dataset(tmp_path / "known", 10, 10)
    make_split(scan_dataset(known), seed=0).save(tmp_path / "split.json")
    renamed = tmp_path / "elsewhere" / "known"  # the same dataset name, other files
    (renamed / "real").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(renamed / "real" / "unrelated.png")
    with pytest.raises(scoring.EvaluationError, match="none of the"):
        evaluate.choose_samples(evaluate.scan_folders([renamed]), "test", tmp_path / "split.json", tmp_path / "best.pt", [])


@pytest.mark.parametrize("case", ["missing folder", "empty class", "no class folders", "unknown model file", "missing model",
                                  "corrupt checkpoint", "not a checkpoint dict", "missing split file", "duplicate names"])
def test_errors_exit_2_with_one_line(case: str, tmp_path: Path, capsys) -> None:
    data = make_dataset(tmp_path / "data")
    model = tmp_path / "best.pt"
    torch.save({"model_name": "cnn", "preprocess": {}}, model)
    extra: list[str] = []
    if case == "missing folder":
        data = tmp_path / "absent"
    elif case == "empty class":
        for f in (data / "fake").iterdir():
            f.unlink()
    elif case == "no class folders":
        data = tmp_path / "flat"
        data.mkdir()
    elif case == "unknown model file":
        model = tmp_path / "model.h5"
        model.write_bytes(b"keras")
    elif case == "missing model":
        model = tmp_path / "nothing.pt"
    elif case == "corrupt checkpoint":
        model.write_bytes(b"definitely not a pickle")
    elif case == "not a checkpoint dict":
        torch.save([1, 2, 3], model)
    elif case == "missing split file":
        extra = ["--split-file", str(tmp_path / "nosplit.json")]
    elif case == "duplicate names":
        extra = ["--data", str(make_dataset(tmp_path / "again" / "data"))]
    code = evaluate.main(["--model", str(model), "--data", str(data), *extra, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_no_split_file_means_every_image_with_a_note(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", 3, 2)
    notes: list[str] = []
    chosen, used = evaluate.choose_samples(evaluate.scan_folders([data]), "test", None, tmp_path / "best.pt", notes)
    assert used is None and len(chosen["data"][0]) == 5
    assert notes and "no split file" in notes[0]


@pytest.mark.slow
def test_onnx_angle_sets_match_the_service_pipeline_run_per_set(tmp_path: Path, monkeypatch) -> None:
    if not DEFAULT_ONNX.is_file():
        pytest.skip(f"needs the exported default model at {DEFAULT_ONNX}")
    monkeypatch.setattr(scoring, "CachingDetector", partial(CachingDetector, tmp_path / "cache"))
    samples = [s for s in scan_dataset(make_dataset(tmp_path / "data", 3, 3))]
    samples.append(Sample(tmp_path / "data" / "real" / "gone.png", 0, "data"))
    (tmp_path / "data" / "real" / "gone.png").write_bytes(b"\x89PNG broken")
    together = scoring.predict_onnx_sets(DEFAULT_ONNX, samples, [(0.0,), (-15.0, 0.0, 15.0)], device="cpu")
    for angles in [(0.0,), (-15.0, 0.0, 15.0)]:
        alone = scoring.predict_onnx(DEFAULT_ONNX, samples, angles, device="cpu")
        np.testing.assert_allclose(together[angles].probs, alone.probs, atol=1e-6)
        assert [s.key for s in together[angles].samples] == [s.key for s in alone.samples]
        assert [s.path.name for s, _ in alone.unreadable] == ["gone.png"]
    assert not np.allclose(together[(0.0,)].probs, together[(-15.0, 0.0, 15.0)].probs)


@pytest.mark.slow
def test_band_option_measures_the_band_it_names_as_the_service_would_answer(tmp_path: Path, monkeypatch, capsys) -> None:
    """--band takes FACECHECK_UNCERTAIN_BAND's values; without it the setting, then the card, are in force."""
    if not DEFAULT_ONNX.is_file():
        pytest.skip(f"needs the exported default model at {DEFAULT_ONNX}")
    monkeypatch.setattr(scoring, "CachingDetector", partial(CachingDetector, tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", 3, 3)
    probs = evaluate.run_evaluation(DEFAULT_ONNX, [data], workers=1).datasets["data"].predictions.probs
    low, high = float(np.quantile(probs, 0.25)), float(np.quantile(probs, 0.75))
    inside = int(np.sum((probs >= low) & (probs < high)))
    assert 0 < inside < len(probs)

    (data / "real" / "broken.png").write_bytes(b"\x89PNG broken")
    assert evaluate.main(["--model", str(DEFAULT_ONNX), "--data", str(data), "--band", f"{low},{high}", "--workers", "1",
                          "--out", str(tmp_path / "narrow")]) == 0
    assert f"uncertain band [{low:.3f}, {high:.3f}) from --band" in capsys.readouterr().out
    saved = json.loads((tmp_path / "narrow" / "metrics.json").read_text())
    assert saved["uncertain_band"]["low"] == low and saved["uncertain_band"]["high"] == high
    assert saved["uncertain_band_source"] == "--band"
    assert saved["datasets"]["data"]["uncertain"] == inside

    with (tmp_path / "narrow" / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(probs) + 1, "every photo given has a row, the unreadable one too"
    broken = [r for r in rows if r["file"].endswith("broken.png")]
    assert broken[0]["fake_probability"] == "" and broken[0]["error"]
    scored = [r for r in rows if r["fake_probability"]]
    assert sorted(float(r["fake_probability"]) for r in scored) == pytest.approx(sorted(probs), abs=1e-6)
    assert sum(r["answer"] == "uncertain" for r in scored) == inside
    for r in scored:
        p = float(r["fake_probability"])
        assert r["answer"] == ("uncertain" if low <= p < high else "fake" if p >= saved["threshold"] else "real")
        assert r["truth"] == Path(r["file"]).parent.name

    off = evaluate.run_evaluation(DEFAULT_ONNX, [data], workers=1, band="off")
    assert off.model.uncertain_band is None and off.metrics["data"]["uncertain"] == 0

    monkeypatch.setattr(scoring, "get_settings", lambda: Settings(uncertain_band="0,1"))
    from_setting = evaluate.run_evaluation(DEFAULT_ONNX, [data], workers=1)
    assert from_setting.model.band_source == "FACECHECK_UNCERTAIN_BAND"
    assert from_setting.metrics["data"]["uncertain"] == len(probs)


@pytest.mark.parametrize("value", ["0.9,0.2", "wide", "0.1,0.5,0.9"])
def test_a_malformed_band_exits_2_naming_the_option(value: str, tmp_path: Path, capsys) -> None:
    if not DEFAULT_ONNX.is_file():
        pytest.skip(f"needs the exported default model at {DEFAULT_ONNX}")
    data = make_dataset(tmp_path / "data")
    assert evaluate.main(["--model", str(DEFAULT_ONNX), "--data", str(data), "--band", value, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --band: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_band_needs_an_export(tmp_path: Path, capsys) -> None:
    model = tmp_path / "best.pt"
    torch.save({"model_name": "cnn", "preprocess": {}}, model)
    assert evaluate.main(["--model", str(model), "--data", str(make_dataset(tmp_path / "data")), "--band", "0.2,0.8"]) == 2
    assert "--band needs an exported model" in capsys.readouterr().err


@pytest.mark.slow
def test_an_export_reports_each_photos_face_size_and_the_verdicts_by_it(tmp_path: Path, monkeypatch, capsys) -> None:
    """The same drawn faces at 256 and 512 px: the larger photo's face is twice as wide in predictions.csv, and
    metrics.json splits each class's verdicts at the widths' quartiles."""
    if not DEFAULT_ONNX.is_file():
        pytest.skip(f"needs the exported default model at {DEFAULT_ONNX}")
    monkeypatch.setattr(scoring, "CachingDetector", partial(CachingDetector, tmp_path / "cache"))
    for truth in ("real", "fake"):
        (tmp_path / "data" / truth).mkdir(parents=True)
        for seed in range(4):
            for size in (256, 512):
                synthetic_face(size, seed=seed + (10 if truth == "fake" else 0)).save(tmp_path / "data" / truth / f"{seed}-{size}.png")
    gradient().save(tmp_path / "data" / "real" / "plain.png")
    assert evaluate.main(["--model", str(DEFAULT_ONNX), "--data", str(tmp_path / "data"), "--workers", "1", "--out", str(tmp_path / "out")]) == 0
    assert "called fake at the threshold by the deciding face's width" in capsys.readouterr().out

    with (tmp_path / "out" / "predictions.csv").open(newline="") as handle:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(handle)}
    assert rows["plain.png"]["face_found"] == "False" and rows["plain.png"]["face_px"] == ""
    for seed in range(4):
        small, large = float(rows[f"{seed}-256.png"]["face_px"]), float(rows[f"{seed}-512.png"]["face_px"])
        assert large / small == pytest.approx(2.0, rel=0.1)
    sizes = json.loads((tmp_path / "out" / "metrics.json").read_text())["datasets"]["data"]["by_face_size"]
    assert set(sizes) == {"real", "fake"} and sizes["real"]["n"] == 8, "the photo without a face is left out"
    low, _, high = sizes["real"]["width_quartiles_px"]
    assert sizes["real"]["width_range_px"][0] <= low < high <= sizes["real"]["width_range_px"][1]
    assert all(0.0 <= share <= 1.0 for share in sizes["real"]["called_fake"].values())
