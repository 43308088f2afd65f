"""Experiment files: grid expansion, overrides, extras, job identity and every bad input."""

import textwrap

import pytest

from invssl.config import JobConfig, expand, load_experiment, parse_experiment
from invssl.errors import ConfigError

BASE = """
name: t
data: {dataset: chirps, val_size: 100, params: {n_train: 400, n_test: 100}}
train: {epochs: 2, lr: 0.01}
grid:
  topology: [SmallCNNmean, SmallCNNmax]
  n_labeled: [20, 40]
  alpha: [0.3, 1.0]
  seed: [0, 1]
"""


def jobs_of(text):
    return expand(parse_experiment(textwrap.dedent(text)))


def test_grid_is_the_product():
    jobs = jobs_of(BASE)
    assert len(jobs) == 2 * 2 * 2 * 2
    assert {(j.topology, j.n_labeled, j.alpha, j.seed) for j in jobs} == {
        (t, n, a, s) for t in ("SmallCNNmean", "SmallCNNmax") for n in (20, 40) for a in (0.3, 1.0) for s in (0, 1)
    }
    assert all(j.epochs == 2 and j.dataset == "chirps" and j.val_size == 100 for j in jobs)
    assert len({j.key for j in jobs}) == len(jobs)


def test_overrides_and_extras():
    jobs = jobs_of(
        BASE
        + """
overrides:
  - match: {topology: "*max"}
    set: {lr: 0.0033}
extra:
  - name: sup
    grid: {n_labeled: [100], alpha: [1.0]}
"""
    )
    main = [j for j in jobs if j.n_labeled != 100]
    extra = [j for j in jobs if j.n_labeled == 100]
    assert len(main) == 16 and len(extra) == 2 * 2  # topologies x seeds
    assert all(j.alpha == 1.0 for j in extra)
    assert all((j.lr == 0.0033) == j.topology.endswith("max") for j in jobs)


def test_identity_ignores_key_order_and_runtime_fields():
    a = JobConfig(topology="SmallCNNmean", dataset="chirps", n_labeled=20, alpha=0.5, beta=1)
    b = JobConfig(
        beta=1.0,
        alpha=0.5,
        n_labeled=20,
        dataset="CHIRPS",
        topology="smallcnnmean",
        data_root="/elsewhere",
        device="cuda:3",
        download=True,
    )
    assert a.key == b.key and len(a.key) == 64
    assert a.key != a.model_copy(update={"seed": 1}).key
    c = JobConfig(
        topology="SmallCNNmean",
        dataset="chirps",
        n_labeled=20,
        alpha={"kind": "ramp", "start": 0, "end": 0.5, "until": 3},
    )
    assert c.key != a.key and c.alpha(1.5) == 0.25


def test_jobs_dedupe_and_growth_keeps_old_keys():
    small = {j.key for j in jobs_of(BASE)}
    grown = {j.key for j in jobs_of(BASE.replace("seed: [0, 1]", "seed: [0, 1, 2]"))}
    assert small < grown and len(grown) == 24


@pytest.mark.parametrize(
    "patch,message",
    [
        (("alpha: [0.3, 1.0]", "alpah: [0.3]"), "grid.alpah: unknown field"),
        (("alpha: [0.3, 1.0]", "alpha: [0.3, 1.5]"), "alpha: must lie in [0, 1]; got 1.5"),
        (("SmallCNNmax", "TinyNet"), "unknown topology 'TinyNet'; valid: SmallCNNmean"),
        (("dataset: chirps", "dataset: cifar11"), "unknown dataset 'cifar11'; valid:"),
        (("n_labeled: [20, 40]", "n_labeled: [25]"), "n_labeled=25 is not divisible by the 10 classes"),
        (("n_labeled: [20, 40]", "n_labeled: [400]"), "exceeds the 400 training examples"),
        (("seed: [0, 1]", "seed: []"), "grid.seed: empty list"),
        (
            ("train: {epochs: 2, lr: 0.01}", "train: {epochs: 2, lr: 0.01, optimiser: sgd}"),
            "train.optimiser: unknown field",
        ),
        (("name: t", "name: t\nbogus: 1"), "bogus: unknown key"),
        (("topology: [SmallCNNmean, SmallCNNmax]", "topology: [SmallCNNmean\n  bad: ]"), "YAML syntax error at line"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, patch, message):
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace(*patch))
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text and text.startswith(str(path))
    assert list(tmp_path.iterdir()) == [path]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_experiment(tmp_path / "nope.yaml")
