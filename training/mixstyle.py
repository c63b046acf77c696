"""--mixstyle: each crop's early feature statistics mixed with those of a crop of the same class from another
source (MixStyle, Zhou et al. 2021), in training only.

Leave-one-source-out shows the recipe learning each source's look (a real set's light and colour, a
generator's texture statistics) and then misjudging a source it never saw. The channel means and standard
deviations of the first stages' feature maps carry much of that look; MixStyle swaps part of them between two
crops, so that a look is no longer enough to tell a class. The partner has the crop's own label, so the mix
never makes a real crop look like a fake one; it comes from another dataset wherever the batch has one.
Nothing is learnt and nothing is exported: in evaluation mode the hooks pass the features through.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from training.models import early_layers

ALPHA = 0.1  # Beta(0.1, 0.1): most mixes lie near one crop's own statistics or near its partner's, as in the paper
EPS = 1e-6


def partners(labels: Sequence[int], datasets: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """For each crop, another crop's index with the same label, from another dataset where the batch has one."""
    labels, datasets = np.asarray(labels), np.asarray(datasets)
    chosen = np.arange(len(labels))
    for i in range(len(labels)):
        same = np.flatnonzero(labels == labels[i])
        other = same[datasets[same] != datasets[i]]
        pool = other if len(other) else same[same != i]
        if len(pool):
            chosen[i] = rng.choice(pool)
    return chosen


def mix_statistics(features: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`features` normalised per crop and channel, then given `weight` of their own statistics and the rest of their partner's."""
    mean = features.mean(dim=(2, 3), keepdim=True).detach()
    std = (features.var(dim=(2, 3), keepdim=True) + EPS).sqrt().detach()
    weight = weight.view(-1, 1, 1, 1).to(features.dtype)
    mixed_mean = weight * mean + (1 - weight) * mean[partner]
    mixed_std = weight * std + (1 - weight) * std[partner]
    return (features - mean) / std * mixed_std + mixed_mean


class MixStyle:
    """Forward hooks on a network's first stages that mix statistics for the batch they are given, and only in training."""

    def __init__(self, stages: Sequence[nn.Module], probability: float, seed: int) -> None:
        self.probability = probability
        self.rng = np.random.default_rng(seed)
        self.partner: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        for stage in stages:
            stage.register_forward_hook(self._hook)

    def draw(self, labels: Sequence[int], datasets: Sequence[str], views: int, device: torch.device) -> None:
        """Choose this batch's partners and weights (or none, with 1 - probability); `views` copies of the batch run together."""
        if self.rng.random() >= self.probability:
            self.partner = self.weight = None
            return
        chosen = partners(labels, datasets, self.rng)
        count = len(chosen)
        self.partner = torch.from_numpy(np.concatenate([chosen + view * count for view in range(views)])).to(device)
        self.weight = torch.from_numpy(np.tile(self.rng.beta(ALPHA, ALPHA, count), views)).float().to(device)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training or self.partner is None or len(self.partner) != len(output):
            return None
        return mix_statistics(output, self.partner, self.weight)


def first_stages(model: nn.Module, count: int) -> list[nn.Module]:
    """The first `count` stages of an EfficientNet-Lite (timm's `blocks`), without its stem."""
    try:
        return early_layers(model, count)[2:]
    except ValueError as e:
        raise ValueError(f"--mixstyle {e}") from None
