"""Train a real-vs-fake face classifier on folders of real/ and fake/ images.

    python -m training.train --model efficientnet_lite0 --data ../shared/data/tpdne128 --out runs/lite0

Writes to --out: split.json, best.pt (the best validation ROC-AUC: each set's own, averaged over the
sets), last.pt (to --resume), history.json, curves.png and summary.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from service.contract import ModelLoadError
from service.onnx_model import OnnxClassifier
from service.preprocess import PreprocessSpec, to_input
from training import baselines, plots
from training.adversary import HEAD_LR_FACTOR, SourceAdversary, real_sources, source_loss, source_targets
from training.augment import AUGMENT_OPTIONS, AugmentSpec, augment, augment_pair
from training.cache import CropCache, CropSet, add_crop_arguments
from training.cli import start_command
from training.data import DatasetError, Split, make_split, scan_dataset
from training.metrics import THRESHOLD_RULE, balanced_accuracy_threshold, binary_metrics, mean_dataset_auc
from training.mixstyle import MixStyle, first_stages
from training.models import MODELS, UnknownModel, create_model, early_layers, entry, features_and_stage, head_parameters, patch_classifier, stage_channels
from training.parts import PARTS, part_targets
from training.predict import device_for, predict_probs
from training.selfblend import self_blend

log = logging.getLogger("training.train")
PATCH_AUX_STAGES = 3  # --patch-aux reads what efficientnet_lite0_patch8 reads: each position sees 67 px
MIXSTYLE_STAGES = 3  # the paper mixes after a ResNet's first three of four stages; Lite0's first three are as early


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=f"architecture: {', '.join(MODELS)}; or a baseline (training/baselines.py): {', '.join(baselines.BASELINES)}")
    p.add_argument("--data", type=Path, action="append", required=True, help="dataset folder with real/ and/or fake/; repeat to combine")
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, split, curves and metrics")
    p.add_argument("--pretrained", default="auto", help="auto (offline ImageNet weights where shipped), hub (timm's hub), none, or a checkpoint PATH")
    p.add_argument("--split", type=Path, help="reuse this split file instead of making one (default: <out>/split.json, made if absent); copied to <out>/split.json")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the initial weights, the sampling and the augmentation")
    p.add_argument("--epochs", type=int, default=8, help="most epochs to train")
    p.add_argument("--epoch-size", type=int, default=0, help="samples drawn per epoch (default: the training split's size)")
    p.add_argument("--set-weight", action="append", default=[], metavar="SET=W", help="draw this dataset's images W times as often as the others' (each set's real and fake count alike); repeatable")
    p.add_argument("--balance", choices=["classes", "groups"], default="classes", help="classes: real and fake drawn half each, every source alike within its class; groups: every (set, label) group alike")
    p.add_argument("--freeze-epochs", type=int, default=1, help="epochs that train only the head of a pretrained backbone")
    p.add_argument("--patience", type=int, default=3, help="stop after this many epochs without a better validation ROC-AUC (the mean of each validation set's own)")
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine schedule with warm-up)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--ema", type=float, default=0.0, help="decay of an exponential moving average of the weights, validated and saved in place of the raw ones (e.g. 0.995; 0 = off)")
    p.add_argument("--input-size", type=int, help="crop side in pixels (default: the model's, 128)")
    add_crop_arguments(p)
    p.add_argument("--no-augment", action="store_true", help="train on the crops as they are")
    for name in AUGMENT_OPTIONS:
        field = AugmentSpec.model_fields[name]
        p.add_argument("--" + name.replace("_", "-"), type=float, default=field.default, help=field.description.replace("%", "%%"))
    p.add_argument("--consistency", type=float, default=0.0, metavar="WEIGHT",
                   help="train on two views of each photo, augmented as usual and certainly scaled and re-saved, with this weight on the "
                        "Jensen-Shannon divergence of their answers (AugMix's consistency loss; 0 = off; each step costs about twice as much)")
    p.add_argument("--self-blend", type=float, default=0.0, metavar="SHARE",
                   help="replace this share of the fake photos drawn with blended fakes made from real crops (training/selfblend.py; 0 = off)")
    p.add_argument("--part-loss", type=float, default=0.0, metavar="WEIGHT",
                   help="with this weight, an auxiliary head learns which parts of a fake face were replaced, where its file name says "
                        "(rff's codes, training/parts.py); it is not exported (0 = off)")
    p.add_argument("--patch-aux", type=float, default=0.0, metavar="WEIGHT",
                   help="with this weight, a second head judges each 67 px patch apart from the first three stages' features and answers the "
                        "mean of their logits, as efficientnet_lite0_patch8 does; trained beside the classifier, so that the stages they share "
                        "must carry local evidence, and not exported (0 = off; EfficientNet-Lite models)")
    p.add_argument("--source-adversary", type=float, default=0.0, metavar="WEIGHT",
                   help="a head tries to name which real source each real crop came from, and the features get its gradient turned and "
                        "scaled by WEIGHT (DANN's lambda), so that they learn to hide each real set's look (training/adversary.py); "
                        "not exported (0 = off; timm models)")
    p.add_argument("--mixstyle", type=float, default=0.0, metavar="P",
                   help="in this share of the batches, each crop's feature statistics after the first three stages are mixed with those of "
                        "a crop of the same class from another source (MixStyle, training/mixstyle.py), so that a source's look stops "
                        "telling real from fake; nothing exported (0 = off, 0.5 the paper's; EfficientNet-Lite models)")
    p.add_argument("--freeze-stages", type=int, default=0, metavar="N",
                   help="keep the stem and the first N stages of a pretrained EfficientNet-Lite at their starting weights and batch-norm "
                        "statistics for the whole training, so that its low-level filters stay generic and cannot tune themselves to "
                        "one generator's texture (0 = off; Lite0 has 7 stages)")
    p.add_argument("--focal", type=float, default=0.0, metavar="GAMMA",
                   help="focal loss (Lin et al. 2017): each crop's cross-entropy weighted by (1 - the probability it gives the truth) ** GAMMA, "
                        "so the crops it already answers surely count less and the hard ones more (0 = plain cross-entropy)")
    p.add_argument("--distill", type=Path, metavar="TEACHER.onnx",
                   help="learn from an export's answers as well as the labels (Hinton et al. 2015): the teacher, an ensemble say, reads "
                        "every augmented training batch, so that one network can learn to answer as the teacher does at a fraction of its cost")
    p.add_argument("--distill-weight", type=float, default=0.75, metavar="W",
                   help="with --distill, the share of the loss that is the cross-entropy against the teacher's probabilities (the rest: the labels')")
    p.add_argument("--workers", type=int, default=2, help="processes for face detection when the crop cache is cold")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--loader-workers", type=int, default=0,
                   help="processes that blend and augment batches beside training (0: the training process itself); on a GPU the augmentation, not the network, sets the pace")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    return p.parse_args(argv)


def preprocess_spec(args: argparse.Namespace) -> PreprocessSpec:
    spec = entry(args.model)
    mean, std = spec.mean_std
    return PreprocessSpec(input_size=args.input_size or spec.input_size, mean=mean, std=std,
                          crop_mode=args.crop_mode, margin=args.margin, resize_filter=args.resize_filter, edges=args.edges)


def augment_spec(args: argparse.Namespace) -> AugmentSpec:
    """The recipe's augmentation; an option out of its range is a DatasetError naming it."""
    options = {name: getattr(args, name) for name in AUGMENT_OPTIONS} | {"edges": args.edges}
    try:
        return AugmentSpec(**options)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise DatasetError(f"--{str(error['loc'][0]).replace('_', '-')} {error['input']}: {error['msg'].lower()}") from None


def load_split(args: argparse.Namespace, samples: list) -> Split:
    """The run's split, always saved as <out>/split.json, where evaluate and export look for it. A set the
    reused split lacks (one added to a recipe) gets its own seeded split beside the recorded ones."""
    path = args.split or args.out / "split.json"
    split = Split.load(path) if path.exists() else make_split(samples, seed=args.seed)
    split, added = split.extended(samples, args.seed)
    for name in split.missing(samples):
        log.warning("%s: in %s but given no photos (--data), so this run neither trains nor validates on it", name, path)
    if added:
        log.info("%s: not in %s, split afresh (seed %d)", ", ".join(added), path, args.seed)
    split.save(args.out / "split.json")
    return split


def rebuild_recipe(args: argparse.Namespace) -> list[str]:
    """The commands that rebuild this run from the data: those of a checkpoint it starts from, then its own."""
    if args.pretrained in ("auto", "hub", "none"):
        return [args.command]
    parent = torch.load(args.pretrained, map_location="cpu", weights_only=False)
    parent_recipe = parent.get("recipe") or ([parent["command"]] if parent.get("command") else [])
    return [*parent_recipe, args.command]


class BatchMaker(Dataset):
    """One epoch's training batches, each blended and augmented from its own seed: DataLoader workers
    (--loader-workers) make exactly the batches the main process would, in any order."""

    def __init__(self, crops: np.ndarray, labels: np.ndarray, order: np.ndarray, spec: PreprocessSpec, augment: AugmentSpec | None,
                 self_blend: float, consistency: bool, seed: str) -> None:
        self.crops, self.labels, self.order, self.spec = crops, labels, order, spec
        self.augment, self.self_blend, self.consistency, self.seed = augment, self_blend, consistency, seed

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The step's model inputs (two views each with --consistency) and which of its fakes were self-blended."""
        rng = random.Random(f"{self.seed}-{step}")
        crops, blended = self.with_blends(self.order[step], rng)
        return to_input(self.augmented(crops, rng), self.spec), blended

    def with_blends(self, index: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        """The batch's crops, with --self-blend's share of its fakes replaced by real crops blended with
        themselves, and which positions were."""
        crops, blended = self.crops[index], np.zeros(len(index), dtype=bool)
        if self.self_blend <= 0:
            return crops, blended
        crops = crops.copy()
        reals = np.flatnonzero(self.labels == 0)
        for position in np.flatnonzero(self.labels[index] == 1):
            if rng.random() < self.self_blend:
                crops[position] = self_blend(self.crops[reals[rng.randrange(len(reals))]], self.spec.margin, rng)
                blended[position] = True
        return crops, blended

    def augmented(self, crops: np.ndarray, rng: random.Random) -> np.ndarray:
        """The batch as augmented; with --consistency, every crop's usual view and then every crop's certainly degraded one."""
        if self.consistency:
            spec = self.augment or AugmentSpec(flip=0, rotation=0, lighting=0, blur=0, resize=0, jpeg=0)
            first, second = zip(*(augment_pair(c, spec, rng) for c in crops))
            return np.stack(first + second)
        if self.augment is None:
            return crops
        return np.stack([augment(c, self.augment, rng) for c in crops])


class Trainer:
    def __init__(self, args: argparse.Namespace, train: CropSet, val: CropSet, spec: PreprocessSpec) -> None:
        self.args, self.train_set, self.val_set, self.spec = args, train, val, spec
        self.device = device_for(args.device)
        torch.manual_seed(args.seed)
        self.model, self.origin = create_model(args.model, args.pretrained)
        self.recipe = rebuild_recipe(args)
        # channels_last: about 1.8x faster convolutions on CPU (oneDNN) and on CUDA with AMP
        self.model.to(self.device, memory_format=torch.channels_last)
        self.pretrained = not self.origin.startswith("random")
        self.part_head = self._part_head()
        self.patch_head = self._patch_head()
        self.source_head = self._source_head()
        self.mixstyle = self._mixstyle()
        self.frozen_layers = self._frozen_layers()
        self.sources = None if self.mixstyle is None else np.array(train.datasets)  # each sample's dataset, read per batch
        self.part_targets, self.part_known = part_targets(train.samples)
        self.source_targets = None if self.source_head is None else source_targets(train.samples, real_sources(train.samples))
        groups = self._parameter_groups()
        self.optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
        self.steps_per_epoch = math.ceil((args.epoch_size or len(train.samples)) / args.batch_size)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=[g["lr"] for g in groups],
                                                             total_steps=args.epochs * self.steps_per_epoch, pct_start=0.15)
        self.scaler = torch.amp.GradScaler(enabled=self.device.type == "cuda")
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema > 0 else None
        self.augment = None if args.no_augment else augment_spec(args)
        self.teacher = load_teacher(args.distill, spec, args.device) if args.distill else None
        self.history: list[dict] = []
        self.best_auc, self.epoch = -1.0, 0

    def _part_head(self) -> nn.Module | None:
        """--part-loss's head on the pooled features the classifier reads; trained beside it, never exported."""
        if self.args.part_loss <= 0:
            return None
        if not hasattr(self.model, "forward_head"):
            raise DatasetError(f"--part-loss needs a timm model, whose pooled features it reads; {self.args.model} has none")
        return nn.Linear(self.model.num_features, len(PARTS)).to(self.device)

    def _patch_head(self) -> nn.Module | None:
        """--patch-aux's head on the first stages' feature map; trained beside the classifier, never exported."""
        if self.args.patch_aux <= 0:
            return None
        if not hasattr(self.model, "conv_head") or len(getattr(self.model, "blocks", ())) <= PATCH_AUX_STAGES:
            raise DatasetError(f"--patch-aux needs an EfficientNet-Lite model, whose first stages it reads; {self.args.model} is not one")
        return patch_classifier(stage_channels(self.model, PATCH_AUX_STAGES)).to(self.device, memory_format=torch.channels_last)

    def _source_head(self) -> nn.Module | None:
        """--source-adversary's head on the pooled features the classifier reads; trained beside it, never exported."""
        if self.args.source_adversary <= 0:
            return None
        if not hasattr(self.model, "forward_head"):
            raise DatasetError(f"--source-adversary needs a timm model, whose pooled features it reads; {self.args.model} has none")
        sources = real_sources(self.train_set.samples)
        if len(sources) < 2:
            raise DatasetError(f"--source-adversary needs real photos from two sources or more to hide; the training split has {len(sources)}")
        return SourceAdversary(self.model.num_features, len(sources), self.args.source_adversary).to(self.device)

    def _mixstyle(self) -> MixStyle | None:
        if self.args.mixstyle <= 0:
            return None
        try:
            return MixStyle(first_stages(self.model, MIXSTYLE_STAGES), self.args.mixstyle, self.args.seed)
        except ValueError as e:
            raise DatasetError(f"{e}; {self.args.model} is not one") from None

    def _frozen_layers(self) -> list[nn.Module]:
        if self.args.freeze_stages <= 0:
            return []
        try:
            layers = early_layers(self.model, self.args.freeze_stages)
        except ValueError as e:
            raise DatasetError(f"--freeze-stages: {e}; {self.args.model} is not one") from None
        if not self.pretrained:
            raise DatasetError("--freeze-stages keeps pretrained weights; this model starts from random ones")
        return layers

    def _parameter_groups(self) -> list[dict]:
        """The network and the heads trained with it at --lr; the source adversary's head faster (HEAD_LR_FACTOR)."""
        shared = [*self.model.parameters(), *(p for aux in self.aux_heads if aux is not self.source_head for p in aux.parameters())]
        groups = [{"params": shared, "lr": self.args.lr}]
        if self.source_head is not None:
            groups.append({"params": list(self.source_head.parameters()), "lr": self.args.lr * HEAD_LR_FACTOR})
        return groups

    @property
    def aux_heads(self) -> list[nn.Module]:
        return [head for head in (self.part_head, self.patch_head, self.source_head) if head is not None]

    def run(self) -> None:
        stale = epochs_since_best(self.history)  # a resumed run keeps counting towards --patience
        for self.epoch in range(self.epoch + 1, self.args.epochs + 1):
            self._freeze_backbone(self.pretrained and self.epoch <= self.args.freeze_epochs)
            started = time.time()
            train_loss, train_accuracy, named = self._train_epoch()
            row = {"epoch": self.epoch, "train_loss": train_loss, "train_accuracy": train_accuracy, **self._validate(), "seconds": round(time.time() - started, 1)}
            if named is not None:
                row["source_named"] = named  # the adversary's accuracy on the epoch's real crops
            self.history.append(row)
            log.info("epoch %d: %s", self.epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            score = selection_auc(row)
            if score > self.best_auc:
                self.best_auc, stale = score, 0
                self.save(self.args.out / "best.pt")
            else:
                stale += 1
            self.save(self.args.out / "last.pt")
            plots.training_curves(self.history, self.args.out / "curves.png")
            if stale >= self.args.patience:
                log.info("no better validation ROC-AUC for %d epochs: stopping early", stale)
                break

    def _freeze_backbone(self, frozen: bool) -> None:
        head = {id(p) for p in head_parameters(self.model)}
        kept = {id(p) for layer in self.frozen_layers for p in layer.parameters()}
        for parameter in self.model.parameters():
            parameter.requires_grad = (not frozen or id(parameter) in head) and id(parameter) not in kept

    def _train_epoch(self) -> tuple[float, float, float | None]:
        self.model.train()
        for layer in self.frozen_layers:
            layer.eval()  # batch norm keeps its pretrained statistics
        generator = torch.Generator().manual_seed(self.args.seed * 1000 + self.epoch)
        order = torch.multinomial(torch.from_numpy(self.train_set.group_weights(self.args.set_weights, self.args.balance)), self.steps_per_epoch * self.args.batch_size, replacement=True, generator=generator)
        batches = BatchMaker(self.train_set.crops, self.train_set.labels, order.view(self.steps_per_epoch, -1).numpy(), self.spec,
                             self.augment, self.args.self_blend, self.args.consistency > 0, f"{self.args.seed}-{self.epoch}")
        loader = DataLoader(batches, batch_size=None, num_workers=self.args.loader_workers, pin_memory=self.device.type == "cuda")
        loss_fn = partial(focal_bce, gamma=self.args.focal)
        total_loss, correct, seen, named, reals = 0.0, 0, 0, 0, 0
        bar = tqdm(zip(batches.order, loader), total=len(batches), desc=f"epoch {self.epoch}/{self.args.epochs}", unit="batch", mininterval=5)
        for index, (inputs, blended) in bar:
            taught = self._teacher_probs(inputs)
            inputs = inputs.to(self.device, non_blocking=True, memory_format=torch.channels_last)
            batch_labels = self.train_set.labels[index]
            labels = torch.from_numpy(batch_labels).float().to(self.device)
            if self.mixstyle is not None:
                self.mixstyle.draw(batch_labels, self.sources[index], len(inputs) // len(index), self.device)
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                logits, part_logits, patch_logits, source_logits = self._forward(inputs)
            if self.args.consistency > 0:
                first, second = logits.chunk(2)
                loss = (loss_fn(first, labels) + loss_fn(second, labels)) / 2 + self.args.consistency * js_divergence(first, second)
                logits = first
            else:
                loss = loss_fn(logits, labels)
            if taught is not None:
                distilled = nn.functional.binary_cross_entropy_with_logits(logits, taught)
                loss = (1 - self.args.distill_weight) * loss + self.args.distill_weight * distilled
            if part_logits is not None:
                loss = loss + self.args.part_loss * self._part_loss(part_logits, index, blended.numpy())
            if patch_logits is not None:
                loss = loss + self.args.patch_aux * loss_fn(patch_logits, labels.repeat(len(patch_logits) // len(labels)))
            if source_logits is not None:
                targets = torch.from_numpy(np.tile(self.source_targets[index], len(source_logits) // len(index))).to(self.device)
                hidden, right, count = source_loss(source_logits, targets)
                loss, named, reals = loss + hidden, named + right, reals + count  # the features get it turned, scaled by the weight
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            total_loss += loss.item() * len(labels)
            correct += int(((logits > 0).float() == labels).sum())
            seen += len(labels)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
        return total_loss / seen, correct / seen, (named / reals if reals else None)

    def _forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The real-vs-fake logits; with --part-loss the part logits read from the same pooled features; with
        --patch-aux the patch head's mean logit, read from the same pass's first stages; with --source-adversary
        the real-source logits, from the pooled features through a reversed gradient."""
        if not self.aux_heads:
            return self.model(inputs).squeeze(1).float(), None, None, None
        if self.patch_head is None:
            features, early = self.model.forward_features(inputs), None
        else:
            features, early = features_and_stage(self.model, inputs, PATCH_AUX_STAGES)
        pooled = self.model.forward_head(features, pre_logits=True)
        part_logits = None if self.part_head is None else self.part_head(pooled).float()
        patch_logits = None if early is None else self.patch_head(early).mean(dim=(1, 2, 3)).float()
        source_logits = None if self.source_head is None else self.source_head(pooled).float()
        return self.model.get_classifier()(pooled).squeeze(1).float(), part_logits, patch_logits, source_logits

    def _teacher_probs(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """With --distill, the teacher's probabilities for the very crops the student reads, from the batch on the host."""
        if self.teacher is None:
            return None
        return torch.from_numpy(self.teacher.predict(inputs.numpy())).to(self.device)

    def _part_loss(self, part_logits: torch.Tensor, index: np.ndarray, blended: np.ndarray) -> torch.Tensor:
        """Binary cross-entropy of each part, over the photos whose parts are known (a blend's are not)."""
        views = len(part_logits) // len(index)  # two with --consistency
        known = torch.from_numpy(np.tile(self.part_known[index] & ~blended, views)).to(self.device)
        if not known.any():
            return part_logits.sum() * 0
        targets = torch.from_numpy(np.tile(self.part_targets[index], (views, 1))).to(self.device)
        return nn.functional.binary_cross_entropy_with_logits(part_logits[known], targets[known])

    @property
    def evaluated_model(self) -> nn.Module:
        """The weights that are validated, kept and exported: the moving average when --ema is on."""
        return self.model if self.ema is None else self.ema.module

    def _validate(self) -> dict:
        probs = predict_probs(self.evaluated_model, self.val_set.crops, self.spec, device=self.device)
        labels = self.val_set.labels
        metrics = binary_metrics(labels, probs)
        eps = 1e-6
        loss = float(-np.mean(labels * np.log(probs + eps) + (1 - labels) * np.log(1 - probs + eps)))
        set_auc, per_set = mean_dataset_auc(labels, probs, self.val_set.datasets)
        return {"val_loss": loss, "val_accuracy": metrics["accuracy"], "val_roc_auc": metrics["roc_auc"],
                "val_set_auc": set_auc, "val_auc_per_set": per_set}

    def save(self, path: Path) -> None:
        torch.save({
            "model": self.evaluated_model.state_dict(), "raw_model": None if self.ema is None else self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(), "model_name": self.args.model, "preprocess": self.spec.model_dump(),
            "origin": self.origin, "epoch": self.epoch, "history": self.history, "best_auc": self.best_auc,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "part_head": None if self.part_head is None else self.part_head.state_dict(),
            "patch_head": None if self.patch_head is None else self.patch_head.state_dict(),
            "source_head": None if self.source_head is None else self.source_head.state_dict(),
            "datasets": [str(d) for d in self.args.data], "seed": self.args.seed,
            "command": self.args.command, "recipe": self.recipe,
        }, path)

    def resume(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state.get("raw_model") or state["model"])
        if self.part_head is not None and state.get("part_head"):
            self.part_head.load_state_dict(state["part_head"])
        if self.patch_head is not None and state.get("patch_head"):
            self.patch_head.load_state_dict(state["patch_head"])
        if self.source_head is not None and state.get("source_head"):
            self.source_head.load_state_dict(state["source_head"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history, self.best_auc = state["epoch"], state["history"], state["best_auc"]
        log.info("resumed from %s at epoch %d", path, self.epoch)


def load_teacher(path: Path, spec: PreprocessSpec, device: str) -> OnnxClassifier:
    """--distill's teacher, which must read the crops the student is trained on."""
    try:
        teacher = OnnxClassifier(path, device=device)
    except ModelLoadError as exc:
        raise DatasetError(f"--distill: {exc}") from exc
    if teacher.card.preprocess != spec:
        raise DatasetError(f"--distill: the teacher reads other crops ({teacher.card.preprocess}) than this training makes ({spec}); "
                           "give the training the teacher's --input-size, --margin, --resize-filter and --edges")
    return teacher


def focal_bce(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """Mean binary cross-entropy, each term weighted by (1 - p_truth) ** gamma; gamma 0 is plain cross-entropy."""
    bce = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if gamma == 0:
        return bce.mean()
    p_truth = torch.exp(-bce)
    return ((1 - p_truth) ** gamma * bce).mean()


def js_divergence(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence between the Bernoulli answers of two logits, in nats (0 to ln 2)."""
    p, q = torch.sigmoid(first), torch.sigmoid(second)
    m = ((p + q) / 2).clamp(1e-7, 1 - 1e-7)

    def kl_to_m(x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(1e-7, 1 - 1e-7)
        return x * torch.log(x / m) + (1 - x) * torch.log((1 - x) / (1 - m))

    return ((kl_to_m(p) + kl_to_m(q)) / 2).mean()


def parse_set_weights(items: list[str], known: set[str]) -> dict[str, float]:
    """`["tpdne128=2"]` -> `{"tpdne128": 2.0}`, refusing sets the training split lacks."""
    weights = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            raise DatasetError(f"--set-weight takes SET=WEIGHT, got {item!r}") from None
        if name not in known:
            raise DatasetError(f"--set-weight names {name!r}, which is not among the training sets: {', '.join(sorted(known))}")
        if not (math.isfinite(weights[name]) and weights[name] > 0):
            raise DatasetError(f"--set-weight {item!r}: the weight must be a positive number")
    return weights


def recorded_command(argv: list[str]) -> str:
    """The recipe kept in checkpoints and cards: the same however often the run was resumed."""
    return "python -m training.train " + shlex.join(a for a in argv if a != "--resume")


def selection_auc(row: dict) -> float:
    """What picks the best epoch: the mean of the validation sets' own ROC-AUCs (pooled in runs before it existed)."""
    value = row.get("val_set_auc", row["val_roc_auc"])
    return -1.0 if value is None else value


def best_epoch(history: list[dict]) -> dict:
    return max(history, key=selection_auc) if history else {}


def epochs_since_best(history: list[dict]) -> int:
    return history[-1]["epoch"] - best_epoch(history)["epoch"] if history else 0


def finish(trainer: Trainer, val: CropSet) -> dict:
    """Reload the best checkpoint, choose its threshold on validation and record both."""
    path = trainer.args.out / "best.pt"
    state = torch.load(path, map_location=trainer.device, weights_only=False)
    trainer.evaluated_model.load_state_dict(state["model"])
    probs = predict_probs(trainer.evaluated_model, val.crops, trainer.spec, device=trainer.device)
    threshold = balanced_accuracy_threshold(val.labels, probs, val.datasets)
    state["threshold"] = threshold
    state["threshold_rule"] = THRESHOLD_RULE
    state["history"] = trainer.history  # every epoch run, not only those before the best one
    torch.save(state, path)
    summary = {"model": trainer.args.model, "origin": trainer.origin, "best_epoch": best_epoch(trainer.history)["epoch"],
               "threshold": threshold, "val": binary_metrics(val.labels, probs, threshold)}
    (trainer.args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (trainer.args.out / "history.json").write_text(json.dumps(trainer.history, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    argv, _ = start_command("training.train", argv)
    args = parse_args(argv)
    args.command = recorded_command(argv)
    baseline = baselines.is_baseline(args.model)
    try:
        if args.consistency < 0:
            raise DatasetError(f"--consistency is a weight, 0 (off) or more, got {args.consistency}")
        if args.blur + args.sharpen > 1:
            raise DatasetError(f"--blur {args.blur} and --sharpen {args.sharpen} are shares of one draw: together at most 1")
        if args.part_loss < 0:
            raise DatasetError(f"--part-loss is a weight, 0 (off) or more, got {args.part_loss}")
        if args.patch_aux < 0:
            raise DatasetError(f"--patch-aux is a weight, 0 (off) or more, got {args.patch_aux}")
        if args.source_adversary < 0:
            raise DatasetError(f"--source-adversary is a weight, 0 (off) or more, got {args.source_adversary}")
        if not 0 <= args.mixstyle <= 1:
            raise DatasetError(f"--mixstyle is a share of the batches, 0 to 1, got {args.mixstyle}")
        if args.freeze_stages < 0:
            raise DatasetError(f"--freeze-stages is a number of stages, 0 (off) or more, got {args.freeze_stages}")
        if args.focal < 0:
            raise DatasetError(f"--focal is an exponent, 0 (off) or more, got {args.focal}")
        if not 0 < args.distill_weight <= 1:
            raise DatasetError(f"--distill-weight is a share of the loss, more than 0 and at most 1, got {args.distill_weight}")
        if args.distill and args.consistency > 0:
            raise DatasetError("--distill and --consistency cannot be combined: the teacher answers one view of each crop")
        if args.loader_workers < 0:
            raise DatasetError(f"--loader-workers is a number of processes, 0 or more, got {args.loader_workers}")
        if not 0 <= args.self_blend <= 1:
            raise DatasetError(f"--self-blend is a share of the fakes drawn, 0 to 1, got {args.self_blend}")
        augment_spec(args)
        if not baseline:
            entry(args.model)
        samples = [s for folder in args.data for s in scan_dataset(folder)]
        args.set_weights = parse_set_weights(args.set_weight, {s.dataset for s in samples})
    except UnknownModel as exc:
        print(f"error: {exc}; or a baseline: {', '.join(baselines.BASELINES)}", file=sys.stderr)
        return 2
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    spec = baselines.preprocess_spec(args) if baseline else preprocess_spec(args)
    split = load_split(args, samples)
    cache = CropCache()
    train = cache.crop_set(split.select(samples, "train"), spec, args.workers, "crops (train)")
    val = cache.crop_set(split.select(samples, "val"), spec, args.workers, "crops (val)")
    for crop_set, name in ((train, "train"), (val, "val")):
        log.info("%s: %d images, %d without a detected face (whole image used), %d unreadable and skipped",
                 name, len(crop_set.samples), int((~crop_set.face_found).sum()), len(crop_set.unreadable))
        for sample, error in crop_set.unreadable:
            log.warning("skipped %s: %s", sample.path, error)
    if len({int(x) for x in train.labels}) < 2:
        print("error: the training split needs both real and fake images", file=sys.stderr)
        return 2
    if baseline:
        baselines.train_baseline(args, train, val, spec)
        return 0
    try:
        trainer = Trainer(args, train, val, spec)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("model %s, starting from %s, on %s", args.model, trainer.origin, trainer.device)
    if args.resume and (args.out / "last.pt").exists():
        trainer.resume(args.out / "last.pt")
    trainer.run()
    summary = finish(trainer, val)
    log.info("best epoch %d, threshold %.3f, validation: %s", summary["best_epoch"], summary["threshold"],
             {k: summary["val"][k] for k in ("roc_auc", "accuracy", "balanced_accuracy")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
