"""The training recipe: knobs in the job's identity, input scaling, the learning-rate curve,
collapse detection, and the migration that gives older jobs the recipe they ran with."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone

import pytest
import torch
from alembic import command
from sqlalchemy import insert, select
from torch import nn

from invssl import data, health, models
from invssl.config import JobConfig
from invssl.db import queue
from invssl.db import session as db_session
from invssl.db.models import Job
from invssl.db.session import open_engine
from invssl.schedules import make_schedule
from invssl.train import lr_factor, prepare, train
from tests.test_db import alembic_on
from tests.test_train import SMALL as BASE

STEP_DECAY = {"kind": "step", "values": [1.0, 0.5, 0.1], "at": [1, 2]}


@pytest.mark.parametrize(
    "field, value",
    [
        ("input_scaling", "unit"),
        ("input_scaling", "per_input"),
        ("init", "kaiming"),
        ("lr_warmup", 0.5),
        ("lr_decay", "none"),
        ("lr_decay", STEP_DECAY),
        ("collapse_patience", 0),
        ("lr", 0.01),
        ("topology", "ConvSmallmean"),
    ],
)
def test_each_recipe_knob_changes_the_job_key(field, value):
    base = JobConfig(**BASE)
    changed = JobConfig(**{**BASE, field: value})
    assert changed.key != base.key
    assert changed.identity()[field] == (
        value if not isinstance(value, dict) else changed.model_dump(mode="json")[field]
    )


def test_the_default_recipe():
    job = JobConfig(**BASE)
    assert (job.input_scaling, job.init, job.lr_decay, job.lr_warmup) == ("standardize", "glorot", "cosine", 0.0)


def test_unknown_knob_values_are_refused_by_name():
    for field, value in (("input_scaling", "zscore"), ("init", "orthogonal"), ("lr_warmup", -1)):
        with pytest.raises(ValueError, match=field):
            JobConfig(**{**BASE, field: value})


def test_input_scalings_against_the_raw_values():
    gen = torch.Generator().manual_seed(0)
    raw = torch.rand(50, 2, 6, 6, generator=gen) * torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    mean = raw.mean(dim=(0, 2, 3)).tolist()
    std = raw.std(dim=(0, 2, 3), correction=0).tolist()
    standardised = (raw - torch.tensor(mean).view(1, 2, 1, 1)) / torch.tensor(std).view(1, 2, 1, 1)
    norm = (tuple(mean), tuple(std))
    torch.testing.assert_close(data.scale_inputs(standardised, norm, "unit"), raw)
    assert torch.equal(data.scale_inputs(standardised, norm, "standardize"), standardised)
    per = data.scale_inputs(standardised, norm, "per_input")
    for i in (0, 17, 49):
        expected = (raw[i] - raw[i].mean()) / raw[i].std(correction=0)
        torch.testing.assert_close(per[i], expected)


def test_loaded_mnist_like_images_come_back_in_unit_range(tmp_path):
    pytest.importorskip("torchvision")
    job = JobConfig(
        **{
            **BASE,
            "dataset": "mnist1d",
            "data_params": {"num_samples": 1000},
            "val_size": 100,
            "input_scaling": "per_input",
        }
    )
    prep = prepare(job, torch.device("cpu"))
    flat = prep.x_unl.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(len(flat)), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, correction=0), torch.ones(len(flat)), atol=1e-4, rtol=0)


def test_learning_rate_curve_warm_up_then_steps():
    job = JobConfig(**{**BASE, "epochs": 3, "lr_warmup": 0.5, "lr_decay": STEP_DECAY})
    f = lr_factor(job, n_steps=10)
    # warm-up over 5 steps: (s + 1) / 5, then the step schedule by epoch s / 10
    assert [f(s) for s in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert (f(9), f(10), f(19), f(20), f(29)) == pytest.approx((1.0, 0.5, 0.5, 0.1, 0.1))
    cos = lr_factor(JobConfig(**{**BASE, "epochs": 2}), n_steps=10)
    assert [cos(s) for s in (0, 10, 20)] == pytest.approx([1.0, 0.5, 0.0])
    assert cos(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 20)))


@pytest.mark.parametrize("name", ["ConvSmallmean", "SmallCNNmax", "MLP"])
def test_glorot_and_kaiming_draw_the_weights_each_asks_for(name):
    torch.manual_seed(0)
    glorot = models.build(name, (1, 28, 28), 10, init="glorot")
    torch.manual_seed(0)
    kaiming = models.build(name, (1, 28, 28), 10, init="kaiming")
    layers = [m for m in glorot.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert layer.bias is None or not layer.bias.any()
    assert any(not torch.equal(a, b) for a, b in zip(glorot.parameters(), kaiming.parameters()))


@pytest.mark.parametrize("name, field", [("ConvSmallmean", 24), ("SmallCNNmean", 10)])
def test_receptive_field_before_the_global_pool(name, field):
    # ConvSmall's last spatial map sees 24 pixels across (a whole digit), SmallCNN's 10.
    trunk = models.build(name, (1, 28, 28), 10, init="kaiming")[:-1]
    if name.startswith("SmallCNN"):
        trunk = trunk[:-1]  # SmallCNN ends with a dense layer after the pool
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                m.bias.fill_(1.0)  # every ReLU open
    x = torch.rand(1, 1, 28, 28, requires_grad=True)
    out = trunk(x)  # (1, C, h, w)
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero()
    assert int(rows.max() - rows.min()) + 1 == field


def test_health_of_a_live_and_of_a_dead_network():
    # logits = relu(x) through units (x, -x): each class wins a quarter of random inputs, and
    # every unit is active for some input.
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        net[1].weight.copy_(torch.cat([torch.eye(4), -torch.eye(4)]))
        net[1].bias.zero_()
        net[3].weight.copy_(torch.cat([torch.eye(4), torch.zeros(4, 4)], dim=1))
        net[3].bias.zero_()
    x = torch.randn(400, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with health.tracking_dead_units(net) as tracker:
        pred = net(x).argmax(1)
    live = health.health(pred, 4, tracker)
    assert live["collapsed"] == 0.0 and live["dead_units"] == 0.0 and live["pred_entropy"] > 0.95
    with torch.no_grad():
        net[1].bias.fill_(-1e3)  # every ReLU unit silent: the logits are the last bias
    with health.tracking_dead_units(net) as tracker:
        pred = net(x).argmax(1)
    assert health.health(pred, 4, tracker) == {"pred_entropy": 0.0, "dead_units": 1.0, "collapsed": 1.0}
    # hand-computed: classes predicted 3:1 -> H = -(.75 ln .75 + .25 ln .25) / ln 4
    h = health.prediction_entropy(torch.tensor([0, 0, 0, 1]), 4)
    assert h == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4))


def test_a_collapsed_run_is_flagged_and_stops_early():
    # Entropy minimisation alone (alpha 0, beta 0) at a high rate sends every input to one class
    # within the first epoch.
    config = JobConfig(**{**BASE, "epochs": 6, "lr": 0.3, "alpha": 0.0, "beta": 0.0, "collapse_patience": 2})
    reports = []
    final, _ = train(config, device="cpu", on_epoch=reports.append)
    assert [r.metrics["collapsed"] for r in reports] == [1.0, 1.0]  # stopped after two
    assert reports[-1].metrics["pred_entropy"] == 0.0
    assert final["stopped_collapsed"] == 1.0
    unstopped = []
    train(config.model_copy(update={"collapse_patience": 0, "epochs": 3}), device="cpu", on_epoch=unstopped.append)
    assert len(unstopped) == 3 and "stopped_collapsed" not in unstopped[-1].metrics
    # A network that learns (MNIST-1D, 200 labels, supervised) uses every class.
    healthy = []
    train(
        JobConfig(
            topology="MLP",
            dataset="mnist1d",
            data_params={"num_samples": 2000},
            val_size=200,
            n_labeled=200,
            epochs=2,
            batch_labeled=32,
            alpha=1.0,
        ),
        device="cpu",
        on_epoch=healthy.append,
    )
    assert all(r.metrics["collapsed"] == 0.0 for r in healthy)
    assert all(0.0 <= r.metrics["dead_units"] < 1.0 for r in healthy)


def test_migration_gives_older_jobs_the_recipe_they_ran_with(sqlite_url):
    open_engine(sqlite_url).dispose()
    alembic_on(sqlite_url, command.downgrade, "0001")
    old = JobConfig(**BASE).model_dump(mode="json")
    for k in ("input_scaling", "init", "lr_warmup", "collapse_patience", "entropy"):
        del old[k]
    identity = {k: v for k, v in old.items() if k not in ("data_root", "download", "device")}
    old_key = hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    raw = db_session.make_engine(sqlite_url)
    with raw.begin() as conn:
        conn.execute(
            insert(Job).values(
                key=old_key, config=old, status="done", attempts=1, epochs_done=2, created_at=datetime.now(timezone.utc)
            )
        )
    raw.dispose()
    engine = open_engine(sqlite_url, upgrade=True)
    with engine.connect() as conn:
        row = conn.execute(select(Job.key, Job.config)).one()
    engine.dispose()
    ran = JobConfig(**row.config)
    assert (ran.input_scaling, ran.init, ran.lr_warmup, ran.collapse_patience) == ("standardize", "kaiming", 0.0, 0)
    assert row.key == ran.key != old_key
    # Back down is refused once a job ran with another recipe than the legacy one.
    engine = open_engine(sqlite_url)
    queue.enqueue(
        engine,
        queue.ensure_sweep(engine, "new", {}),
        [(JobConfig(**BASE).key, JobConfig(**BASE).model_dump(mode="json"))],
    )
    engine.dispose()
    with pytest.raises(RuntimeError, match="revision 0001"):
        alembic_on(sqlite_url, command.downgrade, "0001")


def test_a_ramp_up_of_the_unsupervised_weight_is_an_alpha_schedule_from_one():
    ramp = {"kind": "ramp", "start": 1.0, "end": 0.5, "until": 2}
    job = JobConfig(**{**BASE, "alpha": ramp})
    assert job.beta == 0.5  # only a constant alpha = 1 makes beta irrelevant
    alpha = make_schedule(job.alpha)
    # unsupervised weight 1 - alpha: 0 at the start, half of its final 0.5 after one epoch
    assert [1 - alpha(t) for t in (0.0, 1.0, 2.0, 5.0)] == pytest.approx([0.0, 0.25, 0.5, 0.5])
    reports = []
    train(job, device="cpu", on_epoch=reports.append)
    assert reports[0].metrics["recon"] > 0 and reports[0].metrics["entropy"] > 0
