"""--source-adversary: a head that tries to tell which real source a real crop came from, trained through a
reversed gradient (Ganin and Lempitsky 2015, DANN), so that the features the classifier reads learn to hide it.

Leave-one-source-out shows the recipe learning each real set's look (FFHQ's, rff's studio portraits) rather
than what real photos share, and then calling a real source it never saw fake. The adversary takes that
look away from the features where it can: its head learns to name the source, the backbone learns to make
that impossible. It reads the pooled features of real crops only; the fakes' sources are what the
classifier must tell apart, not hide. Trained beside the classifier and never exported.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from training.data import Sample

HIDDEN = 256
HEAD_LR_FACTOR = 10  # the head must learn the sources within a few epochs, or the features have nothing to hide from
NOT_REAL = -1  # the target of a fake crop: no source to hide


class _ReversedGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None


def reversed_gradient(features: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """The identity going forward; going back, the gradient with its sign turned and scaled by `strength`."""
    return _ReversedGradient.apply(features, strength)


class SourceAdversary(nn.Module):
    """Which real source a crop's pooled features came from. The head learns from its whole loss; the
    features get that loss's gradient turned and scaled by `strength` (DANN's lambda)."""

    def __init__(self, features: int, sources: int, strength: float) -> None:
        super().__init__()
        self.strength = strength
        self.classify = nn.Sequential(nn.Linear(features, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, sources))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classify(reversed_gradient(pooled, self.strength))


def real_sources(samples: Sequence[Sample]) -> list[str]:
    """The datasets that hold real photos, in a fixed order."""
    return sorted({s.dataset for s in samples if s.label == 0})


def source_targets(samples: Sequence[Sample], sources: Sequence[str]) -> np.ndarray:
    """Each sample's index in `sources` where it is real, NOT_REAL where it is fake."""
    index = {name: i for i, name in enumerate(sources)}
    return np.array([index[s.dataset] if s.label == 0 else NOT_REAL for s in samples], dtype=np.int64)


def source_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy over the real crops (the rest ignored), how many of them the head named right, and how many there were."""
    real = targets != NOT_REAL
    if not bool(real.any()):
        return logits.sum() * 0, 0, 0
    right = int((logits[real].argmax(dim=1) == targets[real]).sum())
    return nn.functional.cross_entropy(logits[real], targets[real]), right, int(real.sum())
