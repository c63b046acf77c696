"""Two baselines from earlier projects, trained on the same crops and splits as the networks.

    python -m training.train --model embed_svm --data ../shared/data/tpdne128 --out runs/embed_svm
    python -m training.train --model ae_lr --data ../shared/data/tpdne128 --out runs/ae_lr --epochs 4

- embed_svm: frozen ImageNet embeddings of each face crop (EfficientNet-Lite0 with the offline weights of
  training.models, timm's pooled features: 1280 numbers), standardised, then an SVM. A small grid
  (kernel linear/rbf x C 0.1/1/10) is fitted on the train split and chosen by validation ROC-AUC; the
  chosen one is refitted with Platt-scaled probabilities (sigmoid fitted on cross-validated decision values
  of the train split, as SVC(probability=True) did before scikit-learn deprecated it).
- ae_lr: a small convolutional autoencoder pretrained on the training crops (reconstruction MSE,
  --epochs epochs of --epoch-size crops), then its encoder's pooled features -> logistic regression
  (C chosen by validation ROC-AUC).

Both weight every (dataset, label) group equally, as training.train samples them, pick their threshold on
validation the same way, and write best.pt (a dict with "model_name", the preprocessing spec, the frozen
network's weights and the fitted sklearn pipeline) and summary.json to --out; training.evaluate reads that
best.pt. They are not one torch graph, so they cannot be exported to ONNX. Of train.py's options they use
the data, split, seed, crop and device options; ae_lr also --epochs, --epoch-size, --batch-size and --lr for
its autoencoder. Augmentation, --freeze-epochs, --patience and --resume do not apply (no curves.png either).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from typing import Callable

import numpy as np
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC, SVC
from torch import nn
from tqdm import tqdm

from service.preprocess import PreprocessSpec, to_input
from training.cache import CropSet
from training.metrics import THRESHOLD_RULE, balanced_accuracy_threshold, binary_metrics
from training.models import TF_MEAN_STD, create_model
from training.predict import device_for, rotated

log = logging.getLogger("training.baselines")

BASELINES = ("embed_svm", "ae_lr")
SVM_GRID = [(kernel, c) for kernel in ("linear", "rbf") for c in (0.1, 1.0, 10.0)]
LR_GRID = (0.01, 0.1, 1.0)


class BaselineError(ValueError):
    """A baseline asked to do what it cannot."""


class BaselineNotExportable(BaselineError):
    pass


def is_baseline(name: str) -> bool:
    return name in BASELINES


def require_exportable(name: str) -> None:
    """Raise a clear error for a baseline: export turns one torch network into ONNX, and a baseline is not one."""
    if is_baseline(name):
        raise BaselineNotExportable(
            f"{name} is a baseline (frozen features + an sklearn classifier), not a single network: it cannot be "
            f"exported to ONNX. Evaluate it with `python -m training.evaluate --model <run>/best.pt`, and export a "
            f"network such as efficientnet_lite0 instead")


def preprocess_spec(args: argparse.Namespace) -> PreprocessSpec:
    """EfficientNet-Lite0's input (mean = std = 0.5) for both baselines, with the crop options of the command."""
    mean, std = TF_MEAN_STD
    return PreprocessSpec(input_size=args.input_size or 128, mean=mean, std=std, crop_mode=args.crop_mode,
                          margin=args.margin, resize_filter=args.resize_filter, edges=args.edges)


# --- the networks that make features ------------------------------------------------------------------


def lite0_backbone(pretrained: str = "auto") -> tuple[nn.Module, str]:
    """EfficientNet-Lite0 without its classifier: one pooled 1280-number embedding per image."""
    model, origin = create_model("efficientnet_lite0", pretrained)
    model.reset_classifier(0)
    return model.eval(), origin


class ConvAutoencoder(nn.Module):
    """Four stride-2 convolutions down to code x (size/16)^2, and four transposed ones back up."""

    def __init__(self, width: int = 32, code: int = 128) -> None:
        super().__init__()
        channels = [3, width, width * 2, width * 4, code]
        down, up = [], []
        for cin, cout in zip(channels, channels[1:]):
            down += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        reverse = channels[::-1]
        for i, (cin, cout) in enumerate(zip(reverse, reverse[1:])):
            last = i == len(reverse) - 2
            up += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)]
            up += [nn.Tanh()] if last else [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.encoder, self.decoder = nn.Sequential(*down), nn.Sequential(*up)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's code, averaged over a 2x2 grid: code * 4 numbers per image."""
        return self.pool(self.encoder(x)).flatten(1)


class _Features(nn.Module):
    def __init__(self, autoencoder: ConvAutoencoder) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.features(x)


@torch.no_grad()
def features(net: nn.Module, crops: np.ndarray, spec: PreprocessSpec, device: torch.device, angle: float = 0.0,
             batch_size: int = 128, desc: str | None = None) -> np.ndarray:
    """One feature row per crop (uint8 NHWC), after rotating by `angle`."""
    net.eval()
    rows = []
    starts = range(0, len(crops), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", mininterval=2, disable=desc is None):
        batch = torch.from_numpy(to_input(rotated(crops[start:start + batch_size], angle), spec)).to(device)
        rows.append(net(batch).float().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else None


def _fake_column(classifier: Pipeline) -> int:
    return list(classifier.classes_).index(1)


# --- training -----------------------------------------------------------------------------------------


def train_baseline(args: argparse.Namespace, train: CropSet, val: CropSet, spec: PreprocessSpec) -> dict:
    """Fit the baseline `args.model`, choose its threshold on validation, write best.pt and summary.json."""
    if args.resume:
        log.warning("--resume does nothing for a baseline: it is fitted again from the start")
    device = device_for(args.device)
    torch.manual_seed(args.seed)
    started = time.time()
    if args.model == "embed_svm":
        state, val_probs = _fit_embed_svm(args, train, val, spec, device)
    elif args.model == "ae_lr":
        state, val_probs = _fit_ae_lr(args, train, val, spec, device)
    else:
        raise BaselineError(f"unknown baseline {args.model!r}; choose one of: {', '.join(BASELINES)}")
    threshold = balanced_accuracy_threshold(val.labels, val_probs, val.datasets) if len(val.samples) else 0.5
    state.update({
        "model_name": args.model, "baseline": True, "preprocess": spec.model_dump(),
        "threshold": threshold, "threshold_rule": THRESHOLD_RULE,
        "best_auc": _auc(val.labels, val_probs), "datasets": [str(d) for d in args.data], "seed": args.seed,
        "command": getattr(args, "command", None) or "python -m training.train " + shlex.join(sys.argv[1:]),
    })
    torch.save(state, args.out / "best.pt")
    summary = {"model": args.model, "origin": state["origin"], "threshold": threshold, "search": state["search"],
               "features": state["features"], "train_images": len(train.samples), "seconds": round(time.time() - started, 1),
               "val": binary_metrics(val.labels, val_probs, threshold)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    if state.get("history"):
        (args.out / "history.json").write_text(json.dumps(state["history"], indent=1))
    log.info("%s: %s, threshold %.3f, validation ROC-AUC %s", args.model, state["chosen"], threshold, summary["val"]["roc_auc"])
    return summary


def _fit_embed_svm(args: argparse.Namespace, train: CropSet, val: CropSet, spec: PreprocessSpec, device: torch.device) -> tuple[dict, np.ndarray]:
    backbone, origin = lite0_backbone(args.pretrained)
    backbone.to(device)
    x_train = features(backbone, train.crops, spec, device, desc="embeddings (train)")
    x_val = features(backbone, val.crops, spec, device, desc="embeddings (val)")
    weights = train.group_weights(args.set_weights, args.balance)
    search = []
    for kernel, c in SVM_GRID:
        fitted = Pipeline([("scale", StandardScaler()), ("svm", svm(kernel, c))])
        fitted.fit(x_train, train.labels, svm__sample_weight=weights)
        auc = _auc(val.labels, fitted.decision_function(x_val)) if len(x_val) else None
        search.append({"kernel": kernel, "C": c, "val_roc_auc": auc})
        log.info("SVM kernel=%s C=%g: validation ROC-AUC %s", kernel, c, None if auc is None else round(auc, 4))
    best = max(search, key=lambda row: -1.0 if row["val_roc_auc"] is None else row["val_roc_auc"])
    folds = max(2, min(5, int(np.bincount(train.labels).min())))
    platt = CalibratedClassifierCV(svm(best["kernel"], best["C"]), method="sigmoid", cv=folds, ensemble=False)
    classifier = make_pipeline(StandardScaler(), platt)
    classifier.fit(x_train, train.labels, calibratedclassifiercv__sample_weight=weights)
    val_probs = classifier.predict_proba(x_val)[:, _fake_column(classifier)] if len(x_val) else np.zeros(0)
    state = {"backbone": {k: v.cpu() for k, v in backbone.state_dict().items()}, "classifier": classifier, "origin": f"frozen {origin}",
             "features": int(x_train.shape[1]), "search": search, "chosen": f"SVM(kernel={best['kernel']}, C={best['C']:g})"}
    return state, val_probs


def svm(kernel: str, c: float) -> LinearSVC | SVC:
    """The hinge-loss SVM: liblinear's for the linear kernel, libsvm's for the others. libsvm's linear kernel
    ran for many minutes per fit on the 6,329 training embeddings of the default split and was never done."""
    if kernel == "linear":
        # liblinear penalises the intercept like a weight (libsvm does not), which cost the tests' easy
        # dark-vs-bright set 0.15 of ROC-AUC; scaled up tenfold it hardly does.
        return LinearSVC(C=c, loss="hinge", dual=True, intercept_scaling=10.0, max_iter=50_000)
    return SVC(kernel=kernel, C=c, gamma="scale")


def _fit_ae_lr(args: argparse.Namespace, train: CropSet, val: CropSet, spec: PreprocessSpec, device: torch.device) -> tuple[dict, np.ndarray]:
    autoencoder = ConvAutoencoder().to(device)
    history = _pretrain_autoencoder(autoencoder, train, val, spec, args, device)
    net = _Features(autoencoder)
    x_train = features(net, train.crops, spec, device, desc="encoder features (train)")
    x_val = features(net, val.crops, spec, device, desc="encoder features (val)")
    weights = train.group_weights(args.set_weights, args.balance)
    search, fitted = [], {}
    for c in LR_GRID:
        fitted[c] = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
        fitted[c].fit(x_train, train.labels, logisticregression__sample_weight=weights)
        auc = _auc(val.labels, fitted[c].decision_function(x_val)) if len(x_val) else None
        search.append({"C": c, "val_roc_auc": auc})
        log.info("logistic regression C=%g: validation ROC-AUC %s", c, None if auc is None else round(auc, 4))
    best = max(search, key=lambda row: -1.0 if row["val_roc_auc"] is None else row["val_roc_auc"])
    classifier = fitted[best["C"]]
    val_probs = classifier.predict_proba(x_val)[:, _fake_column(classifier)] if len(x_val) else np.zeros(0)
    state = {"encoder": {k: v.cpu() for k, v in autoencoder.state_dict().items()}, "classifier": classifier,
             "origin": f"convolutional autoencoder pretrained for {len(history)} epochs on the training crops",
             "features": int(x_train.shape[1]), "search": search, "history": history, "chosen": f"LogisticRegression(C={best['C']:g})"}
    return state, val_probs


def _pretrain_autoencoder(model: ConvAutoencoder, train: CropSet, val: CropSet, spec: PreprocessSpec,
                          args: argparse.Namespace, device: torch.device) -> list[dict]:
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = math.ceil((args.epoch_size or len(train.samples)) / args.batch_size)
    history = []
    for epoch in range(1, args.epochs + 1):
        started = time.time()
        model.train()
        generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order = torch.randint(len(train.samples), (steps, args.batch_size), generator=generator)
        total, seen = 0.0, 0
        bar = tqdm(order, desc=f"autoencoder epoch {epoch}/{args.epochs}", unit="batch", mininterval=5)
        for index in bar:
            batch = torch.from_numpy(to_input(train.crops[index.numpy()], spec)).to(device)
            loss = nn.functional.mse_loss(model(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(batch), seen + len(batch)
            bar.set_postfix(mse=f"{total / seen:.4f}")
        row = {"epoch": epoch, "train_mse": total / seen, "val_mse": _reconstruction_mse(model, val.crops, spec, device),
               "seconds": round(time.time() - started, 1)}
        history.append(row)
        log.info("autoencoder epoch %d: %s", epoch, row)
    return history


@torch.no_grad()
def _reconstruction_mse(model: ConvAutoencoder, crops: np.ndarray, spec: PreprocessSpec, device: torch.device) -> float | None:
    model.eval()
    total = 0.0
    for start in range(0, len(crops), 128):
        batch = torch.from_numpy(to_input(crops[start:start + 128], spec)).to(device)
        total += nn.functional.mse_loss(model(batch), batch, reduction="sum").item() / batch[0].numel()
    return total / len(crops) if len(crops) else None


# --- scoring a saved baseline -------------------------------------------------------------------------


def feature_net(state: dict, device: torch.device) -> nn.Module:
    """The frozen network of a saved baseline, on `device`."""
    if state["model_name"] == "embed_svm":
        net, _ = lite0_backbone("none")
        net.load_state_dict(state["backbone"])
    elif state["model_name"] == "ae_lr":
        autoencoder = ConvAutoencoder()
        autoencoder.load_state_dict(state["encoder"])
        net = _Features(autoencoder)
    else:
        raise BaselineError(f"unknown baseline {state['model_name']!r}; choose one of: {', '.join(BASELINES)}")
    return net.to(device).eval()


def scorer(state: dict, spec: PreprocessSpec, device: torch.device) -> Callable[[np.ndarray, float], np.ndarray]:
    """A function: uint8 NHWC crops, one rotation angle -> fake probabilities."""
    net = feature_net(state, device)
    classifier = state["classifier"]
    column = _fake_column(classifier)

    def score(crops: np.ndarray, angle: float) -> np.ndarray:
        if not len(crops):
            return np.zeros(0)
        return classifier.predict_proba(features(net, crops, spec, device, angle))[:, column]

    return score
