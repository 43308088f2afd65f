"""Reports and figures from a real results database filled through the queue API."""

from __future__ import annotations

import io
import math
import os
import re
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from invssl import plots, report
from invssl.config import JobConfig
from invssl.db import queue, reads
from invssl.db.session import open_engine, open_existing
from invssl.errors import ConfigError, DatabaseError, DataError, UnknownNameError

MNIST = dict(dataset="mnist", epochs=3, val_size=1000)
SSL_RAMP = {"kind": "ramp", "start": 0.0, "end": 0.5, "until": 10}

# (topology, n_labeled, alpha, beta, seed, final val_acc, final test_acc)
FINISHED = [
    # Resnet2-32max, N_L=50: (0.3, 0.5) is best by validation, (0.6, 0.5) by test.
    ("Resnet2-32max", 50, 0.3, 0.5, 0, 0.980, 0.990),
    ("Resnet2-32max", 50, 0.3, 0.5, 1, 0.970, 0.992),
    ("Resnet2-32max", 50, 0.3, 0.5, 2, 0.975, 0.985),
    ("Resnet2-32max", 50, 0.6, 0.5, 0, 0.960, 0.995),
    ("Resnet2-32max", 50, 0.6, 0.5, 1, 0.965, 0.996),
    ("Resnet2-32max", 100, 0.3, 0.5, 0, 0.950, 0.970),
    ("Resnet2-32max", 1000, 1.0, 0.0, 0, 0.990, 0.980),
    ("Resnet2-32max", 1000, 1.0, 0.0, 1, 0.991, 0.982),
    ("Resnet2-32max", 50, 1.0, 0.0, 0, 0.700, 0.720),  # supervised at N_L=50: a Sup50 column
    ("SmallCNNmean", 50, 0.5, 0.5, 0, 0.800, 0.900),
    ("SmallCNNmax", 100, SSL_RAMP, 0.5, 0, 0.850, 0.910),
]
# Not finished: must never reach a table.
RUNNING = ("Resnet2-32max", 50, 0.1, 0.5, 0, 0.999, 0.999)  # claimed, epochs recorded
FAILED = ("Resnet2-32max", 50, 0.9, 0.5, 0)
PENDING = ("LargeCNNmax", 100, 0.5, 0.5, 0)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _cfg(topology, n_labeled, alpha, beta, seed, **extra):
    return JobConfig(topology=topology, n_labeled=n_labeled, alpha=alpha, beta=beta, seed=seed, **{**MNIST, **extra})


def _epoch_metrics(val, test, epochs=3):
    # Earlier epochs are worse; the last epoch equals the final result.
    return [
        {
            "loss": 1.0 / e,
            "ce": 0.5 / e,
            "recon": 0.3 / e,
            "entropy": 0.2 / e,
            "val_acc": val - 0.01 * (epochs - e),
            "test_acc": test - 0.01 * (epochs - e),
            "recon_err": 0.1,
            "lr": 0.01,
            "wall_s": 1.0,
        }
        for e in range(1, epochs + 1)
    ]


def _run_all(engine, sweep_id, plan):
    """Claim every pending job of the sweep and play its plan: (epoch metrics, result, error)."""
    while (claim := queue.claim(engine, worker="test", host="test", pid=os.getpid(), sweep_id=sweep_id)) is not None:
        epochs, result, error = plan.pop(claim.key)
        for epoch, metrics in enumerate(epochs, start=1):
            queue.record_epoch(engine, claim.job_id, claim.attempt, epoch, metrics, None)
        if error:
            queue.fail(engine, claim.job_id, claim.attempt, error)
        elif result is not None:
            queue.finish(engine, claim.job_id, claim.attempt, result)
    assert not plan


def _enqueue(engine, sweep_id, configs):
    queue.enqueue(engine, sweep_id, [(c.key, c.model_dump(mode="json")) for c in configs])


@pytest.fixture(scope="module")
def table_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("table2") / "results.db"
    url = f"sqlite:///{path}"
    engine = open_engine(url)
    sweep_id = queue.ensure_sweep(engine, "table2", {"name": "table2"})
    plan = {}
    for row in FINISHED:
        epochs = _epoch_metrics(row[5], row[6])
        plan[_cfg(*row[:5]).key] = (epochs, epochs[-1], None)
    plan[_cfg(*RUNNING[:5]).key] = (_epoch_metrics(*RUNNING[5:]), None, None)  # stays running
    plan[_cfg(*FAILED).key] = ([], None, "loss became nan at epoch 1, step 3")
    _enqueue(engine, sweep_id, [_cfg(*row[:5]) for row in (*FINISHED, RUNNING, FAILED)])
    _run_all(engine, sweep_id, plan)
    _enqueue(engine, sweep_id, [_cfg(*PENDING)])  # stays pending
    # A second sweep with one job of another topology, to check --sweep filtering.
    other = queue.ensure_sweep(engine, "other", {"name": "other"})
    solo = _cfg("UResnet3-16", 50, 0.4, 0.2, 0)
    _enqueue(engine, other, [solo])
    epochs = _epoch_metrics(0.9, 0.93)
    _run_all(engine, other, {solo.key: (epochs, epochs[-1], None)})
    engine.dispose()
    return url


# --------------------------------------------------------------------------- Table 2
def test_table2_selects_by_validation_and_matches_hand_computation(table_db):
    engine = open_existing(table_db)
    counts = reads.status_counts(engine, sweep="table2")
    assert [counts.get(s, 0) for s in ("done", "running", "failed", "pending")] == [len(FINISHED), 1, 1, 1]
    jobs = report.load_jobs(engine, "table2")
    assert set(jobs["status"]) == {"done"} and len(jobs) == len(FINISHED)

    cells = report.mnist_cells(jobs).set_index(["topology", "column"])
    best = cells.loc[("Resnet2-32max", "N_L=50")]
    # (0.6, 0.5) has the better test accuracy (99.55 vs 98.90) but the worse validation.
    assert (best["alpha"], best["beta"]) == (0.3, 0.5)
    tests = [99.0, 99.2, 98.5]
    assert best["n"] == 3 and best["candidates"] == 2  # the running and failed jobs do not compete
    assert math.isclose(best["mean"], statistics.mean(tests), abs_tol=1e-9)
    assert math.isclose(best["std"], statistics.stdev(tests), abs_tol=1e-9)  # sample std, ddof=1
    assert math.isclose(best["val_mean"], 97.5, abs_tol=1e-9)

    table = report.mnist_table(jobs).set_index("topology")
    assert list(table.index[:12]) == list(report.PAPER_TOPOLOGIES)
    assert list(table.columns) == ["N_L=50", "N_L=100", "Sup50", "Sup1000"]
    assert table.loc["Resnet2-32max", "N_L=50"] == "98.90 ± 0.36 (0.3, 0.5) n=3"
    assert table.loc["Resnet2-32max", "N_L=100"] == "97.00 (0.3, 0.5) n=1"  # one seed: no ±
    assert table.loc["Resnet2-32max", "Sup1000"] == "98.10 ± 0.14 n=2"
    assert table.loc["Resnet2-32max", "Sup50"] == "72.00 n=1"
    assert table.loc["SmallCNNmax", "N_L=100"] == "91.00 (ramp(0>0.5@10), 0.5) n=1"
    assert table.loc["LargeCNNmax", "N_L=100"] == "-"  # pending only
    assert (table.loc["UResnet3-16"] == "-").all()  # finished, but in the other sweep
    assert (table.loc["LargeUCNN"] == "-").all()

    everything = report.mnist_table(report.load_jobs(engine)).set_index("topology")
    assert everything.loc["UResnet3-16", "N_L=50"] == "93.00 (0.4, 0.2) n=1"
    with pytest.raises(report.NoResultsError, match="no finished job on dataset 'cifar10'"):
        report.mnist_table(jobs, dataset="cifar10")


def test_schedule_labels():
    assert report.weight_label(0.5) == 0.5
    assert report.weight_label({"kind": "constant", "value": 1}) == 1.0
    assert report.weight_label({"kind": "cosine", "start": 1, "end": 0.25, "until": 8, "since": 2}) == "cos(1>0.25@2-8)"
    assert report.weight_label({"kind": "step", "values": [0.1, 0.5, 1], "at": [5, 10]}) == "step(0.1>0.5>1@5,10)"


def test_compare_paper_adds_marked_published_rows(table_db):
    jobs = report.load_jobs(open_existing(table_db), "table2")
    table = report.mnist_table(jobs, compare="paper").set_index("topology")
    published = [r for r in table.index if report.PUBLISHED_MARK in r]
    assert len(published) == 7
    assert table.loc[f"Resnet2-32max (paper) {report.PUBLISHED_MARK}", "N_L=50"] == "99.14"
    assert table.loc[f"Ladder network {report.PUBLISHED_MARK}", "N_L=100"] == "98.94"
    assert table.loc[f"CatGAN {report.PUBLISHED_MARK}", "N_L=50"] == "-"
    assert "published" in table.attrs["title"]


def test_every_format_parses_back(table_db):
    jobs = report.load_jobs(open_existing(table_db), "table2")
    table = report.mnist_table(jobs, compare="paper")
    n_rows, n_cols = table.shape

    back = pd.read_csv(io.StringIO(report.render(table, "csv")), keep_default_na=False)
    assert back.shape == table.shape and list(back.columns) == list(table.columns)
    assert (back.astype(str).values == table.astype(str).values).all()

    md = report.render(table, "markdown")
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(lines) == n_rows + 2  # header, separator, rows
    assert all(len(re.split(r"(?<!\\)\|", ln)) == n_cols + 2 for ln in lines)
    assert "| Resnet2-32max | 98.90 ± 0.36 (0.3, 0.5) n=3 |" in md

    tex = report.render(table, "latex")
    body = tex[tex.index(r"\midrule") : tex.index(r"\bottomrule")]
    rows = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
    assert len(rows) == n_rows
    assert all(ln.count(" & ") == n_cols - 1 for ln in rows)
    assert r"98.90 $\pm$ 0.36" in tex and "N\\_L=50" in tex and "ramp(0\\textgreater{}0.5@10)" in tex
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1

    term = report.render(table, "terminal")
    assert sum(ln.startswith("│") for ln in term.splitlines()) == n_rows
    assert sum(ln.startswith("┃") for ln in term.splitlines()) == 1  # the header
    assert f"CatGAN {report.PUBLISHED_MARK}" in term  # not eaten as rich markup
    assert "98.90 ± 0.36 (0.3, 0.5) n=3" in term


def test_pivot_and_bird10_layout(table_db):
    engine = open_existing(table_db)
    jobs = report.load_jobs(engine, "table2")
    piv = report.pivot(jobs, "alpha", "n_labeled", where={"topology": "resnet2-32max", "beta": "0.5"})
    piv = piv.set_index("alpha")
    assert piv.loc["0.3", "n_labeled=50"] == "98.90 ± 0.36 (3)"
    assert piv.loc["0.6", "n_labeled=100"] == "-"
    with pytest.raises(ConfigError, match="no column nope"):
        report.pivot(jobs, "nope", "alpha")

    # 1-D layout: test accuracy at the best-validation epoch among the last 2, mean ± std over seeds.
    epochs = report.load_epochs(engine, jobs["id"])
    assert len(epochs) == 3 * len(FINISHED)
    b10 = report.bird10_table(jobs, epochs, last=2).set_index("alpha")
    assert list(b10.columns) == ["mnist"]
    assert "last 2 epochs" in b10.attrs["title"]
    # alpha=1: Sup50 (72.0) and Sup1000 (98.0, 98.2) are different configs; validation picks Sup1000.
    assert b10.loc["1", "mnist"] == "98.10 ± 0.14 n=2 [best of 2 configs by validation: beta 0]"
    assert b10.loc["0.6", "mnist"] == "99.55 ± 0.07 n=2"
    # Validation rises every epoch, so the last epoch is chosen: the final accuracy; with last=1 too.
    b10_val = report.bird10_table(jobs, epochs, last=1, metric="val_acc").set_index("alpha")
    assert b10_val.loc["0.6", "mnist"] == "96.25 ± 0.35 n=2"


def test_no_finished_jobs_and_unknown_sweep(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_engine(url).dispose()
    engine = open_existing(url)
    with pytest.raises(report.NoResultsError, match="no done jobs"):
        report.load_jobs(engine)
    with pytest.raises(UnknownNameError, match="unknown sweep 'x'"):
        report.load_jobs(engine, "x")
    with pytest.raises(DatabaseError, match="no results database"):
        open_existing(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()


# --------------------------------------------------------------------------- figures
def _png_size(path: Path) -> tuple[int, int]:
    raw = Path(path).read_bytes()
    assert raw[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def test_learning_curves_and_metric_vs_field_are_pngs(table_db, tmp_path):
    engine = open_existing(table_db)
    jobs = report.load_jobs(engine, "table2")
    epochs = report.load_epochs(engine, jobs["id"])
    by_job = {f"job {i}": g for i, g in list(epochs.groupby("job_id"))[:3]}
    out = plots.learning_curves(by_job, tmp_path / "curves.png")
    assert _png_size(out) == (1500, 450)
    out = plots.metric_vs_field(jobs[jobs["n_labeled"] == 50], "alpha", "test_acc", tmp_path / "sub" / "fig2.png")
    assert _png_size(out) == (800, 500)
    with pytest.raises(DataError):
        plots.learning_curves({"empty": []}, tmp_path / "none.png")


def test_image_reconstruction_grid(tmp_path):
    import torch

    from invssl import models

    torch.manual_seed(0)
    model = models.build("SmallUCNN", (1, 28, 28), 10)
    x = torch.randn(5, 1, 28, 28)
    out = plots.reconstructions(model, x, tmp_path / "rec.png", n=3, labels=[0, 1, 2])
    assert _png_size(out) == plots.png_size(plots.reconstruction_size((1, 28, 28), 3)) == (480, 370)
    assert plots.pick_examples(torch.tensor([2, 0, 0, 1, 2, 1]), 4) == [1, 3, 0, 2]


# --------------------------------------------------------------------------- CLI
def _cli(*args, env_db=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    env.pop("INVSSL_DB", None)
    return subprocess.run([sys.executable, "-m", "invssl", *args], capture_output=True, text=True, env=env, timeout=120)


def _one_line_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(pattern, lines[0]), proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_errors_are_one_line_exit_2(table_db, tmp_path):
    _one_line_error(_cli("report", "--table", "cifar", "--db", table_db), r"unknown table 'cifar'")
    _one_line_error(_cli("plot", "abc123", "--db", table_db), r"no job matches 'abc123'")
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    open_engine(empty).dispose()
    _one_line_error(_cli("report", "--table", "mnist", "--db", empty), r"no done jobs")
    # A database written by another schema revision is refused, not migrated.
    from sqlalchemy import create_engine, text

    engine = create_engine(empty)
    with engine.begin() as conn:
        conn.execute(text("UPDATE invssl_alembic_version SET version_num = 'f00dfeed'"))
    engine.dispose()
    _one_line_error(_cli("report", "--table", "mnist", "--db", empty), r"schema revision f00dfeed")


def test_cli_plot_metric_against_field(table_db, tmp_path):
    out = tmp_path / "fig2.png"
    proc = _cli("plot", "--sweep", "table2", "--x", "alpha", "--y", "test_acc", "--output", str(out), "--db", table_db)
    assert proc.returncode == 0, proc.stderr
    assert _png_size(out) == (800, 500)


def test_cli_report_writes_markdown(table_db, tmp_path):
    out = tmp_path / "t2.md"
    proc = _cli(
        "report",
        "--table",
        "mnist",
        "--sweep",
        "table2",
        "--format",
        "markdown",
        "--output",
        str(out),
        "--db",
        table_db,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    text = out.read_text()
    assert "| Resnet2-32max | 98.90 ± 0.36 (0.3, 0.5) n=3 |" in text


def test_reconstruct_a_really_trained_tiny_job(tmp_path):
    from invssl.runner import Worker

    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    engine = open_engine(url)
    cfg = JobConfig(topology="MLP", dataset="chirps", data_params={
        "n_train": 200, "n_test": 40, "sample_rate": 2000, "duration_ms": 200},
        val_size=40, n_labeled=20, epochs=1, batch_labeled=10, batch_unlabeled=40,
        steps_per_epoch=3, lr=0.003, alpha=0.5, beta=0.5)  # fmt: skip
    sweep_id = queue.ensure_sweep(engine, "tiny", {"name": "tiny"})
    queue.enqueue(engine, sweep_id, [(cfg.key, cfg.model_dump(mode="json"))])
    summary = Worker(engine=engine, device="cpu").run(sweep_id=sweep_id)
    assert summary.done == 1, summary.failures
    engine.dispose()

    out = tmp_path / "recon.png"
    proc = _cli("reconstruct", cfg.key[:8], "--n", "4", "--output", str(out), "--db", url)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    width, height = plots.png_size(plots.reconstruction_size((1, 400), 4))
    assert _png_size(out) == (width, height) == (1200, 410)


def test_a_tuned_baseline_names_its_rate_and_a_collapsed_cell_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuned.db'}"
    engine = open_engine(url)
    sweep_id = queue.ensure_sweep(engine, "tuned", {"name": "tuned"})
    # Supervised at 100 labels with three rates: 0.003 wins on validation, 0.01 on test.
    # The 0.01 runs collapsed (one class predicted) on one seed of two.
    plan, configs = {}, []
    for lr, seed, val, test, collapsed in [
        (0.001, 0, 0.80, 0.81, 0),
        (0.001, 1, 0.82, 0.80, 0),
        (0.003, 0, 0.86, 0.85, 0),
        (0.003, 1, 0.88, 0.86, 0),
        (0.01, 0, 0.10, 0.98, 1),
        (0.01, 1, 0.84, 0.99, 0),
    ]:
        config = _cfg("ConvSmallmax", 100, 1.0, 0.0, seed, lr=lr)
        epochs = _epoch_metrics(val, test)
        epochs[-1] = {**epochs[-1], "collapsed": float(collapsed), "pred_entropy": 0.0 if collapsed else 0.99}
        plan[config.key] = (epochs, epochs[-1], None)
        configs.append(config)
    _enqueue(engine, sweep_id, configs)
    _run_all(engine, sweep_id, plan)
    jobs = report.load_jobs(engine, "tuned")
    table = report.mnist_table(jobs).set_index("topology")
    assert table.loc["ConvSmallmax", "Sup100"] == "85.50 ± 0.71 (lr 0.003) n=2"
    cells = report.mnist_cells(jobs).set_index(["topology", "column"])
    assert cells.loc[("ConvSmallmax", "Sup100"), "candidates"] == 3
    grid = report.pivot(jobs, rows="lr", cols="alpha").set_index("lr")
    assert grid.loc["0.01", "alpha=1"] == "98.50 ± 0.71 (2) COLLAPSED 1/2"
    assert grid.loc["0.003", "alpha=1"] == "85.50 ± 0.71 (2)"
    engine.dispose()
