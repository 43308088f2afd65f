"""Chaos run: workers SIGKILLed again and again on tiny jobs, then resume; is anything lost?

Enqueues ``--jobs`` tiny MLP jobs on MNIST-1D in ``--db`` (an empty database), keeps
``--workers`` worker processes running, and kills one that holds a job with SIGKILL every
``--every`` seconds on average (a fresh worker takes its place) until ``--kills`` kills. The
workers then finish and ``invssl resume`` picks up what the dead left. Counted from the
database:

- recomputed epochs: epochs recorded before a kill and recorded again by a later attempt (a
  checkpoint is committed with each epoch, so none should be);
- lost epochs: epochs missing from a done job;
- jobs done twice: jobs claimed again after they were done;
- empty results: done jobs without metrics.

    python bench/chaos.py --db sqlite:///chaos.db --jobs 60 --kills 18
    python bench/chaos.py --db postgresql+psycopg://user@host/chaos --jobs 20 --kills 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from invssl.db import reads
from invssl.db.session import mask_url, open_engine, resolve_url

GRID = """
name: chaos
data: {{dataset: mnist1d, val_size: 100, params: {{num_samples: {samples}}}}}
train: {{epochs: {epochs}, steps_per_epoch: {steps}, batch_labeled: 10, batch_unlabeled: 32,
        collapse_patience: 0}}
grid: {{topology: [MLP], n_labeled: [50], alpha: [0.5], seed: {seeds}}}
"""


def cli(*args: str, url: str) -> list[str]:
    return [sys.executable, "-m", "invssl", *args, "--db", url]


def snapshot(engine, n_jobs: int) -> dict[int, dict]:
    """Per job: status, attempts, result and {epoch: attempt} as the database holds them now."""
    jobs = {}
    for job_id in range(1, n_jobs + 1):
        info = reads.get_job(engine, str(job_id))
        jobs[job_id] = {
            "status": info["status"],
            "attempts": info["attempts"],
            "result": info["result"],
            "epochs": {r["epoch"]: r["attempt"] for r in reads.job_epochs(engine, job_id)},
        }
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, help="an empty database (SQLite file or PostgreSQL)")
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--kills", type=int, default=18)
    ap.add_argument("--every", type=float, default=2.0, help="mean seconds between kills")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15, help="training steps per epoch")
    ap.add_argument("--num-samples", type=int, default=1000, help="MNIST-1D examples generated")
    ap.add_argument("--seed", type=int, default=0, help="of the kill schedule")
    args = ap.parse_args()
    url = resolve_url(args.db)
    rng = random.Random(args.seed)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with tempfile.TemporaryDirectory(prefix="invssl-chaos-") as work:
        grid = Path(work) / "chaos.yaml"
        grid.write_text(
            GRID.format(samples=args.num_samples, epochs=args.epochs, steps=args.steps, seeds=list(range(args.jobs)))
        )
        subprocess.run(
            cli("sweep", str(grid), "--enqueue-only", url=url), env=env, check=True, stdout=subprocess.DEVNULL
        )
    engine = open_engine(url)
    # A short heartbeat and grace: killed workers' jobs are taken over within seconds.
    worker_cmd = cli("worker", "--quiet", "--heartbeat", "0.5", "--stale-after", "5", url=url)

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(worker_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    start = time.time()
    workers = [spawn() for _ in range(args.workers)]
    seen: list[dict[int, dict]] = []  # a snapshot right after each kill
    kills = 0
    while kills < args.kills:
        time.sleep(rng.expovariate(1.0 / args.every))
        running = {j["pid"] for j in reads.running_jobs(engine)}
        busy = [w for w in workers if w.poll() is None and w.pid in running]
        if not busy:
            if all(w.poll() is not None for w in workers):
                break  # the queue ran dry before every kill was made
            continue
        victim = rng.choice(busy)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        kills += 1
        seen.append(snapshot(engine, args.jobs))
        workers[workers.index(victim)] = spawn()
    errors = []
    for w in workers:
        _, err = w.communicate()
        if w.returncode != 0:
            errors.append(err.strip().splitlines()[-1:] or [f"exit {w.returncode}"])
    resume = subprocess.run(
        cli("resume", "--quiet", "--stale-after", "5", url=url), env=env, capture_output=True, text=True
    )
    final = snapshot(engine, args.jobs)
    engine.dispose()

    recomputed_epochs = len(
        {
            (job_id, epoch)
            for snap in seen
            for job_id, job in snap.items()
            for epoch, attempt in job["epochs"].items()
            if final[job_id]["epochs"].get(epoch, attempt) != attempt
        }
    )
    lost = sum(args.epochs - len(job["epochs"]) for job in final.values() if job["status"] == "done")
    done_twice = len(
        {
            job_id
            for snap in seen
            for job_id, job in snap.items()
            if job["status"] == "done" and final[job_id]["attempts"] != job["attempts"]
        }
    )
    counts = {
        "database": mask_url(url).split(":")[0],
        "kills": kills,
        "jobs": args.jobs,
        "workers": args.workers,
        "epochs_per_job": args.epochs,
        "done": sum(j["status"] == "done" for j in final.values()),
        "failed": sum(j["status"] == "failed" for j in final.values()),
        "left": sum(j["status"] in ("pending", "running") for j in final.values()),
        "resumed_attempts": sum(j["attempts"] - 1 for j in final.values()),
        "recomputed_epochs": recomputed_epochs,
        "lost_epochs": lost,
        "jobs_done_twice": done_twice,
        "empty_results": sum(j["status"] == "done" and not j["result"] for j in final.values()),
        "worker_errors": errors,
        "resume_exit": resume.returncode,
        "seconds": round(time.time() - start, 1),
    }
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
