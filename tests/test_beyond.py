"""Learned loss weights (one-step look-ahead) and training without labels (alpha = 0)."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train import SMALL, _stop_and_resume
from torch import nn

from invssl.clustering import contingency, matched_accuracy, matching, nmi
from invssl.config import JobConfig
from invssl.inversion import ssl_loss
from invssl.lookahead import hypergradient, term_gradients
from invssl.train import train

LR = 0.5  # large, so that the look-ahead moves w' far enough for curvature to matter


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x_l, y_l = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    x_u = torch.randn(7, 6, dtype=torch.float64)
    x_a, y_a = torch.randn(5, 6, dtype=torch.float64), torch.tensor([2, 0, 1, 1, 0])
    return model, x_l, y_l, x_u, x_a, y_a


def _ce_after_step(model, x_l, y_l, x_u, x_a, y_a, alpha, beta):
    """CE(w'(alpha, beta)) on the look-ahead batch, by plain autograd: the oracle."""
    params = list(model.parameters())
    total = ssl_loss(model, x_l, y_l, x_u, alpha=alpha, beta=beta).total
    grads = torch.autograd.grad(total, params)
    ahead = {n: p - LR * g for (n, p), g in zip(model.named_parameters(), grads)}
    logits = torch.func.functional_call(model, ahead, (x_a,))
    return F.cross_entropy(logits, y_a).item()


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (0.3, 0.8), (0.7, 0.1)])
def test_lookahead_gradient_equals_a_finite_difference_of_ce_after_the_step(alpha, beta):
    model, x_l, y_l, x_u, x_a, y_a = _tiny()
    terms = ssl_loss(model, x_l, y_l, x_u, alpha=alpha, beta=beta)
    g = term_gradients(terms, list(model.parameters()))
    d_alpha, d_beta = hypergradient(model, g, alpha, beta, LR, x_a, y_a)
    eps = 1e-6
    fd_alpha = (
        _ce_after_step(model, x_l, y_l, x_u, x_a, y_a, alpha + eps, beta)
        - _ce_after_step(model, x_l, y_l, x_u, x_a, y_a, alpha - eps, beta)
    ) / (2 * eps)
    fd_beta = (
        _ce_after_step(model, x_l, y_l, x_u, x_a, y_a, alpha, beta + eps)
        - _ce_after_step(model, x_l, y_l, x_u, x_a, y_a, alpha, beta - eps)
    ) / (2 * eps)
    assert abs(d_alpha) > 1e-4 and abs(d_beta) > 1e-4  # a real signal, not two zeros agreeing
    assert d_alpha == pytest.approx(fd_alpha, rel=1e-5, abs=1e-9)
    assert d_beta == pytest.approx(fd_beta, rel=1e-5, abs=1e-9)


def test_term_gradients_recombine_into_the_loss_gradient():
    model, x_l, y_l, x_u, _, _ = _tiny(1)
    terms = ssl_loss(model, x_l, y_l, x_u, alpha=0.4, beta=0.6)
    g = term_gradients(terms, list(model.parameters()))
    whole = torch.autograd.grad(terms.total, list(model.parameters()))
    from invssl.lookahead import combine

    for a, b in zip(combine(g, 0.4, 0.6), whole):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


LEARNED = {
    **SMALL,
    "alpha": {"kind": "learned", "init": 0.5, "lr": 0.05},
    "beta": {"kind": "learned", "init": 0.3, "lr": 0.05},
}


def test_learned_weights_move_are_recorded_and_resume_bit_for_bit():
    config = JobConfig(**LEARNED, collapse_patience=0)
    straight = []
    train(config, device="cpu", on_epoch=straight.append)
    a1, b1 = straight[0].metrics["alpha"], straight[0].metrics["beta"]
    assert 0 < a1 < 1 and 0 < b1 < 1 and (a1, b1) != (0.5, 0.3)  # they moved, inside (0, 1)
    steps = {"n": 0}

    def stop_after_8():
        steps["n"] += 1
        return steps["n"] > 8  # mid epoch 2: the weights' optimiser state must travel too

    first, rest = _stop_and_resume(config, stop_after_8)
    for key in ("alpha", "beta", "loss", "val_acc"):
        assert rest[-1].metrics[key] == straight[-1].metrics[key], key


def test_fixed_weights_record_no_alpha_beta_curve():
    metrics, _ = train(JobConfig(**SMALL, collapse_patience=0), device="cpu")
    assert "alpha" not in metrics and "loss" in metrics


def test_clustering_scores_against_hand_counts():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([2, 2, 1, 0, 0, 1, 1, 1])  # cluster 2 = class 0, 0 = 1, 1 = 2 (one miss)
    table = contingency(pred, y, 3)
    assert table.tolist() == [[0, 2, 0], [1, 0, 3], [2, 0, 0]]
    mapping = matching(table)
    assert mapping.tolist() == [1, 2, 0] and matched_accuracy(pred, y, mapping) == 7 / 8
    # NMI by hand: p(cluster, class) = table / 8.
    p = np.array(table) / 8
    pc, pk = p.sum(1), p.sum(0)
    mi = sum(p[i, j] * math.log(p[i, j] / (pc[i] * pk[j])) for i in range(3) for j in range(3) if p[i, j])
    h = lambda q: -sum(v * math.log(v) for v in q if v)  # noqa: E731
    assert nmi(table) == pytest.approx(mi / ((h(pc) + h(pk)) / 2), rel=1e-12)
    assert nmi(contingency(torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 1]), 2)) == 1.0
    assert nmi(contingency(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 0, 1]), 2)) == 0.0


def test_no_labels_needs_alpha_zero():
    with pytest.raises(ValueError, match="alpha must be 0"):
        JobConfig(**{**SMALL, "n_labeled": 0})
    with pytest.raises(ValueError, match="learned.init"):
        JobConfig(**{**SMALL, "alpha": {"kind": "learned", "init": 1.0}})


def test_a_job_without_labels_trains_on_unlabeled_data_and_scores_clusters():
    config = JobConfig(**{**SMALL, "n_labeled": 0, "alpha": 0.0, "beta": 0.5, "collapse_patience": 0})
    seen = []
    metrics, _ = train(config, device="cpu", on_prepared=seen.append)
    assert len(seen[0].x_lab) == 0 and len(seen[0].split.labeled) == 0
    assert "ce" not in metrics and metrics["recon"] > 0  # absent, not a flat 0
    for key in ("val_acc", "test_acc", "val_nmi", "test_nmi"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_cli_runs_a_sweep_without_labels_end_to_end(tmp_path):
    (tmp_path / "cluster.yaml").write_text(
        "name: cluster\n"
        "data: {dataset: chirps, val_size: 50, params: {n_train: 300, n_test: 100,"
        " sample_rate: 2000, duration_ms: 250}}\n"
        "train: {epochs: 2, batch_unlabeled: 40, collapse_patience: 0}\n"
        "grid: {topology: [MLP], n_labeled: [0], alpha: [0], beta: [0.5], seed: [0]}\n"
    )
    db = f"sqlite:///{tmp_path / 'c.db'}"

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "invssl", *args, "--db", db], cwd=tmp_path, capture_output=True, text=True
        )

    out = run("sweep", "cluster.yaml", "--quiet")
    assert out.returncode == 0, out.stderr
    shown = run("jobs", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    import json

    jobs = json.loads(shown.stdout)
    assert [(j["n_labeled"], j["status"]) for j in jobs] == [(0, "done")]
    report = run("report", "--rows", "n_labeled", "--cols", "beta", "--value", "test_nmi", "--format", "csv")
    assert report.returncode == 0, report.stderr
    assert "test_nmi" in report.stdout
    cells = report.stdout.splitlines()
    assert cells[0].startswith("n_labeled,beta,metric,mean") and cells[1].startswith("0,0.5,test_nmi,")
    shown = run("show", jobs[0]["key"][:10])
    assert shown.returncode == 0 and "val_nmi" in shown.stdout and "test_nmi" in shown.stdout


def test_balanced_entropy_is_mean_entropy_minus_entropy_of_the_mean_by_hand():
    from invssl.clustering import marginal_entropy

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0], [-2.0, 0.5, 4.0]], dtype=torch.float64)
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    h = lambda q: -(q * np.log(q)).sum(-1)  # noqa: E731
    assert marginal_entropy(logits).item() == pytest.approx(h(p.mean(0)), rel=1e-12)
    model, x_l, y_l, x_u, _, _ = _tiny(2)
    per_input = ssl_loss(model, x_l, y_l, x_u, alpha=0.2, beta=0.3)
    balanced = ssl_loss(model, x_l, y_l, x_u, alpha=0.2, beta=0.3, entropy_form="balanced")
    assert balanced.entropy.item() == pytest.approx(
        per_input.entropy.item() - marginal_entropy(per_input.logits[len(x_l) :]).item(), rel=1e-12
    )
    assert balanced.total.item() == pytest.approx(
        0.2 * balanced.ce.item() + 0.8 * (0.3 * balanced.recon.item() + 0.7 * balanced.entropy.item())
    )
    # One class for every input: the per-input form's minimum (0), no longer the balanced one's.
    one_class = torch.tensor([[9.0, 0.0, 0.0]] * 4, dtype=torch.float64)
    spread = torch.tensor([[9.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0], [9.0, 0, 0]], dtype=torch.float64)
    from invssl.inversion import entropy

    balanced_e = lambda z: (entropy(z).mean() - marginal_entropy(z)).item()  # noqa: E731
    assert balanced_e(spread) < balanced_e(one_class) - 0.9
