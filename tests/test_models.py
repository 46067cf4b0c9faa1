"""Tests for the model zoo: shapes, features, parameter counts, serialisation, errors."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lrwa.errors import LrwaError
from lrwa.models import build_model, count_parameters, model_names
from lrwa.models.wide_resnet import wrn_16_2

SHAPES = [(1, 8, 8, 10), (1, 28, 28, 10), (3, 32, 32, 100)]
FEATURE_DIMS = {
    "lenet5": 84,
    "lenet5-half": 42,
    "resnet18": 512,
    "resnet34": 512,
    "wrn-16-2": 128,
    "wrn-40-2": 128,
}
BATCH = 2


def params(arch: str, channels: int = 3, size: int = 32, classes: int = 10) -> int:
    return count_parameters(build_model(arch, channels, size, classes))


# Every registered model, so that a new one without an expected feature size fails here.
@pytest.mark.parametrize("arch", model_names())
@pytest.mark.parametrize(("channels", "height", "width", "classes"), SHAPES)
def test_shapes_and_features(
    arch: str, channels: int, height: int, width: int, classes: int
) -> None:
    assert arch in FEATURE_DIMS, f"add {arch}'s feature size to FEATURE_DIMS"
    torch.manual_seed(0)
    model = build_model(arch, channels, height, classes).eval()
    x = torch.randn(BATCH, channels, height, width)
    with torch.no_grad():
        logits = model(x)
        logits_too, features = model.forward_with_features(x)
    assert logits.shape == (BATCH, classes)
    assert features.shape == (BATCH, FEATURE_DIMS[arch])
    assert model.feature_dim == FEATURE_DIMS[arch]
    torch.testing.assert_close(logits_too, logits, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["lenet5", "lenet5-half"])
def test_lenet_has_no_batchnorm(arch: str) -> None:
    model = build_model(arch, 1, 28, 10)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_relative_sizes() -> None:
    assert params("lenet5-half", 1, 28) < params("lenet5", 1, 28)
    assert params("resnet34") > params("resnet18")
    assert params("wrn-40-2") > params("wrn-16-2")


@pytest.mark.parametrize(
    ("arch", "expected", "tolerance"),
    [("resnet18", 11.17e6, 0.01), ("wrn-40-2", 2.2e6, 0.03), ("wrn-16-2", 0.70e6, 0.03)],
)
def test_cifar10_parameter_counts(arch: str, expected: float, tolerance: float) -> None:
    assert params(arch) == pytest.approx(expected, rel=tolerance)


@pytest.mark.parametrize("arch", ["lenet5-half", "resnet18", "wrn-16-2"])
def test_state_dict_round_trip(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 3, 32, 10)
    # A training step moves the BatchNorm running statistics off their defaults,
    # so the round trip has buffers worth checking.
    model.train()(torch.randn(4, 3, 32, 32))
    model.eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build_model(arch, 3, 32, 10)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    x = torch.randn(BATCH, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_unknown_arch_names_it_and_the_choices() -> None:
    with pytest.raises(LrwaError, match=r"unknown architecture 'vgg11' \(choose from: lenet5,"):
        build_model("vgg11", 3, 32, 10)


@pytest.mark.parametrize(("arch", "size"), [("lenet5", 3), ("resnet18", 4), ("wrn-16-2", 2)])
def test_image_too_small(arch: str, size: int) -> None:
    with pytest.raises(LrwaError, match=rf"image size {size} is too small"):
        build_model(arch, 1, size, 10)


@pytest.mark.parametrize(("channels", "classes"), [(0, 10), (3, 0)])
def test_bad_channels_or_classes(channels: int, classes: int) -> None:
    with pytest.raises(LrwaError):
        build_model("lenet5", channels, 32, classes)


def test_larger_images_and_odd_sizes() -> None:
    for arch, size in [("lenet5", 64), ("lenet5", 30), ("wrn-16-2", 64), ("resnet18", 36)]:
        model = build_model(arch, 3, size, 7).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size)).shape == (1, 7)


def test_float64_lenet5_half_gradients() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5-half", 1, 8, 10).double()
    x = torch.randn(BATCH, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    logits, features = model.forward_with_features(x)
    assert logits.dtype == features.dtype == torch.float64
    logits.square().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float64
    assert all(p.grad is not None and p.grad.dtype == torch.float64 for p in model.parameters())


def _outputs_under_seeds(model: nn.Module, x: torch.Tensor, seeds: list[int]) -> list[torch.Tensor]:
    outputs = []
    with torch.no_grad():
        for seed in seeds:
            torch.manual_seed(seed)
            outputs.append(model(x))
    return outputs


def test_wide_resnet_dropout_draws_from_torch_rng_only_in_training() -> None:
    torch.manual_seed(0)
    model = wrn_16_2(3, 8, 10, dropout=0.3)
    without_dropout = wrn_16_2(3, 8, 10, dropout=0.0)
    without_dropout.load_state_dict(model.state_dict())
    x = torch.randn(BATCH, 3, 8, 8)

    model.train()
    first, same_seed, other_seed = _outputs_under_seeds(model, x, [1, 1, 2])
    torch.testing.assert_close(same_seed, first, rtol=0, atol=0)  # the draw is torch's RNG
    assert (other_seed - first).abs().max() > 1e-3  # another draw, another output
    # The control: the same weights without dropout give one output whatever the seed, so
    # the difference above is dropout's, not BatchNorm's batch statistics'.
    without_dropout.train()
    plain = _outputs_under_seeds(without_dropout, x, [1, 2])
    torch.testing.assert_close(plain[1], plain[0], rtol=0, atol=0)
    assert (first - plain[0]).abs().max() > 1e-3

    # In eval mode dropout is off: the same weights and BatchNorm statistics give one output.
    without_dropout.load_state_dict(model.state_dict())
    model.eval()
    without_dropout.eval()
    evaluated = _outputs_under_seeds(model, x, [1, 2])
    torch.testing.assert_close(evaluated[1], evaluated[0], rtol=0, atol=0)
    torch.testing.assert_close(evaluated[0], without_dropout(x).detach(), rtol=0, atol=0)
