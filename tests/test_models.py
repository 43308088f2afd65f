"""Topologies by name: every one builds for images and signals, trains through the inversion, and
the inhibitor variants are exactly positively homogeneous."""

import pytest
import torch
from torch import nn

from invssl import models
from invssl.errors import UnknownNameError
from invssl.inversion import reconstruct

K = 7  # not 10, so a hard-wired class count would show
IMAGE_NAMES = [n for n in models.names() if n not in ("Audio1D", "MLP")]
U_NAMES = ["SmallUCNN", "LargeUCNN", "UResnet2-32", "UResnet3-16", "UConvSmall"]
SIGNAL_SHAPES = {"Audio1D": (1, 8000)}


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def cases():
    for name in IMAGE_NAMES:
        for shape in [(1, 28, 28), (3, 32, 32), (1, 40)]:
            yield name, shape
    yield "Audio1D", (1, 8000)
    for shape in [(1, 28, 28), (1, 40), (12,)]:
        yield "MLP", shape


def case_id(value):
    return "x".join(map(str, value)) if isinstance(value, tuple) else value


@pytest.mark.parametrize(("name", "shape"), list(cases()), ids=case_id)
def test_builds_forwards_and_trains_through_the_inversion(name, shape):
    torch.manual_seed(0)
    model = models.build(name, shape, K)
    if name != "MLP":
        conv_cls = nn.Conv1d if len(shape) == 2 else nn.Conv2d
        convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        assert convs and all(isinstance(m, conv_cls) for m in convs)
    x = torch.randn(2, *shape)
    logits, x_hat = reconstruct(model, x)
    assert logits.shape == (2, K)
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()
    # double backpropagation: the reconstruction loss must reach every weight
    (logits.logsumexp(1).mean() + (x - x_hat).pow(2).mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0


def test_exactly_the_inhibitor_rows_are_bias_free():
    for row in models.describe((1, 28, 28), K):
        assert row["bias_free"] == (row["name"] in U_NAMES)


@pytest.mark.parametrize("shape", [(2, 12, 12), (2, 16)], ids=["2d", "1d"])
@pytest.mark.parametrize("name", U_NAMES + ["UResnet1-4"])
def test_inhibitor_nets_are_positively_homogeneous(name, shape, float64):
    torch.manual_seed(0)
    model = models.build(name, shape, K)
    assert models.is_bias_free(model)
    x = torch.randn(2, *shape)
    f = model(x)
    for c in (2.5, 0.3):
        assert torch.allclose(model(c * x), c * f, rtol=1e-12, atol=1e-12)
    _, by_logits = reconstruct(model, x, weighting="logits")
    _, by_jacobian = reconstruct(model, x, weighting="bias_free")
    assert torch.allclose(by_logits, by_jacobian, rtol=1e-10, atol=1e-12)
    assert by_logits.abs().max() > 0


def test_plain_nets_have_biases_that_break_homogeneity(float64):
    torch.manual_seed(0)
    model = models.build("SmallCNNmax", (1, 12, 12), K)
    assert not models.is_bias_free(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    x = torch.randn(2, 1, 12, 12)
    assert not torch.allclose(model(2 * x), 2 * model(x), atol=1e-6)


def test_winner_take_all_keeps_the_larger_of_each_channel_pair():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4, 5)
    x[0, 2, 0, 0] = x[0, 3, 0, 0]  # a tie
    out = models.WinnerTakeAll(6)(x)
    for b in range(3):
        for k in range(3):
            for i in range(4):
                for j in range(5):
                    a, c = x[b, 2 * k, i, j], x[b, 2 * k + 1, i, j]
                    assert (out[b, 2 * k, i, j], out[b, 2 * k + 1, i, j]) == ((a, 0.0) if a >= c else (0.0, c))
    with pytest.raises(ValueError, match="even"):
        models.WinnerTakeAll(5)


@pytest.mark.parametrize(
    ("name", "pool"),
    [
        ("SmallCNNmean", nn.AvgPool2d),
        ("LargeCNNmax", nn.MaxPool2d),
        ("Resnet1-4mean", nn.AvgPool2d),
        ("Resnet1-4max", nn.MaxPool2d),
        ("SmallUCNN", nn.MaxPool2d),
        ("UResnet1-4", nn.MaxPool2d),
    ],
)
def test_pooling_follows_the_variant(name, pool):
    model = models.build(name, (1, 16, 16), K)
    pools = [m for m in model.modules() if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))]
    assert len(pools) == 2 and all(isinstance(m, pool) for m in pools)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_unknown_name_lists_valid_names_and_the_resnet_pattern():
    with pytest.raises(UnknownNameError) as info:
        models.build("VGG16", (1, 28, 28), K)
    assert isinstance(info.value, ValueError)
    for name in models.names():
        assert name in str(info.value)
    assert "ResnetD-W" in str(info.value)


def test_names_are_the_paper_rows_then_convsmall_audio_and_mlp():
    names = models.names()
    assert len(names) == len(set(names)) == 17
    assert names[12:] == ["ConvSmallmean", "ConvSmallmax", "UConvSmall", "Audio1D", "MLP"]
    for depth, width in [(2, 32), (3, 16)]:
        assert {f"Resnet{depth}-{width}mean", f"Resnet{depth}-{width}max", f"UResnet{depth}-{width}"} <= set(names)


@pytest.mark.parametrize("name", models.names() + ["Resnet5-12max"])
def test_names_match_case_insensitively(name):
    assert models.canonical(name.upper()) == name
    assert models.canonical(name.lower()) == name
    shape = SIGNAL_SHAPES.get(name, (1, 8, 8))
    a, b = models.build(name.swapcase(), shape, K), models.build(name, shape, K)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]


@pytest.mark.parametrize(
    ("name", "depth", "width", "bias_free"),
    [("Resnet1-8max", 1, 8, False), ("resnet4-6MEAN", 4, 6, False), ("UResnet3-2", 3, 2, True)],
)
def test_parametric_resnet_has_depth_blocks_per_stage(name, depth, width, bias_free):
    model = models.build(name, (3, 8, 8), K)
    for i, w in enumerate((width, 2 * width, 4 * width), start=1):
        blocks = list(getattr(model, f"stage{i}"))
        assert len(blocks) == depth and all(isinstance(b, models.ResidualBlock) for b in blocks)
        assert all(b.conv2.out_channels == w for b in blocks)
    assert sum(isinstance(m, models.ResidualBlock) for m in model.modules()) == 3 * depth
    assert models.is_bias_free(model) == bias_free
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, K)


@pytest.mark.parametrize(
    "name",
    ["Resnet2-32", "UResnet2-32max", "Resnet0-8mean", "Resnet2-0max", "UResnet2-7", "Resnet2-32avg", "Resnet-2-32max"],
)
def test_malformed_resnet_names_are_unknown(name):
    with pytest.raises(UnknownNameError):
        models.canonical(name)


@pytest.mark.parametrize("name", ["Resnet16-8mean", "UResnet16-8"])
def test_deep_residual_trunk_keeps_its_scale_without_batch_norm(name):
    # 48 blocks: with unscaled branches the trunk's variance would double per block
    torch.manual_seed(0)
    model = models.build(name, (1, 16, 16), K)
    seen = {}
    model.stem.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", o))
    model.stage3.register_forward_hook(lambda m, i, o: seen.__setitem__("stage3", o))
    with torch.no_grad():
        model(torch.randn(8, 1, 16, 16))
    ratio = seen["stage3"].std() / seen["stem"].std()
    assert 0.1 < ratio < 10


def test_audio1d_rejects_signals_shorter_than_its_strides():
    length = models.AUDIO1D_MIN_LENGTH
    model = models.build("Audio1D", (1, length), K)
    assert model(torch.randn(2, 1, length)).shape == (2, K)
    with pytest.raises(ValueError, match=str(length)):
        models.build("Audio1D", (1, length - 1), K)
    with pytest.raises(ValueError, match=r"\(C, L\)"):
        models.build("Audio1D", (1, 28, 28), K)


def test_audio1d_uses_dropout_only_in_training():
    torch.manual_seed(0)
    model = models.build("audio1d", (1, 8000), K)
    x = torch.randn(2, 1, 8000)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("shape", [(1, 3, 3), (1, 28, 2), (1, 3), (784,), (1, 2, 28, 28)])
def test_image_topologies_reject_unusable_shapes(shape):
    with pytest.raises(ValueError):
        models.build("SmallCNNmax", shape, K)


def test_describe_counts_parameters_of_what_build_returns():
    rows = models.describe((3, 32, 32), K)
    assert [r["name"] for r in rows] == models.names()
    for row in rows:
        if row["name"] == "Audio1D":
            assert row["params"] is None
            continue
        model = models.build(row["name"], (3, 32, 32), K)
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["bias_free"] == models.is_bias_free(model)
    assert models.describe((1, 8000), K)[models.names().index("Audio1D")]["params"] > 0


def test_inhibitor_variants_keep_the_plain_widths():
    for plain, u in [("SmallCNNmax", "SmallUCNN"), ("LargeCNNmean", "LargeUCNN"), ("Resnet2-32max", "UResnet2-32")]:
        a, b = models.build(plain, (1, 16, 16), K), models.build(u, (1, 16, 16), K)
        assert [p.shape for n, p in a.named_parameters() if not n.endswith("bias")] == [p.shape for p in b.parameters()]
