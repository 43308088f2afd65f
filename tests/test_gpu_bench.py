"""bench/gpu.py, the prepared GPU benchmark, in its CPU smoke mode: every part computes for real at
tiny sizes and writes gpu.json and gpu.md, so the script is known to run before a GPU is lent."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu.py"
PARTS = ("step", "jobs", "estimate", "precision", "epoch")
MODES = ("fp32", "default", "tf32", "bf16")


def write_idx_gz(folder: Path, n_train: int, n_test: int) -> None:
    """MNIST's files as bench/GPU.md carries them (gzip), random pixels, labels 0-9 in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(np.array([0x803, n, 28, 28], ">i4").tobytes() + rng.integers(0, 256, n * 784, np.uint8).tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([0x801, n], ">i4").tobytes() + (np.arange(n) % 10).astype(np.uint8).tobytes())


def test_smoke_run_measures_every_part_and_writes_json_and_markdown(tmp_path: Path) -> None:
    # 100 labels + 1000 validation images + 100 unlabeled: the smallest set every part accepts.
    write_idx_gz(tmp_path / "data" / "MNIST" / "raw", n_train=1200, n_test=100)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "OUT"} | {"OMP_NUM_THREADS": "1"}
    # Budgets are wall-clock; a loaded CI machine must not turn measurements into "skipped".
    budgets = ",".join(f"{p}=3600" for p in PARTS)
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--smoke",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--budgets",
            budgets,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[gpu.py" in proc.stdout and "done:" in proc.stdout

    res = json.loads((out / "gpu.json").read_text())
    assert res["meta"]["device"] == "cpu" and res["meta"]["data"] == "MNIST files"
    for part in PARTS:
        assert "error" not in res[part] and not res[part].get("skipped"), (part, res[part])
        assert res[part]["seconds"] >= 0

    step = res["step"]
    assert set(step["topologies"]) == {"SmallCNNmean", "MLP"}
    for row in step["topologies"].values():
        assert all(row[k] > 0 for k in ("sup_ms", "sup_L_ms", "ssl_ms", "ssl_autograd_ms", "native_speedup"))
        assert set(row["phases_ms"]) == {"sup", "sup L", "ssl", "ssl autograd"}
        assert 0 <= row["native_grad_gap"] < 1e-4  # the same gradients through both paths
    assert step["native_speedup_geomean"] > 0 and isinstance(step["native_wins"], bool)

    jobs = res["jobs"]
    assert [r["k"] for r in jobs["rows"]] == [1, 2]
    assert all(r["steps_per_s"] > 0 and r["peak_mb_per_job"] > 0 for r in jobs["rows"])
    assert jobs["best_k"] in (1, 2) and jobs["recommended_k"] <= jobs["best_k"] and jobs["speedup_at_best"] >= 1

    est = res["estimate"]
    assert est["jobs"] > 0 and est["dry_run_complete"] and est["dry_run_hours"] > 0
    assert est["measured_steps_hours"] > 0

    prec = res["precision"]
    assert all(prec["speed"]["SmallCNNmean"][f"{m}_ms"] > 0 for m in MODES)
    assert [r["mode"] for r in prec["accuracy"]] == list(MODES)
    assert all(0 <= r["test_acc"] <= 1 for r in prec["accuracy"]) and set(prec["mean_test_acc"]) == set(MODES)

    assert [(r["topology"], r["arm"]) for r in res["epoch"]["rows"]] == [("SmallCNNmean", "ssl"), ("MLP", "ssl")]
    assert all(r["epoch_s"] > 0 and r["steps"] == 2 for r in res["epoch"]["rows"])

    md = (out / "gpu.md").read_text()
    assert all(f"## {part}" in md for part in PARTS)
    assert "| SmallCNNmean |" in md and "native_speedup_geomean" in md and "best_k" in md
