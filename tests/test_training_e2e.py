"""End to end on tiny data: train (a network and both baselines), then evaluate what was trained.

Generated images (dark noise = real, bright noise = fake) with whole-image crops keep these runs to
seconds and off MTCNN; one test repeats the run on a few real faces when ../shared/data is present.
"""
from __future__ import annotations

import json
import math
import random
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from training import baselines, evaluate, export, report, scoring, train
from training.cache import CropCache
from training.chains import ROBUSTNESS_CHAINS, parse_chain
from training.data import Split, scan_dataset
from training.models import create_model
from service.onnx_model import OnnxClassifier
from service.preprocess import to_input

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = ["--epochs", "1", "--epoch-size", "16", "--batch-size", "8", "--crop-mode", "whole", "--workers", "1"]


def make_dataset(root: Path, n_real: int = 16, n_fake: int = 16, broken: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for label, count, (low, high) in (("real", n_real, (0, 110)), ("fake", n_fake, (140, 256))):
        folder = root / label
        for i in range(count):
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(low, high, (40, 40, 3), dtype=np.uint8)).save(folder / f"{label}{i:02d}.png")
    if broken:
        (root / "real" / "broken.jpg").write_bytes(b"not an image at all")
    return root


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch) -> Path:
    """Crops of the generated images go to a temporary cache, not the project's."""
    root = tmp_path / "cache"
    for module in (train, scoring, report):
        monkeypatch.setattr(module, "CropCache", partial(CropCache, root))
    return root


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("cnn")
    data = make_dataset(tmp / "gen", broken=True)
    with pytest.MonkeyPatch.context() as mp:
        for module in (train, scoring, report):
            mp.setattr(module, "CropCache", partial(CropCache, tmp / "cache"))
        assert train.main(["--model", "cnn", "--data", str(data), "--out", str(tmp / "run"), "--pretrained", "none", *TINY]) == 0
    return tmp / "run", data


@pytest.mark.slow
def test_training_writes_checkpoint_split_summary_and_curves(trained_cnn) -> None:
    run, data = trained_cnn
    for name in ("best.pt", "last.pt", "split.json", "summary.json", "history.json", "curves.png"):
        assert (run / name).is_file(), name
    split = Split.load(run / "split.json")
    summary = json.loads((run / "summary.json").read_text())
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    assert state["model_name"] == "cnn" and state["preprocess"]["crop_mode"] == "whole"
    assert 0.0 <= state["threshold"] <= 1.0 and summary["threshold"] == pytest.approx(state["threshold"])
    val_keys = split.datasets["gen"]["val"]
    unreadable_in_val = int("real/broken.jpg" in val_keys)
    assert summary["val"]["n"] == len(val_keys) - unreadable_in_val
    (epoch,) = json.loads((run / "history.json").read_text())
    assert epoch["val_set_auc"] == epoch["val_roc_auc"]  # one set: its own AUC is the pooled one
    assert epoch["val_auc_per_set"] == ({"gen": epoch["val_roc_auc"]} if epoch["val_roc_auc"] is not None else {})


@pytest.mark.slow
def test_evaluate_uses_the_runs_test_split(trained_cnn, private_cache) -> None:
    run, data = trained_cnn
    metrics = evaluate.evaluate(run / "best.pt", [data], workers=1)
    split = Split.load(run / "split.json")
    test_keys = split.datasets["gen"]["test"]
    m = metrics["gen"]
    assert set(metrics) == {"gen"}
    assert m["n"] + len(m["unreadable"]) == len(test_keys)
    assert sum(map(sum, m["confusion"])) == m["n"]
    assert m["threshold"] == pytest.approx(torch.load(run / "best.pt", weights_only=False)["threshold"])
    assert m["selection"] == "test split"


@pytest.mark.slow
def test_evaluate_all_reports_unreadable_files_and_obeys_threshold(trained_cnn, private_cache) -> None:
    run, data = trained_cnn
    m = evaluate.evaluate(run / "best.pt", [data], split="all", threshold=0.0, workers=1)["gen"]
    assert m["n"] == 32
    assert [Path(u["file"]).name for u in m["unreadable"]] == ["broken.jpg"]
    assert "not an image in a supported format" in m["unreadable"][0]["error"]
    # at threshold 0 everything is called fake
    assert m["confusion"] == [[0, 16], [0, 16]] and m["recall"] == 1.0 and m["false_positive_rate"] == 1.0


@pytest.mark.slow
def test_dataset_missing_from_split_is_evaluated_in_full_with_a_note(trained_cnn, private_cache, tmp_path: Path) -> None:
    run, _ = trained_cnn
    own = tmp_path / "own-photos"
    make_dataset(own, n_real=5, n_fake=0)
    report = evaluate.run_evaluation(run / "best.pt", [own], workers=1)
    m = report.metrics["own-photos"]
    assert m["n"] == 5 and m["roc_auc"] is None and m["false_positive_rate"] is not None
    assert m["confusion"][1] == [0, 0]
    assert any("own-photos" in note and "not in the split file" in note for note in report.notes)


@pytest.mark.slow
def test_evaluate_command_prints_tables_and_writes_outputs(trained_cnn, private_cache, tmp_path: Path, capsys) -> None:
    run, data = trained_cnn
    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(run / "best.pt"), "--data", str(data), "--split", "all", "--tta", "-15,0,15",
                          "--tta-sets", "0;-15,0,15", "--out", str(out), "--device", "cpu", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "ROC-AUC" in printed and "FPR real" in printed and "test-time rotation sets" in printed
    assert "unreadable: " in printed and "broken.jpg" in printed
    result = json.loads((out / "metrics.json").read_text())
    assert result["angles"] == [-15.0, 0.0, 15.0] and result["split"] == "all"
    assert set(result["tta"]["gen"]) == {"0", "-15,0,15"}
    # the main angles equal one of the compared sets, so their numbers must agree
    assert result["tta"]["gen"]["-15,0,15"]["accuracy"] == pytest.approx(result["datasets"]["gen"]["accuracy"])
    assert (out / "roc.png").is_file() and (out / "confusion_gen.png").is_file()
    wrong = result["datasets"]["gen"]["confusion"][0][1] + result["datasets"]["gen"]["confusion"][1][0]
    assert (out / "wrong_gen.png").is_file() == (wrong > 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", baselines.BASELINES)
def test_baseline_trains_evaluates_and_refuses_export(name: str, tmp_path: Path, private_cache) -> None:
    data = make_dataset(tmp_path / "gen")
    run = tmp_path / "run"
    assert train.main(["--model", name, "--data", str(data), "--out", str(run), *TINY]) == 0
    summary = json.loads((run / "summary.json").read_text())
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    assert summary["model"] == name and state["model_name"] == name and state["baseline"] is True
    assert summary["val"]["n"] == len(Split.load(run / "split.json").datasets["gen"]["val"])
    assert len(summary["search"]) == (6 if name == "embed_svm" else 3)
    # dark versus bright noise is easy: a baseline that learned anything separates it
    m = evaluate.evaluate(run / "best.pt", [data], split="all", workers=1)["gen"]
    assert m["n"] == 32 and m["roc_auc"] > 0.9
    with pytest.raises(baselines.BaselineNotExportable, match="cannot be exported"):
        scoring.load_checkpoint(run / "best.pt", torch.device("cpu"))
    assert export.main(["--checkpoint", str(run / "best.pt"), "--name", "nope", "--out", str(tmp_path / "exports")]) == 2
    assert not (tmp_path / "exports" / "nope.onnx").exists()


@pytest.mark.slow
def test_ema_weights_are_the_ones_kept_and_resume_restores_them(tmp_path: Path, private_cache) -> None:
    data = make_dataset(tmp_path / "gen")
    args = ["--model", "cnn", "--data", str(data), "--out", str(tmp_path / "run"), "--pretrained", "none", *TINY, "--epochs", "2", "--patience", "5", "--ema", "0.5"]
    assert train.main(args) == 0
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    best = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=False)
    assert len(best["history"]) == 2  # the whole run, whichever epoch was best
    assert int(last["ema"]["n_averaged"]) == 4  # 2 epochs of 16 samples in batches of 8
    weights = [k for k, v in last["model"].items() if v.is_floating_point()]
    assert any(not torch.equal(last["model"][k], last["raw_model"][k]) for k in weights)
    assert all(torch.equal(last["model"][k], last["ema"][f"module.{k}"]) for k in last["model"])

    assert train.main([*args, "--resume"]) == 0  # nothing left to train: reloads, then re-chooses the threshold
    best = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=False)
    assert "threshold" in best and all(torch.equal(best["model"][k], best["ema"][f"module.{k}"]) for k in best["model"])


def test_the_recorded_recipe_is_the_same_when_resumed() -> None:
    argv = ["--model", "cnn", "--data", "my data", "--epochs", "3"]
    assert train.recorded_command(argv) == "python -m training.train --model cnn --data 'my data' --epochs 3"
    assert train.recorded_command([*argv, "--resume"]) == train.recorded_command(argv)


def test_a_resumed_run_counts_the_epochs_since_its_best_towards_patience() -> None:
    history = [{"epoch": 1, "val_roc_auc": 0.7}, {"epoch": 2, "val_roc_auc": 0.9}, {"epoch": 3, "val_roc_auc": 0.8}, {"epoch": 4, "val_roc_auc": 0.85}]
    assert train.epochs_since_best(history) == 2
    assert train.epochs_since_best(history[:2]) == 0
    assert train.epochs_since_best([]) == 0


def test_unknown_model_is_a_clear_error(tmp_path: Path, capsys) -> None:
    data = make_dataset(tmp_path / "gen", n_real=2, n_fake=2)
    assert train.main(["--model", "nonet", "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nonet'" in err and "embed_svm" in err and "efficientnet_lite0" in err


@pytest.mark.slow
@pytest.mark.data
def test_train_and_evaluate_on_a_few_real_faces(tmp_path: Path) -> None:
    if not (DATA / "tpdne128").is_dir():
        pytest.skip(f"needs the shared data sets at {DATA}")
    mini = tmp_path / "tpdne128"
    for label in ("real", "fake"):
        (mini / label).mkdir(parents=True)
        for source in sorted((DATA / "tpdne128" / label).glob("*.jpg"))[:10]:
            (mini / label / source.name).symlink_to(source)  # the images stay where they are
    run = tmp_path / "run"
    args = ["--model", "cnn", "--data", str(mini), "--out", str(run), "--pretrained", "none", "--epochs", "1", "--epoch-size", "16", "--batch-size", "8", "--workers", "1"]
    assert train.main(args) == 0
    m = evaluate.evaluate(run / "best.pt", [mini], split="all", workers=1)["tpdne128"]
    assert m["n"] == 20 and not m["unreadable"]
    assert m["faces_found"] >= 18  # portraits: MTCNN finds (nearly) every face
    assert 0.0 <= m["roc_auc"] <= 1.0


@pytest.mark.slow
def test_export_with_data_records_threshold_and_metrics_that_evaluate_reproduces(trained_cnn, tmp_path: Path, monkeypatch) -> None:
    run, data = trained_cnn
    monkeypatch.setattr(export, "CropCache", partial(CropCache, tmp_path / "cache"))
    out = tmp_path / "exports"
    assert export.main(["--checkpoint", str(run / "best.pt"), "--name", "tiny", "--out", str(out), "--data", str(data), "--tta", "0", "--mirror"]) == 0
    card = json.loads((out / "tiny.json").read_text())
    assert card["tta_mirror"] is True and card["training"]["tta_angles"] == [0.0]  # what the service applies by default
    assert card["threshold_rule"].startswith("the highest threshold whose balanced accuracy on the validation split")
    assert card["threshold_rule"].endswith("on the calibrated probabilities")
    assert (out / "tiny.split.json").read_text() == (run / "split.json").read_text()
    recorded = card["metrics"]["test"][data.name]
    chains = card["metrics"]["robustness"]["chains"]
    assert list(chains) == list(ROBUSTNESS_CHAINS)
    assert all(chains[chain][data.name]["n"] == recorded["n"] > 0 for chain in chains)
    # calibrated on validation, with a band around the threshold, and the test split's figures both sides of the band
    assert card["calibration"]["method"] in ("temperature", "isotonic") and "validation split" in card["calibration"]["rule"]
    band = card["uncertain_band"]
    assert band["low"] <= card["threshold"] <= band["high"] and "95% precise" in band["rule"]
    calibrated = card["metrics"]["calibration"]["test"][data.name]
    assert calibrated["n"] == recorded["n"] and calibrated["ece_after"] == pytest.approx(recorded["ece"], abs=1e-9)
    assert calibrated["uncertain_share"] + calibrated["confident_share"] == pytest.approx(1.0)
    assert (run / "calibration" / f"reliability_{data.name}.png").is_file()
    measured = evaluate.evaluate(out / "tiny.onnx", [data])[data.name]  # the card's rotation, mirrored as its card says
    assert measured["n"] == recorded["n"]
    for key in ("accuracy", "roc_auc", "f1", "false_positive_rate", "ece"):
        assert measured[key] == pytest.approx(recorded[key], abs=1e-9), key
    for key in ("uncertain", "confident_accuracy"):
        assert measured[key] == calibrated[key], key


@pytest.mark.slow
def test_calibrate_rewrites_an_exports_card_and_the_cli_applies_it(trained_cnn, tmp_path: Path, monkeypatch, capsys) -> None:
    """training.calibrate on an export: --validation-only previews the band and writes nothing; then the card's
    calibration and band, its figures and README table; then the service's own code (the CLI) answers with
    calibrated probabilities and the card's band."""
    from service import cli
    from service.calibration import label
    from service.onnx_model import read_card
    from training import calibrate

    run, data = trained_cnn
    monkeypatch.setattr(export, "CropCache", partial(CropCache, tmp_path / "cache"))
    out = tmp_path / "exports"
    assert export.main(["--checkpoint", str(run / "best.pt"), "--name", "tiny", "--out", str(out), "--data", str(data), "--tta=-15,0,15"]) == 0
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- generalise:calibration -->\nSTALE\n<!-- /generalise:calibration -->\nafter\n")
    figures = tmp_path / "figures"
    exported = {path: path.read_bytes() for path in out.iterdir()}
    capsys.readouterr()
    assert calibrate.main(["--model", str(out / "tiny.onnx"), "--data", str(data), "--precision", "0.9", "--validation-only",
                           "--chains", "warm15"]) == 0
    preview, tinted_preview = capsys.readouterr().out.split("\n\nthe validation split re-processed by warm15")
    assert {path: path.read_bytes() for path in out.iterdir()} == exported  # nothing written
    assert calibrate.main(["--model", str(out / "tiny.onnx"), "--data", str(data), "--chains", "sepia", "--validation-only"]) == 2
    assert calibrate.main(["--model", str(out / "tiny.onnx"), "--data", str(data), "--chains", "warm15"]) == 2  # only a preview re-processes
    assert calibrate.main(["--model", str(out / "tiny.onnx"), "--data", str(data), "--precision", "0.9", "--validation-only",
                           "--readme", str(readme)]) == 2
    assert calibrate.main(["--model", str(out / "tiny.onnx"), "--data", str(data), "--precision", "0.9", "--figures", str(figures),
                           "--readme", str(readme)]) == 0
    card = read_card(out / "tiny.onnx")
    # the preview is what calibrating then records: the same band, and the validation set's share in it
    band = card.uncertain_band
    assert f"threshold {card.threshold:.4f}; uncertain band [{band.low:.4f}, {band.high:.4f})" in preview
    assert f"{card.metrics['calibration']['validation']['uncertain_share']:.1%}" in preview.splitlines()[-1]
    assert json.loads((out / "tiny.json").read_text())["uncertain_band"] == card.uncertain_band.model_dump()
    assert "at least 90% precise" in card.uncertain_band.rule and card.training["tta_angles"] == [-15.0, 0.0, 15.0]
    assert card.metrics["calibration"]["command"].startswith("python -m training.calibrate --model")
    text = readme.read_text()
    assert text.startswith("before\n<!-- generalise:calibration -->\n`python -m training.calibrate") and "STALE" not in text
    assert "| gen |" in text and "(figures/reliability_gen.png)" in text and (figures / "reliability_gen.png").is_file()
    assert "| ECE by chance |" in text and card.metrics["calibration"]["test"]["gen"]["ece_by_chance"] > 0.0
    reprocessed = calibrate.reprocessed_ece(card, "gen")  # the chains the export measured, calibrated again
    assert reprocessed != "–" and f"| {reprocessed} |" in text

    test = Split.load(out / "tiny.split.json").select(scan_dataset(data), "test")
    raw = scoring.predict_onnx(out / "tiny.onnx", test, (-15.0, 0.0, 15.0), device="cpu", calibrated=False)
    expected = dict(zip((s.path.name for s in raw.samples), calibrate.image_probs(raw, card.calibration)))
    answer = tmp_path / "answer.json"
    assert cli.main(["classify", str(data), "--recursive", "--tta", "-15,0,15", "--device", "cpu", "--json", str(answer), "-q"]
                    + ["--model", str(out / "tiny.onnx")]) in (0, 1)  # 1: the broken file
    results = {Path(item["file"]).name: item["result"] for item in json.loads(answer.read_text())["results"] if item["ok"]}
    assert set(expected) <= set(results)
    for name, probability in expected.items():
        result = results[name]
        assert result["fake_probability"] == pytest.approx(probability, abs=1e-6)
        assert result["verdict"] == label(result["fake_probability"], card.threshold, card.uncertain_band)
        assert result["model"]["calibration"] == card.calibration.method and result["model"]["uncertain_band"] == list(card.uncertain_band.edges)

    # the preview's warm15 rows are what the calibrated service answers for the validation photos so tinted
    tinted = tmp_path / "tinted"
    validation = Split.load(out / "tiny.split.json").select(scan_dataset(data), "val")
    for sample in validation:
        (tinted / sample.key).parent.mkdir(parents=True, exist_ok=True)
        parse_chain("warm15")(Image.open(sample.path)).save(tinted / sample.key)
    assert cli.main(["classify", str(tinted), "--recursive", "--tta", "-15,0,15", "--device", "cpu", "--json", str(answer), "-q",
                     "--model", str(out / "tiny.onnx")]) == 0
    verdicts = [(Path(item["file"]).parent.name, item["result"]["verdict"]) for item in json.loads(answer.read_text())["results"]]
    assert len(verdicts) == len(validation)
    fakes = [verdict for folder, verdict in verdicts if folder == "fake"]
    row = next(line for line in tinted_preview.splitlines() if line.split()[:1] == ["gen"])
    assert f"{sum(v == 'fake' for v in fakes) / len(fakes):.1%}" in row
    assert f"{sum(v == 'uncertain' for _, v in verdicts) / len(verdicts):.1%}" in row


@pytest.mark.slow
def test_export_quantize_int8_records_its_accuracy_change(trained_cnn, tmp_path: Path, monkeypatch) -> None:
    from training import quantize

    run, data = trained_cnn
    for module in (export, quantize):
        monkeypatch.setattr(module, "CropCache", partial(CropCache, tmp_path / "cache"))
    out = tmp_path / "exports"
    assert export.main(["--checkpoint", str(run / "best.pt"), "--name", "tiny", "--out", str(out), "--data", str(data),
                        "--tta", "0", "--quantize", "int8"]) == 0
    float_card, card = (json.loads((out / f"{name}.json").read_text()) for name in ("tiny", "tiny-int8"))
    assert card["name"] == "tiny-int8" and card["quantization"]["float_model"]["sha256"] == float_card["sha256"]
    assert {node.op_type for node in onnx.load(str(out / "tiny-int8.onnx")).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert (out / "tiny-int8.split.json").read_text() == (out / "tiny.split.json").read_text()
    before, after = float_card["metrics"]["test"][data.name], card["metrics"]["test"][data.name]
    assert card["quantization"]["float_test_metrics"] == float_card["metrics"]["test"]  # the float card's own figures, not measured twice
    assert card["quantization"]["test_change"][data.name]["accuracy"] == pytest.approx(after["accuracy"] - before["accuracy"], abs=1e-4)
    measured = evaluate.evaluate(out / "tiny-int8.onnx", [data], angles=(0.0,))[data.name]
    assert measured["accuracy"] == pytest.approx(after["accuracy"], abs=1e-9)
    check = card["quantization"]["cpu_default"]
    assert check == quantize.cpu_default_check(float_card["metrics"], card["metrics"])
    assert quantize.main(["--model", str(out / "tiny.onnx"), "--check"]) == (0 if check["holds"] else 1)

    # calibrated again on its own probabilities, the int8 card's changes and rule follow its new figures
    from training import calibrate

    assert calibrate.main(["--model", str(out / "tiny-int8.onnx"), "--data", str(data), "--tta", "0", "--figures", str(tmp_path / "figures")]) == 0
    recalibrated = json.loads((out / "tiny-int8.json").read_text())
    record = recalibrated["quantization"]
    assert record["cpu_default"] == quantize.cpu_default_check(float_card["metrics"], recalibrated["metrics"])
    assert record["test_change"] == quantize.metric_changes(float_card["metrics"], recalibrated["metrics"])
    assert "int8 model's own" in record["probability_calibration"]


def test_the_cpu_default_rule_finds_the_largest_change_over_splits_and_chains() -> None:
    from training.quantize import cpu_default_check

    def metrics(auc: float, fpr: float, chain_fpr: float) -> dict:
        return {"test": {"a": {"roc_auc": auc, "false_positive_rate": fpr}, "reals": {"roc_auc": None, "false_positive_rate": fpr}},
                "robustness": {"chains": {"jpeg60": {"a": {"roc_auc": auc, "false_positive_rate": chain_fpr}}}}}

    same = cpu_default_check(metrics(0.9, 0.1, 0.1), metrics(0.904, 0.103, 0.1))
    assert same["holds"] and same["figures"]["roc_auc"]["where"] == "test a"
    worse = cpu_default_check(metrics(0.9, 0.1, 0.1), metrics(0.9, 0.1, 0.12))
    assert not worse["holds"] and worse["figures"]["false_positive_rate"] == {"largest_change": 0.02, "where": "jpeg60 a", "limit": 0.005, "holds": False}


@pytest.mark.slow
def test_a_reused_split_is_saved_in_the_run_where_export_finds_it(trained_cnn, tmp_path: Path, private_cache, monkeypatch) -> None:
    run, data = trained_cnn
    monkeypatch.setattr(export, "CropCache", partial(CropCache, tmp_path / "cache"))
    again = tmp_path / "again"
    assert train.main(["--model", "cnn", "--data", str(data), "--out", str(again), "--pretrained", "none", "--split", str(run / "split.json"), *TINY]) == 0
    assert Split.load(again / "split.json") == Split.load(run / "split.json")
    assert export.main(["--checkpoint", str(again / "best.pt"), "--name", "again", "--out", str(tmp_path / "exports"), "--data", str(data), "--tta", "0"]) == 0
    assert Split.load(tmp_path / "exports" / "again.split.json") == Split.load(run / "split.json")


def test_quantize_needs_data(trained_cnn, tmp_path: Path, capsys) -> None:
    run, _ = trained_cnn
    assert export.main(["--checkpoint", str(run / "best.pt"), "--name", "tiny", "--out", str(tmp_path), "--quantize", "int8"]) == 2
    assert "--quantize needs --data" in capsys.readouterr().err
    assert not (tmp_path / "tiny.onnx").exists()


@pytest.mark.slow
def test_a_run_started_from_a_checkpoint_records_both_commands_in_the_card(trained_cnn, tmp_path: Path, private_cache, monkeypatch) -> None:
    run, data = trained_cnn
    monkeypatch.setattr(export, "CropCache", partial(CropCache, tmp_path / "cache"))
    first = torch.load(run / "best.pt", map_location="cpu", weights_only=False)["command"]
    tuned = tmp_path / "tuned"
    assert train.main(["--model", "cnn", "--data", str(data), "--out", str(tuned), "--pretrained", str(run / "best.pt"),
                       "--split", str(run / "split.json"), "--freeze-epochs", "0", *TINY]) == 0
    assert export.main(["--checkpoint", str(tuned / "best.pt"), "--name", "tuned", "--out", str(tmp_path / "exports"), "--data", str(data), "--tta", "0"]) == 0
    command = json.loads((tmp_path / "exports" / "tuned.json").read_text())["training"]["command"]
    assert command.startswith(first + " && python -m training.train --model cnn")
    assert f"--pretrained {run / 'best.pt'}" in command


@pytest.mark.parametrize("weight, message", [("elsewhere=2", "not among the training sets"), ("gen=abc", "takes SET=WEIGHT"), ("gen=0", "must be a positive number"), ("gen=nan", "must be a positive number")])
def test_a_bad_set_weight_is_a_clear_error_before_any_work(weight: str, message: str, tmp_path: Path, capsys) -> None:
    data = make_dataset(tmp_path / "gen", n_real=2, n_fake=2)
    assert train.main(["--model", "cnn", "--data", str(data), "--out", str(tmp_path / "run"), "--set-weight", weight]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_an_ensemble_answers_its_most_fake_member(trained_cnn, tmp_path: Path, monkeypatch) -> None:
    """Two exports at different input sizes become one model that the service loads as any other: its
    answer is the larger member's, or the smaller one's on the same crop resized in the graph, whichever is more fake."""
    from training import ensemble

    run, data = trained_cnn
    for module in (train, export, scoring, report):
        monkeypatch.setattr(module, "CropCache", partial(CropCache, tmp_path / "cache"))
    small_run = tmp_path / "small"
    assert train.main(["--model", "cnn", "--data", str(data), "--out", str(small_run), "--pretrained", "none", "--split", str(run / "split.json"),
                       "--input-size", "64", *TINY]) == 0
    out = tmp_path / "exports"
    for name, checkpoint in (("big", run / "best.pt"), ("small", small_run / "best.pt")):
        assert export.main(["--checkpoint", str(checkpoint), "--name", name, "--out", str(out)]) == 0
        Split.load(run / "split.json").save(out / f"{name}.split.json")
    assert ensemble.main(["--member", str(out / "small.onnx"), "--member", str(out / "big.onnx"), "--name", "both", "--out", str(out),
                          "--data", str(data), "--tta", "0", "--figures", str(tmp_path / "figures")]) == 0
    both, big, small = (OnnxClassifier(out / f"{name}.onnx", device="cpu") for name in ("both", "big", "small"))
    assert both.card.preprocess.input_size == big.card.preprocess.input_size == 128
    assert [m["name"] for m in both.card.training["members"]] == ["small", "big"] and both.card.metrics["test"][data.name]["n"] > 0
    crops = np.random.default_rng(1).integers(0, 256, (4, 128, 128, 3), dtype=np.uint8)
    resized = np.stack([np.asarray(Image.fromarray(c).resize((64, 64), Image.Resampling.BICUBIC)) for c in crops])
    expected = np.maximum(big.predict_crops(crops), small.predict_crops(resized))
    np.testing.assert_allclose(both.predict(to_input(crops, both.card.preprocess)), expected, atol=0.05)
    assert (both.predict(to_input(crops, both.card.preprocess)) >= big.predict_crops(crops) - 1e-6).all()


def brightness_model(path: Path, size: int, gain: float, sigmoid_last: bool = True) -> Path:
    """A stand-in member whose fake probability is sigmoid(gain x the crop's mean input value); with
    sigmoid_last False, multiplied by 1 after the sigmoid, so that its logit cannot be read off the graph."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "gain"], ["scaled"]),
             helper.make_node("Sigmoid", ["scaled"], ["fake_probability" if sigmoid_last else "sigmoid"])]
    if not sigmoid_last:
        nodes.append(helper.make_node("Mul", ["sigmoid", "unit"], ["fake_probability"]))
    graph = helper.make_graph(nodes, "brightness", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
                              [helper.make_tensor_value_info("fake_probability", TensorProto.FLOAT, ["batch"])],
                              initializer=[helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
                                           helper.make_tensor("gain", TensorProto.FLOAT, [], [gain]),
                                           helper.make_tensor("unit", TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("sigmoid_last", [True, False], ids=["logit read before the sigmoid", "log-odds of the probability"])
def test_a_mean_logit_ensemble_answers_the_sigmoid_of_its_members_mean_logit(trained_cnn, tmp_path: Path, monkeypatch, sigmoid_last: bool) -> None:
    from training import ensemble
    from training.card import attach_card

    run, _ = trained_cnn
    monkeypatch.setattr(export, "CropCache", partial(CropCache, tmp_path / "cache"))
    out = tmp_path / "exports"
    assert export.main(["--checkpoint", str(run / "best.pt"), "--name", "net", "--out", str(out)]) == 0
    net = OnnxClassifier(out / "net.onnx", device="cpu")
    other = brightness_model(out / "other.onnx", net.card.preprocess.input_size, gain=3.0, sigmoid_last=sigmoid_last)
    attach_card(other, net.card)
    paths = [out / "net.onnx", other]
    combined = ensemble.combined_model(paths, [net.card, net.card], "mean-logit")
    onnx.save(combined, str(tmp_path / "both.onnx"))
    attach_card(tmp_path / "both.onnx", net.card)
    both = OnnxClassifier(tmp_path / "both.onnx", device="cpu")
    crops = np.random.default_rng(3).integers(0, 256, (6, net.card.preprocess.input_size, net.card.preprocess.input_size, 3), dtype=np.uint8)
    batch = to_input(crops, net.card.preprocess)
    members = np.stack([OnnxClassifier(path, device="cpu").predict(batch) for path in paths]).astype(np.float64)
    members = np.clip(members, 1e-7, 1 - 1e-7)
    expected = 1 / (1 + np.exp(-np.log(members / (1 - members)).mean(axis=0)))
    np.testing.assert_allclose(both.predict(batch), expected, atol=1e-4)
    assert ensemble.ensemble_card("both", paths, [net.card, net.card], "0" * 64, "cmd", "mean-logit").architecture.startswith("ensemble: the mean logit of")


def test_an_ensemble_refuses_members_that_preprocess_differently(trained_cnn, tmp_path: Path, monkeypatch, capsys) -> None:
    from training import ensemble
    from training.card import attach_card

    run, data = trained_cnn
    monkeypatch.setattr(export, "CropCache", partial(CropCache, tmp_path / "cache"))
    out = tmp_path / "exports"
    assert export.main(["--checkpoint", str(run / "best.pt"), "--name", "one", "--out", str(out)]) == 0
    other = out / "other.onnx"
    other.write_bytes((out / "one.onnx").read_bytes())
    card = OnnxClassifier(other, device="cpu").card
    attach_card(other, card.model_copy(update={"preprocess": card.preprocess.model_copy(update={"margin": 0.5})}))
    Split.load(run / "split.json").save(out / "one.split.json")
    assert ensemble.main(["--member", str(out / "one.onnx"), "--member", str(other), "--name", "both", "--out", str(out), "--data", str(data)]) == 2
    assert "preprocesses faces differently" in capsys.readouterr().err and not (out / "both.onnx").exists()


def test_int8_keeps_the_first_convolutions_and_the_head_float(tmp_path: Path) -> None:
    from training.quantize import quantize_int8

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 1)).eval()
    source, target = tmp_path / "net.onnx", tmp_path / "net-int8.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 16, 16), str(source), input_names=["input"], dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    quantize_int8(source, target, np.random.default_rng(0).normal(size=(32, 3, 16, 16)).astype(np.float32), float_convs=1)
    graph = onnx.load(str(target)).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    initializers = {init.name for init in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    (head,) = [node for node in graph.node if node.op_type in ("Gemm", "MatMul")]
    assert convs[0].input[1] in initializers  # float weights
    assert all(conv.input[1] in dequantized for conv in convs[1:])  # int8 weights
    assert head.input[1] in initializers  # the head's weights stay float


def test_int8_of_an_ensemble_keeps_each_members_first_convolutions_float(tmp_path: Path) -> None:
    from onnx import TensorProto, helper
    from training.quantize import float_nodes

    convs = [helper.make_node("Conv", [f"{m}x{i}", f"{m}w{i}"], [f"{m}x{i + 1}"], name=f"{m}conv{i}") for m in ("m0_", "m1_") for i in range(3)]
    heads = [helper.make_node("MatMul", [f"{m}x3", f"{m}fc"], [f"{m}out"], name=f"{m}head") for m in ("m0_", "m1_")]
    graph = helper.make_graph(convs + heads, "two", [helper.make_tensor_value_info("m0_x0", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("m0_out", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph), str(tmp_path / "two.onnx"))
    assert float_nodes(tmp_path / "two.onnx", 2) == ["m0_conv0", "m0_conv1", "m1_conv0", "m1_conv1", "m0_head", "m1_head"]


def test_an_int8_card_is_not_remeasured_against_another_float_model(tmp_path: Path) -> None:
    from training.card import ExportError
    from training.quantize import remeasured_record

    (tmp_path / "tiny.onnx").write_bytes(b"not the float model it was quantized from")
    record = {"float_model": {"name": "tiny", "sha256": "0" * 64}}
    with pytest.raises(ExportError, match="quantize it again"):
        remeasured_record(tmp_path / "tiny-int8.onnx", record, {"test": {}})


def test_the_consistency_loss_is_zero_for_one_answer_and_grows_with_disagreement() -> None:
    same = torch.tensor([2.0, -1.0, 0.0])
    assert train.js_divergence(same, same).item() == pytest.approx(0.0, abs=1e-6)
    near, far = train.js_divergence(same, same + 0.5), train.js_divergence(same, -same * 10)
    assert 0 < near.item() < far.item() <= np.log(2) + 1e-6
    assert train.js_divergence(same, -same).item() == pytest.approx(train.js_divergence(-same, same).item())
    first = same.clone().requires_grad_(True)
    train.js_divergence(first, torch.zeros(3)).backward()
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("option", [["--consistency", "4"], ["--self-blend", "0.5"], ["--sharpen", "0.3"], ["--frame", "0.5"], ["--loader-workers", "2"],
                                    ["--focal", "2"], ["--erase", "0.5"], ["--shuffle", "0.5"], ["--tint", "0.5"]], ids=lambda o: o[0])
def test_training_with_each_recipe_option_runs_and_records_it(option: list[str], tmp_path: Path, private_cache) -> None:
    data = make_dataset(tmp_path / "gen")
    assert train.main(["--model", "cnn", "--data", str(data), "--out", str(tmp_path / "run"), "--pretrained", "none", *TINY, *option]) == 0
    state = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=False)
    assert " ".join(option) in state["command"]
    (epoch,) = state["history"]
    assert np.isfinite(epoch["train_loss"]) and 0.0 <= epoch["train_accuracy"] <= 1.0


@pytest.mark.parametrize(("options", "message"), [
    (["--consistency", "-1"], "--consistency is a weight"),
    (["--self-blend", "-0.1"], "--self-blend is a share"),
    (["--self-blend", "1.5"], "--self-blend is a share"),
    (["--blur", "0.5", "--sharpen", "0.6"], "together at most 1"),
    (["--part-loss", "-1"], "--part-loss is a weight"),
    (["--focal", "-1"], "--focal is an exponent"),
    (["--loader-workers", "-1"], "--loader-workers is a number of processes"),
    (["--frame", "1.5"], "--frame 1.5: input should be less than or equal to 1"),
    (["--min-scale", "0"], "--min-scale 0.0: input should be greater than 0"),
    (["--erase", "1.5"], "--erase 1.5: input should be less than or equal to 1"),
    (["--shuffle", "-0.5"], "--shuffle -0.5: input should be greater than or equal to 0"),
    (["--tint", "2"], "--tint 2.0: input should be less than or equal to 1"),
    (["--freeze-stages", "-1"], "--freeze-stages is a number of stages"),
])
def test_a_recipe_option_out_of_range_is_a_clear_error_before_any_work(options: list[str], message: str, tmp_path: Path, capsys) -> None:
    data = make_dataset(tmp_path / "gen", n_real=2, n_fake=2)
    assert train.main(["--model", "cnn", "--data", str(data), "--out", str(tmp_path / "run"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_focal_loss_is_cross_entropy_at_gamma_0_and_weights_each_crop_by_how_wrong_it_is() -> None:
    logits, labels = torch.tensor([0.0, 3.0, -3.0, 2.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    plain = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    assert train.focal_bce(logits, labels).item() == pytest.approx(plain.mean().item())
    p_truth = torch.tensor([0.5, 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(3)), 1 / (1 + math.exp(2))])
    expected = ((1 - p_truth) ** 2 * plain).mean()
    assert train.focal_bce(logits, labels, gamma=2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert train.focal_bce(logits[:1], labels[:1], gamma=2.0).item() == pytest.approx(0.25 * math.log(2), rel=1e-6)  # p = 0.5: a quarter
    sure, wrong = (train.focal_bce(logits[i:i + 1], labels[i:i + 1], 2.0) / plain[i] for i in (1, 2))
    assert sure < 0.003 < 0.9 < wrong  # the sure right crop all but drops out; the sure wrong one keeps nearly its whole weight


def test_self_blending_replaces_only_fakes_and_makes_them_from_real_crops() -> None:
    from service.preprocess import PreprocessSpec
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    crops[3:] = 0  # the fakes are black: a replaced one shows a real crop's pixels
    labels = np.array([0, 0, 0, 1, 1, 1])
    index = np.array([0, 3, 1, 4, 5, 2])

    def batches(share: float) -> train.BatchMaker:
        return train.BatchMaker(crops, labels, index[None], PreprocessSpec(input_size=64), None, share, False, "0")

    batch, blended = batches(1.0).with_blends(index, random.Random(0))
    np.testing.assert_array_equal(batch[[0, 2, 5]], crops[[0, 1, 2]])  # reals as they were
    assert all(batch[i].mean() > 50 for i in (1, 3, 4))  # every fake replaced by a blended real crop
    assert blended.tolist() == [False, True, False, True, True, False]
    np.testing.assert_array_equal(crops[3:], 0)  # the training set itself is not touched
    batch, blended = batches(0.0).with_blends(index, random.Random(0))
    np.testing.assert_array_equal(batch, crops[index])
    assert not blended.any()


def test_loader_workers_make_the_same_batches_as_the_training_process() -> None:
    from torch.utils.data import DataLoader

    from service.preprocess import PreprocessSpec
    from training.augment import AugmentSpec
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    order = rng.integers(0, 8, (3, 4))
    maker = train.BatchMaker(crops, np.array([0, 1] * 4), order, PreprocessSpec(input_size=64), AugmentSpec(), 0.5, False, "7-1")
    in_process = [maker[step] for step in range(len(maker))]
    for (inputs, blended), (expected, expected_blended) in zip(DataLoader(maker, batch_size=None, num_workers=2), in_process):
        np.testing.assert_array_equal(inputs.numpy(), expected)
        np.testing.assert_array_equal(blended.numpy(), expected_blended)
    assert not np.array_equal(in_process[0][0], in_process[1][0])  # each step draws its own augmentation


@pytest.mark.slow
def test_the_part_loss_trains_a_head_beside_the_classifier_that_is_never_exported(tmp_path: Path, private_cache) -> None:
    data = make_dataset(tmp_path / "gen")
    for i, fake in enumerate(sorted((data / "fake").iterdir())):
        fake.rename(fake.with_name(f"mid_{i}_{'1100' if i % 2 else '0011'}.png"))  # rff's codes: which parts were pasted
    run = tmp_path / "run"
    assert train.main(["--model", "resnet18", "--data", str(data), "--out", str(run), "--pretrained", "none", *TINY, "--part-loss", "1"]) == 0
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    assert "--part-loss 1" in state["command"] and np.isfinite(state["history"][0]["train_loss"])
    assert tuple(state["part_head"]["weight"].shape) == (3, 512)  # eyes, nose, mouth from resnet18's pooled features
    assert not any(key.startswith("part") for key in state["model"])
    assert export.main(["--checkpoint", str(run / "best.pt"), "--name", "parts", "--out", str(tmp_path / "x")]) == 0
    graph = onnx.load(tmp_path / "x" / "parts.onnx").graph
    assert len(graph.output) == 1  # the real-vs-fake logit alone


def test_the_part_loss_needs_a_model_with_pooled_features(tmp_path: Path, private_cache, capsys) -> None:
    data = make_dataset(tmp_path / "gen", n_real=4, n_fake=4)
    assert train.main(["--model", "cnn", "--data", str(data), "--out", str(tmp_path / "run"), "--pretrained", "none", *TINY, "--part-loss", "1"]) == 2
    assert "--part-loss needs a timm model" in capsys.readouterr().err


@pytest.mark.slow
def test_the_patch_aux_head_trains_beside_the_classifier_and_is_never_exported(tmp_path: Path, private_cache) -> None:
    data = make_dataset(tmp_path / "gen")
    run = tmp_path / "run"
    args = ["--model", "efficientnet_lite0", "--data", str(data), "--out", str(run), "--pretrained", "none", *TINY, "--patch-aux", "1"]
    assert train.main(args) == 0
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    assert "--patch-aux 1" in state["command"] and np.isfinite(state["history"][0]["train_loss"])
    assert tuple(state["patch_head"]["0.weight"].shape)[:2] == (128, 40)  # a 1x1 head on Lite0's third stage (40 channels)
    assert not any(key.startswith("patch") for key in state["model"])
    assert train.main([*args, "--resume"]) == 0  # the head is loaded back (strictly) with the rest
    assert export.main(["--checkpoint", str(run / "last.pt"), "--name", "aux", "--out", str(tmp_path / "x")]) == 0
    assert len(onnx.load(tmp_path / "x" / "aux.onnx").graph.output) == 1  # the real-vs-fake logit alone


@pytest.mark.parametrize("model, weight, message", [("cnn", "1", "--patch-aux needs an EfficientNet-Lite model"),
                                                    ("efficientnet_lite0", "-1", "--patch-aux is a weight")])
def test_the_patch_aux_head_refuses_what_it_cannot_do(tmp_path: Path, private_cache, capsys, model: str, weight: str, message: str) -> None:
    data = make_dataset(tmp_path / "gen", n_real=4, n_fake=4)
    assert train.main(["--model", model, "--data", str(data), "--out", str(tmp_path / "run"), "--pretrained", "none", *TINY, "--patch-aux", weight]) == 2
    assert message in capsys.readouterr().err


def swapped_labels(data: Path, root: Path) -> Path:
    """The same photos with every label wrong: the bright ones under real/, the dark ones under fake/."""
    for source, target in (("real", "fake"), ("fake", "real")):
        (root / target).mkdir(parents=True)
        for photo in (data / source).glob("*.png"):
            (root / target / photo.name).write_bytes(photo.read_bytes())
    return root


LEARNT = ["--epochs", "3", "--epoch-size", "64", "--lr", "3e-3"]  # enough for the cnn to tell dark from bright noise


def exported(run: Path, name: str, out: Path) -> OnnxClassifier:
    assert export.main(["--checkpoint", str(run / "best.pt"), "--name", name, "--out", str(out)]) == 0
    return OnnxClassifier(out / f"{name}.onnx")


@pytest.mark.slow
def test_a_distilled_student_answers_as_its_teacher_not_as_the_labels(tmp_path: Path, private_cache) -> None:
    data = make_dataset(tmp_path / "gen")
    bright = np.stack([np.asarray(Image.open(p).convert("RGB").resize((128, 128))) for p in sorted((data / "fake").glob("*.png"))])
    assert train.main(["--model", "cnn", "--data", str(data), "--out", str(tmp_path / "teacher"), "--pretrained", "none", *TINY, *LEARNT]) == 0
    teacher = exported(tmp_path / "teacher", "teacher", tmp_path / "x")
    assert teacher.predict_crops(bright).mean() > 0.5  # the teacher learnt that bright means fake
    student = tmp_path / "student"
    assert train.main(["--model", "cnn", "--data", str(swapped_labels(data, tmp_path / "swapped")), "--out", str(student), "--pretrained", "none",
                       *TINY, *LEARNT, "--seed", "3", "--distill", str(teacher.path), "--distill-weight", "1"]) == 0
    assert "--distill" in torch.load(student / "best.pt", map_location="cpu", weights_only=False)["command"]
    assert exported(student, "student", tmp_path / "y").predict_crops(bright).mean() > 0.5  # the teacher's answer; the labels say real


def test_a_teacher_that_reads_other_crops_is_a_clear_error(trained_cnn, tmp_path: Path, private_cache, capsys) -> None:
    run, data = trained_cnn
    teacher = exported(run, "teacher", tmp_path / "x")
    assert train.main(["--model", "cnn", "--data", str(data), "--out", str(tmp_path / "run"), "--pretrained", "none", *TINY,
                       "--input-size", "64", "--distill", str(teacher.path)]) == 2
    assert "--distill: the teacher reads other crops" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "message"), [
    (["--distill", "teacher.onnx", "--distill-weight", "0"], "--distill-weight is a share of the loss"),
    (["--distill", "teacher.onnx", "--distill-weight", "1.5"], "--distill-weight is a share of the loss"),
    (["--distill", "teacher.onnx", "--consistency", "1"], "--distill and --consistency cannot be combined"),
])
def test_distillation_options_out_of_range_are_a_clear_error_before_any_work(options: list[str], message: str, tmp_path: Path, capsys) -> None:
    data = make_dataset(tmp_path / "gen", n_real=2, n_fake=2)
    assert train.main(["--model", "cnn", "--data", str(data), "--out", str(tmp_path / "run"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_frozen_stages_keep_their_imagenet_weights_and_statistics_while_the_rest_trains(tmp_path: Path, private_cache) -> None:
    data = make_dataset(tmp_path / "gen")
    run = tmp_path / "run"
    assert train.main(["--model", "efficientnet_lite0", "--data", str(data), "--out", str(run), *TINY, "--freeze-epochs", "0",
                       "--freeze-stages", "3"]) == 0
    trained = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["model"]
    imagenet = create_model("efficientnet_lite0", pretrained="auto")[0].state_dict()
    frozen = [k for k in imagenet if k.split(".")[0] in ("conv_stem", "bn1") or k.startswith(("blocks.0.", "blocks.1.", "blocks.2."))]
    later = [k for k in imagenet if k.startswith(("blocks.3.", "blocks.6.", "conv_head")) and not k.endswith("num_batches_tracked")]
    assert any(k.endswith("running_mean") for k in frozen)
    assert all(torch.equal(trained[k], imagenet[k]) for k in frozen)
    assert not all(torch.equal(trained[k], imagenet[k]) for k in later)


@pytest.mark.parametrize(("model", "options", "message"), [
    ("cnn", ["--pretrained", "auto"], "--freeze-stages: needs an EfficientNet-Lite model"),
    ("efficientnet_lite0", ["--pretrained", "none"], "--freeze-stages keeps pretrained weights"),
])
def test_frozen_stages_are_refused_where_there_are_none_to_keep(model: str, options: list[str], message: str, tmp_path: Path,
                                                                private_cache, capsys) -> None:
    data = make_dataset(tmp_path / "gen", n_real=4, n_fake=4)
    assert train.main(["--model", model, "--data", str(data), "--out", str(tmp_path / "run"), *TINY, *options, "--freeze-stages", "2"]) == 2
    assert message in capsys.readouterr().err
