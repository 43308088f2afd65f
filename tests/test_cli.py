"""Issue 13 through the real CLI: real SQLite files, real training, output parsed back."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from invssl.config import JobConfig
from invssl.db import queue
from invssl.db.session import open_engine

CHIRPS = "{dataset: chirps, val_size: 50, params: {n_train: 300, n_test: 100, sample_rate: 2000, duration_ms: 250}}"
TINY = f"""
name: tiny
data: {CHIRPS}
train: {{epochs: 1, lr: 0.003, batch_labeled: 10, batch_unlabeled: 40, steps_per_epoch: 3}}
grid:
  topology: [MLP]
  n_labeled: [20]
  alpha: [0.5, 1.0]
  seed: [0, 1]
"""


def invssl(*args, cwd, check=True, env_extra=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env_extra or {})}
    env.pop("INVSSL_DB", None)
    proc = subprocess.run(
        [sys.executable, "-m", "invssl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def one_line_error(proc, text):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def changed(tmp_path_factory):
    """A sweep run with epochs 1, then its file edited to epochs 2 and run again under its name."""
    root = tmp_path_factory.mktemp("changed")
    (root / "tiny.yaml").write_text(TINY)
    first = invssl("sweep", "tiny.yaml", cwd=root)  # not a terminal: plain lines
    (root / "tiny.yaml").write_text(TINY.replace("epochs: 1", "epochs: 2"))
    second = invssl("sweep", "tiny.yaml", "--quiet", cwd=root)
    return root, first, second


def jobs_json(root, *args):
    return json.loads(invssl("jobs", "--format", "json", *args, cwd=root).stdout)


# --------------------------------------------------------------------------- 1, 3, 4, 5, 6, 8
def test_report_never_pools_a_changed_spec(changed):
    root, _, second = changed
    assert "train.epochs: 1 -> 2" in second.stderr and "8 done" in second.stdout
    proc = invssl("report", "--rows", "n_labeled,seed", "--cols", "alpha", cwd=root, check=False)
    one_line_error(proc, "(epochs varies: 1, 2)")
    assert "--where" in proc.stderr
    out = invssl(
        "report", "--rows", "n_labeled,seed", "--cols", "alpha", "--where", "epochs=2", "--format", "csv", cwd=root
    ).stdout
    cells = list(csv.DictReader(io.StringIO(out)))
    assert len(cells) == 4 and {c["n"] for c in cells} == {"1"}
    out = invssl("report", "--rows", "epochs", "--cols", "alpha", "--format", "json", cwd=root).stdout
    by = {(c["epochs"], c["alpha"]): c for c in json.loads(out)["cells"]}
    assert set(by) == {(1, 0.5), (1, 1.0), (2, 0.5), (2, 1.0)} and all(c["n"] == 2 for c in by.values())


def test_mnist_table_without_mnist_jobs_exits_2(changed):
    root = changed[0]
    one_line_error(
        invssl("report", "--table", "mnist", cwd=root, check=False), "no finished MNIST job; the results hold: chirps"
    )
    assert "MLP" in invssl("report", "--table", "mnist", "--dataset", "chirps", cwd=root).stdout


def test_supervised_jobs_record_no_reconstruction_terms(changed):
    root = changed[0]
    for job in jobs_json(root, "--sweep", "tiny"):
        shown = json.loads(invssl("show", job["key"][:12], "--format", "json", cwd=root).stdout)
        assert shown["key"] == job["key"] and shown["epochs"]
        for epoch in shown["epochs"]:
            if job["alpha"] == 1.0:
                assert epoch["recon"] is None and epoch["entropy"] is None
            else:
                assert epoch["recon"] > 0 and epoch["entropy"] > 0


def test_json_and_csv_parse_back(changed):
    root = changed[0]
    status = json.loads(invssl("status", "--format", "json", cwd=root).stdout)
    assert status["counts"]["done"] == 8 and status["failed"] == []
    report = json.loads(invssl("report", "--rows", "alpha", "--where", "epochs=1", "--format", "json", cwd=root).stdout)
    cell = next(c for c in report["cells"] if c["alpha"] == 0.5)
    assert cell["metric"] == "test_acc" and cell["n"] == 2 and 0 <= cell["mean"] <= 1
    assert isinstance(cell["std"], float) and len(cell["job_ids"]) == 2
    out = invssl("report", "--rows", "alpha", "--where", "epochs=1", "--format", "csv", cwd=root).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0])[:6] == ["alpha", "metric", "mean", "std", "n", "collapsed"]
    assert float(rows[0]["mean"]) == pytest.approx(
        next(c["mean"] for c in report["cells"] if c["alpha"] == float(rows[0]["alpha"]))
    )
    listed = list(csv.DictReader(io.StringIO(invssl("jobs", "--format", "csv", cwd=root).stdout)))
    assert len(listed) == 8 and all(len(r["key"]) == 64 for r in listed)


def test_jobs_listing_filters(changed, tmp_path):
    root = changed[0]
    every = jobs_json(root)
    assert len(every) == 8 and all(len(j["key"]) == 64 and j["status"] == "done" for j in every)
    assert {j["epochs"] for j in jobs_json(root, "--where", "epochs=2")} == {2}
    assert {j["seed"] for j in jobs_json(root, "--where", "alpha=1", "--where", "seed=1")} == {1}
    assert jobs_json(root, "--status", "failed") == []
    one_line_error(invssl("jobs", "--status", "broken", cwd=root, check=False), "unknown status 'broken'")
    one_line_error(invssl("jobs", "--sweep", "nope", cwd=root, check=False), "unknown sweep 'nope'")
    # A failed job, recorded as a worker records one.
    url = f"sqlite:///{root / 'invssl.db'}"
    engine = open_engine(url)
    cfg = JobConfig(topology="MLP", dataset="chirps", n_labeled=20, seed=9)
    sweep_id = queue.ensure_sweep(engine, "broken", {"name": "broken"})
    queue.enqueue(engine, sweep_id, [(cfg.key, cfg.model_dump(mode="json"))])
    claim = queue.claim(engine, worker="t", host="t", pid=os.getpid(), sweep_id=sweep_id)
    queue.fail(engine, claim.job_id, claim.attempt, "loss became nan")
    engine.dispose()
    failed = jobs_json(root, "--status", "failed")
    assert [(j["key"], j["error"]) for j in failed] == [(cfg.key, "loss became nan")]
    assert jobs_json(root, "--sweep", "broken", "--status", "done") == []
    text = invssl("jobs", "--sweep", "broken", cwd=root).stdout
    assert cfg.key[:12] in text and "failed" in text


def test_plot_writes_the_format_its_suffix_names(changed):
    root = changed[0]
    key = jobs_json(root)[0]["key"]
    invssl("plot", key[:10], "-o", "curves.pdf", cwd=root)
    assert (root / "curves.pdf").read_bytes()[:5] == b"%PDF-"
    invssl("plot", "--sweep", "tiny", "--x", "alpha", "--by", "epochs", "-o", "alpha.svg", cwd=root)
    assert b"<svg" in (root / "alpha.svg").read_bytes()[:2000]
    invssl("plot", key[:10], "-o", "curves.png", cwd=root)
    assert (root / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one_line_error(
        invssl("plot", key[:10], "-o", "curves.jpg", cwd=root, check=False), "name a figure file .png, .pdf or .svg"
    )
    assert not (root / "curves.jpg").exists()


def test_piped_output_is_one_unwrapped_line_per_epoch(changed):
    root, first, _ = changed
    epochs = [ln for ln in first.stdout.splitlines() if ": epoch 1/1 " in ln]
    assert len(epochs) == 4 and all("val_acc=" in ln and "test_acc=" in ln for ln in epochs)
    done = [ln for ln in first.stdout.splitlines() if ln.startswith("done ")]
    assert len(done) == 4 and "[4/4 jobs]" in done[-1] and "ETA" in done[0]
    assert "\r" not in first.stdout and "\x1b[" not in first.stdout
    key = jobs_json(root, "--where", "alpha=0.5")[0]["key"]
    shown = invssl("show", key[:10], cwd=root, env_extra={"COLUMNS": "40"}).stdout
    header = next(ln for ln in shown.splitlines() if "pred_entropy" in ln)
    assert all(c in header for c in ("recon_err", "dead_units", "collapsed", "wall_s"))
    assert "…" not in shown and max(map(len, shown.splitlines())) > 40


# --------------------------------------------------------------------------- 2
def test_bird10_takes_the_test_accuracy_at_the_best_validation_epoch(tmp_path):
    url = f"sqlite:///{tmp_path / 'b10.db'}"
    engine = open_engine(url)
    cfg = JobConfig(topology="MLP", dataset="chirps", n_labeled=20, alpha=0.5, beta=0.5, epochs=3)
    sweep_id = queue.ensure_sweep(engine, "b10", {"name": "b10"})
    queue.enqueue(engine, sweep_id, [(cfg.key, cfg.model_dump(mode="json"))])
    claim = queue.claim(engine, worker="t", host="t", pid=os.getpid(), sweep_id=sweep_id)
    # The best test accuracy (epoch 3) is not where validation peaks (epoch 2).
    for epoch, (val, test) in enumerate([(0.5, 0.9), (0.9, 0.7), (0.6, 0.95)], start=1):
        queue.record_epoch(engine, claim.job_id, claim.attempt, epoch, {"val_acc": val, "test_acc": test}, None)
    queue.finish(engine, claim.job_id, claim.attempt, {"val_acc": 0.6, "test_acc": 0.95})
    engine.dispose()
    out = invssl("report", "--table", "bird10", "--last", "3", "--format", "json", "--db", url, cwd=tmp_path).stdout
    [cell] = json.loads(out)["cells"]
    assert cell["mean"] == pytest.approx(0.7) and cell["n"] == 1
    text = invssl("report", "--table", "bird10", "--last", "3", "--db", url, cwd=tmp_path).stdout
    assert "70.00 n=1" in text and "best validation" in text


# --------------------------------------------------------------------------- 9
def test_several_workers_report_each_job_with_an_eta(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = invssl("sweep", "tiny.yaml", "--workers", "2", cwd=tmp_path).stdout
    done = [ln for ln in out.splitlines() if ln.startswith("done ")]
    assert len(done) == 4 and "MLP chirps" in done[0] and "test_acc=" in done[0]
    assert "[4/4 jobs]" in done[-1] and "ETA" in done[0]
    assert "started 2 workers" in out and "sweep tiny: 4 done" in out


# --------------------------------------------------------------------------- 10, 11, 14
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unusable_devices_fail_before_anything_is_queued(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    for extra in ([], ["--dry-run"]):
        proc = invssl("sweep", "tiny.yaml", "--devices", "cpu,cuda:0", *extra, cwd=tmp_path, check=False)
        one_line_error(proc, "CUDA is not available")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]
