"""The CLI's inputs: data checks, Ctrl-C, bad files and options, your own network, overrides, help."""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import CHIRPS, TINY, invssl, jobs_json, one_line_error

from invssl import data
from invssl.config import JobConfig

MNIST = """
name: digits
data: {dataset: mnist, root: data, download: false, val_size: 10}
train: {epochs: 1, batch_labeled: 10, batch_unlabeled: 10, steps_per_epoch: 2}
grid: {topology: [MLP], n_labeled: [10], alpha: [0.5], seed: [0]}
"""


def write_idx_gz(folder: Path, n_train: int = 60, n_test: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">iiii", 0x0803, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">ii", 0x0801, n) + labels.tobytes())


def test_missing_data_fails_at_enqueue_and_in_dry_run(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "digits.yaml").write_text(MNIST)
    for extra in ([], ["--dry-run", "--no-calibrate"], ["--enqueue-only"]):
        proc = invssl("sweep", "digits.yaml", *extra, cwd=tmp_path, check=False)
        one_line_error(proc, f"MNIST files not found in {tmp_path / 'data' / 'MNIST' / 'raw'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "digits.yaml"]


def test_gzip_idx_files_and_a_data_root_relative_to_the_experiment_file(tmp_path):
    exp = tmp_path / "exp"
    write_idx_gz(exp / "data" / "MNIST" / "raw")
    (exp / "digits.yaml").write_text(MNIST)
    ds = data.load("mnist", root=exp / "data")
    assert ds.x_train.shape == (60, 1, 28, 28) and ds.y_test.tolist() == [i % 10 for i in range(20)]
    # Run from elsewhere: data/ is found beside the file, not in the working directory.
    out = invssl("sweep", "exp/digits.yaml", "--quiet", cwd=tmp_path).stdout
    assert "sweep digits: 1 done" in out
    [job] = jobs_json(tmp_path)
    assert job["status"] == "done" and "data_root" not in job  # where data lives is not identity


def test_download_lock_serialises_processes(tmp_path):
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from invssl.datafiles import download_lock\n"
        "with download_lock(Path(sys.argv[1])):\n"
        "    log = Path(sys.argv[1]) / 'log'\n"
        "    log.open('a').write(f'start {time.time()}\\n')\n"
        "    time.sleep(1.0)\n"
        "    log.open('a').write(f'end {time.time()}\\n')\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "root")], env=env) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    events = [ln.split() for ln in (tmp_path / "root" / "log").read_text().splitlines()]
    # Strictly alternating: the second holder starts only after the first ended.
    assert [e[0] for e in events] == ["start", "end", "start", "end"]
    assert float(events[2][1]) >= float(events[1][1])


def test_offline_download_is_one_clear_error(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    from invssl import cli

    # An address that refuses at once: the download fails as on a machine without network.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    (tmp_path / "digits.yaml").write_text(MNIST.replace("download: false", "download: true"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["invssl", "sweep", "digits.yaml", "--quiet"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot download MNIST into" in err
    assert "download: false" in err
    assert not (tmp_path / "invssl.db").exists()


# --------------------------------------------------------------------------- 12
SLOW = f"""
name: slow
data: {CHIRPS}
train: {{epochs: 6, lr: 0.003, batch_labeled: 10, batch_unlabeled: 40, steps_per_epoch: 40, collapse_patience: 0}}
grid: {{topology: [MLP], n_labeled: [20], alpha: [0.5], seed: [0]}}
"""


def test_ctrl_c_on_sweep_exits_130_and_hands_the_job_back(tmp_path):
    (tmp_path / "slow.yaml").write_text(SLOW)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("INVSSL_DB", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "invssl", "sweep", "slow.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The line display prints each epoch as it ends: wait for the first.
    line = proc.stdout.readline()
    while line and ": epoch 1/6" not in line:
        line = proc.stdout.readline()
    assert line, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "handed back" in out and "[0/1 jobs]" in out
    assert not any(ln.startswith("done ") for ln in out.splitlines())
    assert "sweep slow: 1 pending" in out and "invssl resume" in err
    [job] = jobs_json(tmp_path)
    assert job["status"] == "pending" and 1 <= job["epochs_done"] < 6


# --------------------------------------------------------------------------- 13
def test_bad_files_and_options_are_one_line(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(TINY.replace("tiny", "caf\xe9").encode("latin-1"))
    one_line_error(invssl("sweep", "latin1.yaml", cwd=tmp_path, check=False), "latin1.yaml: not UTF-8 text")
    (tmp_path / "folder.yaml").mkdir()
    one_line_error(
        invssl("sweep", "folder.yaml", cwd=tmp_path, check=False), "folder.yaml: is a folder, not an experiment file"
    )
    proc = invssl("resume", "--stale-after", "-5", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--stale-after" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.yaml", "latin1.yaml"]


# --------------------------------------------------------------------------- 15
NET = """
import math
from torch import nn


def tiny(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.ReLU(),
                         nn.Linear(16, num_classes))


def wrong(input_shape, num_classes):
    return nn.Linear(3, 3)
"""


def test_your_own_network_from_a_module_trains_one_epoch(tmp_path):
    (tmp_path / "mynets.py").write_text(NET)
    own = TINY.replace("[MLP]", "[mynets:tiny]").replace("seed: [0, 1]", "seed: [0]")
    (tmp_path / "own.yaml").write_text(own)
    out = invssl("sweep", "own.yaml", "--quiet", cwd=tmp_path).stdout
    assert "sweep tiny: 2 done" in out
    jobs = jobs_json(tmp_path)
    assert {j["topology"] for j in jobs} == {"mynets:tiny"}
    mlp = JobConfig(
        **{
            **json.loads(invssl("show", jobs[0]["key"][:12], "--format", "json", cwd=tmp_path).stdout)["config"],
            "topology": "MLP",
        }
    )
    assert mlp.key not in {j["key"] for j in jobs}  # the network is part of the identity
    (tmp_path / "bad.yaml").write_text(own.replace("mynets:tiny", "nonexistent_mod:net"))
    one_line_error(invssl("sweep", "bad.yaml", cwd=tmp_path, check=False), "cannot import 'nonexistent_mod'")
    (tmp_path / "wrong.yaml").write_text(own.replace("mynets:tiny", "mynets:wrong"))
    one_line_error(
        invssl("sweep", "wrong.yaml", "--dry-run", cwd=tmp_path, check=False),
        "topology 'mynets:wrong' on inputs of shape (1, 500)",
    )


# --------------------------------------------------------------------------- 16
def test_an_override_changes_the_jobs_and_their_keys(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    invssl("sweep", "tiny.yaml", "--enqueue-only", "--db", "sqlite:///plain.db", cwd=tmp_path)
    invssl(
        "sweep",
        "tiny.yaml",
        "train.epochs=3",
        "grid.seed=[0]",
        "grid.alpha=[0.5]",
        "--enqueue-only",
        "--db",
        "sqlite:///over.db",
        cwd=tmp_path,
    )
    plain = jobs_json(tmp_path, "--db", "sqlite:///plain.db")
    [over] = jobs_json(tmp_path, "--db", "sqlite:///over.db")
    assert over["epochs"] == 3 and over["seed"] == 0 and over["alpha"] == 0.5
    twin = next(j for j in plain if j["seed"] == 0 and j["alpha"] == 0.5)
    assert twin["epochs"] == 1 and twin["key"] != over["key"]
    one_line_error(
        invssl("sweep", "tiny.yaml", "train.epochz=1", cwd=tmp_path, check=False), "train.epochz: unknown field"
    )
    one_line_error(
        invssl("sweep", "tiny.yaml", "grid.alpha=[2]", cwd=tmp_path, check=False), "alpha: must lie in [0, 1]"
    )
    one_line_error(invssl("sweep", "tiny.yaml", "epochs", cwd=tmp_path, check=False), "expected KEY.PATH=VALUE")


# --------------------------------------------------------------------------- 17
def test_help_everywhere_and_shell_completion(tmp_path):
    import typer.main

    from invssl.cli import app

    def commands(cmd, path=()):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from commands(sub, (*path, name))

    undocumented = [
        f"{' '.join(path)} {p.name}"
        for path, cmd in commands(typer.main.get_command(app))
        for p in cmd.params
        if p.param_type_name == "option" and not p.hidden and not p.help
    ]
    assert undocumented == []
    assert "Usage:" in invssl("-h", cwd=tmp_path).stdout
    assert "KEY.PATH=VALUE" in invssl("sweep", "-h", cwd=tmp_path).stdout
    assert "upgrade" in invssl("db", "-h", cwd=tmp_path).stdout
    assert "complete" in invssl("--show-completion", "bash", cwd=tmp_path).stdout


def test_the_cli_never_imports_the_database_layer():
    """House rule: the CLI parses and prints; what it reads or writes goes through the library."""
    import ast

    import invssl.cli

    folder = Path(invssl.cli.__file__).parent
    sources = [folder / "cli.py"] if folder.name != "cli" else sorted(folder.glob("*.py"))
    imported = set()
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert imported and not [m for m in imported if m.startswith("invssl.db")]
