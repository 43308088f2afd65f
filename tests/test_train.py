"""The trainer: reproducible from the seed, resumable mid-epoch bit for bit, loud on NaN."""

import pytest
import torch

from invssl.config import JobConfig
from invssl.errors import JobError
from invssl.train import load_model, train

SMALL = dict(topology="MLP", dataset="chirps", data_params={"n_train": 300, "n_test": 100,
             "sample_rate": 2000, "duration_ms": 250}, val_size=50, n_labeled=20, epochs=2,
             batch_labeled=10, batch_unlabeled=40, lr=0.003, alpha=0.5, beta=0.5)  # fmt: skip


def test_same_seed_same_result_and_seed_matters():
    reports = [[], [], []]
    for out, seed in zip(reports, (0, 0, 1)):
        train(JobConfig(**SMALL, seed=seed), device="cpu", on_epoch=out.append)
    losses = [[r.metrics["loss"] for r in rep] for rep in reports]
    assert losses[0] == losses[1] and losses[0] != losses[2]
    assert [r.epoch for r in reports[0]] == [1, 2]


def _assert_same_model(config, a_checkpoint, b_checkpoint):
    a, b = load_model(config, a_checkpoint), load_model(config, b_checkpoint)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def _stop_and_resume(config, should_stop):
    """Train until ``should_stop``, then resume from the checkpoint; every epoch's report."""
    first = []
    _, partial = train(config, device="cpu", on_epoch=first.append, should_stop=should_stop)
    assert partial is not None
    rest = []
    _, none = train(config, device="cpu", checkpoint=partial, on_epoch=rest.append)
    assert none is None
    return first, rest


def test_stop_and_resume_mid_epoch_is_bit_identical():
    config = JobConfig(**SMALL)
    straight = []
    train(config, device="cpu", on_epoch=straight.append)
    steps = {"n": 0}

    def stop_after_8():
        steps["n"] += 1
        return steps["n"] > 8  # in the middle of epoch 2 (6 steps per epoch)

    first, rest = _stop_and_resume(config, stop_after_8)
    assert [r.epoch for r in first] == [1] and [r.epoch for r in rest] == [2]  # epoch 1 kept
    _assert_same_model(config, straight[-1].checkpoint, rest[-1].checkpoint)
    for key in ("loss", "ce", "recon", "entropy", "val_acc", "test_acc"):
        assert rest[-1].metrics[key] == straight[-1].metrics[key], key


def test_stop_at_an_epoch_boundary_resumes_bit_identical():
    config = JobConfig(**SMALL)
    straight = []
    train(config, device="cpu", on_epoch=straight.append)
    first = []
    # The stop request arrives as epoch 1 is reported, before epoch 2 has taken a step.
    _, partial = train(config, device="cpu", on_epoch=first.append, should_stop=lambda: bool(first))
    assert [r.epoch for r in first] == [1] and partial is not None
    rest = []
    train(config, device="cpu", checkpoint=partial, on_epoch=rest.append)
    assert [r.epoch for r in rest] == [2]
    _assert_same_model(config, straight[-1].checkpoint, rest[-1].checkpoint)
    assert rest[-1].metrics["loss"] == straight[-1].metrics["loss"]


def test_every_stop_point_resumes_bit_identical():
    config = JobConfig(**{**SMALL, "steps_per_epoch": 2})
    straight = []
    train(config, device="cpu", on_epoch=straight.append)
    k = 0
    while True:
        k += 1
        calls = {"n": 0}

        def stop_at_call_k():  # called only within this iteration
            calls["n"] += 1  # noqa: B023
            return calls["n"] >= k  # noqa: B023

        first = []
        _, partial = train(config, device="cpu", on_epoch=first.append, should_stop=stop_at_call_k)
        if partial is None:
            break
        rest = []
        train(config, device="cpu", checkpoint=partial, on_epoch=rest.append)
        assert [r.epoch for r in first + rest] == [1, 2], k
        _assert_same_model(config, straight[-1].checkpoint, rest[-1].checkpoint)
        assert [r.metrics["loss"] for r in first + rest] == [r.metrics["loss"] for r in straight], k
    assert k > 4  # every step and both boundaries were tried


def test_non_finite_loss_names_epoch_and_step():
    config = JobConfig(**{**SMALL, "lr": 1e30, "alpha": 0.0, "beta": 1.0})
    with pytest.raises(JobError, match=r"loss became (nan|inf) at epoch 1, step \d+"):
        train(config, device="cpu")
