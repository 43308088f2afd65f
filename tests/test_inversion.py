"""The inverse A[x]^T f(x) and the SSL loss against independent oracles (explicit Jacobians,
hand-computed losses, finite differences)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

from invssl.inversion import (
    distance_per_input,
    entropy,
    reconstruct,
    reconstruct_layers,
    ssl_loss,
)
from invssl.schedules import make_schedule

TOL = 1e-5


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class Residual(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class CNN2d(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = pool
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 2 * 2, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


class ChannelWTA(nn.Module):
    """Bias-free, positively homogeneous nonlinearity: unit passes if it beats its partner."""

    def forward(self, x):
        a, b = x[:, 0::2], x[:, 1::2]
        return torch.cat([a * (a >= b), b * (b > a)], dim=1)


def nets():
    torch.manual_seed(0)
    return {
        "mlp": (nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), (6,)),
        "cnn_max": (CNN2d(nn.MaxPool2d(2)), (2, 8, 8)),
        "cnn_mean": (CNN2d(nn.AvgPool2d(2)), (2, 8, 8)),
        "residual": (nn.Sequential(nn.Linear(5, 7), Residual(7), nn.ReLU(), nn.Linear(7, 3)), (5,)),
        "conv1d": (
            nn.Sequential(nn.Conv1d(1, 4, 5, stride=2), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(4 * 3, 3)),
            (1, 16),
        ),
        "bias_free": (
            nn.Sequential(
                nn.Linear(6, 8, bias=False),
                ChannelWTA(),
                nn.Linear(8, 6, bias=False),
                nn.ReLU(),
                nn.Linear(6, 4, bias=False),
            ),
            (6,),
        ),
        "gelu_layernorm": (nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3)), (6,)),
    }


def per_example_jacobian(model, x):
    """(B, K, D) Jacobian of each example's logits with respect to that example's input."""
    rows = []
    for xi in x:
        j = jacobian(lambda v: model(v.unsqueeze(0)).squeeze(0), xi)  # (K, *S)
        rows.append(j.reshape(j.shape[0], -1))
    return torch.stack(rows)


@pytest.mark.parametrize("name", list(nets()))
def test_reconstruction_is_jacobian_transpose_times_logits(name):
    model, shape = nets()[name]
    x = torch.randn(3, *shape)
    J = per_example_jacobian(model, x)  # (B, K, D)
    f = model(x).detach()  # (B, K)
    logits, x_hat = reconstruct(model, x)
    assert torch.allclose(logits, f, atol=TOL)
    expected = torch.einsum("bkd,bk->bd", J, f).reshape(x.shape)
    assert x_hat.shape == x.shape
    assert (x_hat - expected).abs().max() < TOL
    # the softmax weighting is J^T softmax(f)
    _, x_soft = reconstruct(model, x, weighting="softmax")
    expected_soft = torch.einsum("bkd,bk->bd", J, f.softmax(-1)).reshape(x.shape)
    assert (x_soft - expected_soft).abs().max() < TOL
    # the bias-free form is J^T J x
    _, x_bf = reconstruct(model, x, weighting="bias_free")
    Jx = torch.einsum("bkd,bd->bk", J, x.flatten(1))
    expected_bf = torch.einsum("bkd,bk->bd", J, Jx).reshape(x.shape)
    assert (x_bf - expected_bf).abs().max() < TOL


def test_bias_free_network_is_its_own_linearisation():
    model, shape = nets()["bias_free"]
    x = torch.randn(4, *shape)
    J = per_example_jacobian(model, x)
    assert torch.allclose(model(x), torch.einsum("bkd,bd->bk", J, x), atol=1e-10)
    _, a = reconstruct(model, x)
    _, b = reconstruct(model, x, weighting="bias_free")
    assert torch.allclose(a, b, atol=1e-10)


def test_a_network_with_biases_is_not_bias_free():
    model, shape = nets()["mlp"]
    x = torch.randn(4, *shape)
    _, a = reconstruct(model, x)
    _, b = reconstruct(model, x, weighting="bias_free")
    assert (a - b).abs().max() > 1e-3  # the oracle above would miss a swapped implementation


def test_reconstruction_gradient_matches_finite_differences():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(2, 3)
    names = [n for n, _ in model.named_parameters()]

    class Functional(nn.Module):
        def __init__(self, params):
            super().__init__()
            self.params = params

        def forward(self, v):
            return torch.func.functional_call(model, dict(zip(names, self.params)), (v,))

    def loss(*ps):
        _, x_hat = reconstruct(Functional(ps), x)
        return distance_per_input(x, x_hat).mean()

    start = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(loss, start)


def test_no_graph_under_no_grad_and_no_hooks_left():
    model, shape = nets()["cnn_max"]
    x = torch.randn(2, *shape)
    with torch.no_grad():
        logits, x_hat = reconstruct(model, x)
        layers = reconstruct_layers(model, x, ["conv1", "output"])
    assert not logits.requires_grad and not x_hat.requires_grad
    assert all(not v.requires_grad for v in layers.values())
    assert not x.requires_grad
    assert all(not m._forward_hooks for m in model.modules())
    logits, x_hat = reconstruct(model, x)
    assert x_hat.requires_grad and x_hat.grad_fn is not None


def test_reconstruct_layers_matches_per_layer_jacobians():
    model, shape = nets()["mlp"]
    x = torch.randn(2, *shape)
    got = reconstruct_layers(model, x, ["1", "3", "output"])
    for name, upto in (("1", 2), ("3", 4), ("output", 5)):
        sub = model[:upto]
        J = per_example_jacobian(sub, x)
        z = sub(x).detach()
        assert (got[name] - torch.einsum("bkd,bk->bd", J, z)).abs().max() < TOL
    with pytest.raises(ValueError, match="no submodule named 'nope'"):
        reconstruct_layers(model, x, ["nope"])


def hand_loss(model, xl, yl, xu, alpha, beta):
    """The loss written out from docs/method.md, section 2, with an explicit Jacobian."""
    x = torch.cat([xl, xu])
    f = model(x)
    J = per_example_jacobian(model, x)
    x_hat = torch.einsum("bkd,bk->bd", J, f.detach())
    R = ((x.flatten(1) - x_hat) ** 2).sum(1).div(x[0].numel()).mean()
    p = f[len(xl) :].softmax(-1)
    E = -(p * p.log()).sum(1).mean()
    ce = -f[: len(xl)].log_softmax(-1)[torch.arange(len(xl)), yl].mean()
    return alpha * ce + (1 - alpha) * (beta * R + (1 - beta) * E), ce, R, E


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (0.2, 0.9), (0.0, 1.0), (0.7, 0.0), (0.0, 0.0)])
def test_ssl_loss_matches_hand_computation(alpha, beta):
    model, shape = nets()["cnn_mean"]
    xl, xu = torch.randn(3, *shape), torch.randn(4, *shape)
    yl = torch.tensor([0, 4, 2])
    terms = ssl_loss(model, xl, yl, xu, alpha=alpha, beta=beta)
    total, ce, R, E = hand_loss(model, xl, yl, xu, alpha, beta)
    assert abs(terms.total.item() - total.item()) < TOL
    assert abs(terms.ce.item() - ce.item()) < TOL
    if beta > 0:
        assert abs(terms.recon.item() - R.item()) < TOL
    if beta < 1:
        assert abs(terms.entropy.item() - E.item()) < TOL
    assert terms.logits.shape == (7, 5)


def test_alpha_one_is_cross_entropy_and_skips_unlabeled():
    model, shape = nets()["mlp"]
    xl, yl = torch.randn(5, *shape), torch.tensor([0, 1, 2, 3, 0])
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    terms = ssl_loss(model, xl, yl, torch.randn(50, *shape), alpha=1.0, beta=0.5)
    handle.remove()
    assert calls == [5]
    assert torch.allclose(terms.total, F.cross_entropy(model(xl), yl))
    assert terms.recon.item() == 0 and terms.entropy.item() == 0


def test_uniform_predictions_have_entropy_log_c():
    assert torch.allclose(entropy(torch.zeros(3, 7)), torch.full((3,), math.log(7)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 7))
    nn.init.zeros_(model[1].weight), nn.init.zeros_(model[1].bias)
    t = ssl_loss(model, torch.randn(0, 6), torch.zeros(0, dtype=torch.long), torch.randn(4, 6), alpha=0.0, beta=0.0)
    assert abs(t.entropy.item() - math.log(7)) < 1e-12 and abs(t.total.item() - math.log(7)) < 1e-12


def test_empty_unlabeled_batch_is_supervised_plus_reconstruction():
    model, shape = nets()["mlp"]
    xl, yl = torch.randn(4, *shape), torch.tensor([0, 1, 2, 3])
    t = ssl_loss(model, xl, yl, torch.randn(0, *shape), alpha=0.6, beta=0.5)
    f = model(xl)
    J = per_example_jacobian(model, xl)
    R = ((xl - torch.einsum("bkd,bk->bd", J, f.detach())) ** 2).mean(1).mean()
    expected = 0.6 * F.cross_entropy(f, yl) + 0.4 * 0.5 * R
    assert abs(t.total.item() - expected.item()) < TOL and t.entropy.item() == 0


def test_cosine_distance_and_layer_weights():
    model, shape = nets()["mlp"]
    xl, yl, xu = torch.randn(2, *shape), torch.tensor([1, 2]), torch.randn(3, *shape)
    x = torch.cat([xl, xu])
    t = ssl_loss(model, xl, yl, xu, alpha=0.0, beta=1.0, distance="cosine")
    _, x_hat = reconstruct(model, x)
    assert abs(t.total.item() - (1 - F.cosine_similarity(x, x_hat, dim=1)).mean().item()) < TOL
    weights = {"1": 0.3, "output": 0.7}
    t = ssl_loss(model, xl, yl, xu, alpha=0.0, beta=1.0, layer_weights=weights)
    hats = reconstruct_layers(model, x, list(weights))
    expected = sum(g * ((x - hats[n]) ** 2).mean(1).mean() for n, g in weights.items())
    assert abs(t.recon.item() - expected.item()) < TOL


def test_ssl_loss_trains_through_double_backprop():
    model, shape = nets()["cnn_max"]
    xl, yl, xu = torch.randn(2, *shape), torch.tensor([0, 1]), torch.randn(2, *shape)
    ssl_loss(model, xl, yl, xu, alpha=0.0, beta=1.0).total.backward()
    # the reconstruction term alone must reach every weight
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(alpha=1.5, beta=0.5), "alpha must lie in"),
        (dict(alpha=0.5, beta=-0.1), "beta must lie in"),
        (dict(alpha=float("nan"), beta=0.5), "alpha must lie in"),
        (dict(alpha=0.5, beta=0.5, distance="l1"), "distance must be one of"),
        (dict(alpha=0.5, beta=0.5, weighting="x"), "weighting must be one of"),
    ],
)
def test_bad_weights_raise_value_error_naming_the_argument(kwargs, match):
    model, shape = nets()["mlp"]
    with pytest.raises(ValueError, match=match):
        ssl_loss(model, torch.randn(2, *shape), torch.tensor([0, 1]), torch.randn(2, *shape), **kwargs)


def test_bad_shapes_and_labels():
    model, shape = nets()["mlp"]
    xl, xu = torch.randn(2, *shape), torch.randn(2, *shape)
    with pytest.raises(ValueError, match="x_unlabeled"):
        ssl_loss(model, xl, torch.tensor([0, 1]), torch.randn(2, 7), alpha=0.5, beta=0.5)
    with pytest.raises(ValueError, match="y_labeled: shape"):
        ssl_loss(model, xl, torch.tensor([0, 1, 2]), xu, alpha=0.5, beta=0.5)
    with pytest.raises(ValueError, match=r"y_labeled: labels must lie in \[0, 3\]"):
        ssl_loss(model, xl, torch.tensor([0, 4]), xu, alpha=0.5, beta=0.5)
    with pytest.raises(ValueError, match="x_labeled: empty batch"):
        ssl_loss(model, xl[:0], torch.tensor([], dtype=torch.long), xu, alpha=0.5, beta=0.5)


def test_schedules():
    ramp = make_schedule({"kind": "ramp", "start": 0.0, "end": 0.5, "until": 10})
    assert [ramp(t) for t in (0, 5, 10, 20)] == [0.0, 0.25, 0.5, 0.5]
    late = make_schedule({"kind": "ramp", "start": 1.0, "end": 0.0, "until": 4, "since": 2})
    assert [late(t) for t in (0, 2, 3, 4, 9)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    cos = make_schedule({"kind": "cosine", "start": 1.0, "end": 0.0, "until": 2})
    assert cos(0) == 1.0 and abs(cos(1) - 0.5) < 1e-12 and abs(cos(2)) < 1e-12
    step = make_schedule({"kind": "step", "values": [0.9, 0.5, 0.1], "at": [3, 6]})
    assert [step(t) for t in (0, 2.99, 3, 5, 6, 100)] == [0.9, 0.9, 0.5, 0.5, 0.1, 0.1]
    assert make_schedule(0.3)(123) == 0.3
    assert step.knots() == (0.9, 0.5, 0.1)
    with pytest.raises(ValueError):
        make_schedule({"kind": "step", "values": [1, 0], "at": [1, 2]})
    with pytest.raises(ValueError):
        make_schedule({"kind": "ramp", "start": 0, "end": 1, "until": 5, "bogus": 1})


class StridedGrouped(nn.Module):
    """Convolutions with stride, dilation, groups, no bias, and a residual sum."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=2, bias=False)
        self.skip = nn.Conv2d(4, 4, 1, stride=2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        return self.fc((self.skip(h) + self.conv2(h)).relu().flatten(1))


@pytest.fixture
def fast_conv(monkeypatch):
    """Run a function with the oneDNN double-backward path on and off."""
    from invssl import fastconv

    def run(fn, enabled):
        monkeypatch.setattr(fastconv, "FAST_CONV_DEVICES", {"cpu"} if enabled else set())
        return fn()

    return run


@pytest.mark.parametrize("name", ["cnn_max", "cnn_mean", "conv1d", "strided_grouped"])
@pytest.mark.parametrize("kwargs", [{}, {"weighting": "softmax"}, {"layer_weights": {"conv1": 0.5, "output": 1.0}}])
def test_native_conv_double_backward_matches_autograd(fast_conv, name, kwargs):
    if name == "strided_grouped":
        torch.manual_seed(0)
        model, shape = StridedGrouped(), (2, 8, 8)
    else:
        model, shape = nets()[name]
    if "layer_weights" in kwargs and name == "conv1d":
        kwargs = {"layer_weights": {"0": 0.5, "output": 1.0}}
    xl, xu = torch.randn(3, *shape), torch.randn(4, *shape)
    yl = torch.tensor([0, 1, 2])
    params = list(model.parameters())

    def step():
        terms = ssl_loss(model, xl, yl, xu, alpha=0.3, beta=0.6, **kwargs)
        grads = torch.autograd.grad(terms.total, params, create_graph=True)
        # one order further, as learning the weights through an update step would need
        third = torch.autograd.grad(sum((g**2).sum() for g in grads), params)
        return terms.total.detach(), grads, third

    plain, fast = fast_conv(step, False), fast_conv(step, True)
    assert torch.equal(plain[0], fast[0])  # the loss value is bit for bit autograd's
    for a, b in zip(plain[1] + plain[2], fast[1] + fast[2]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert torch._C._len_torch_function_stack() == 0


def test_native_conv_path_skips_the_input_leaf_gradient(fast_conv, monkeypatch):
    """After x_hat exists, no backward computes the gradient of the internal input leaf."""
    from invssl import fastconv

    model, shape = nets()["cnn_max"]
    x = torch.randn(3, *shape)
    masks = []  # output masks of conv1's kernel calls (conv1 is the one reading the input)
    original = fastconv._conv_backward

    def spy(grad_out, inp, weight, *args):
        if weight.shape[1] == shape[0]:
            masks.append(tuple(args[-1][:2]))
        return original(grad_out, inp, weight, *args)

    monkeypatch.setattr(fastconv, "_conv_backward", spy)

    def step():
        _, x_hat = reconstruct(model, x)
        assert masks == [(True, False)]  # the inversion: input gradient only, no weights
        masks.clear()
        distance_per_input(x, x_hat).mean().backward()
        return list(masks)

    last = fast_conv(step, True)
    assert last and all(mask == (False, True) for mask in last)
