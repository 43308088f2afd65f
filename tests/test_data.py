"""Datasets and splits, on files the tests write themselves (no network, no shared data)."""

import json
import random
import struct

import numpy as np
import pytest
import soundfile
import torch

from invssl import data
from invssl.data import Split, make_split, per_group_accuracy
from invssl.errors import ConfigError, DataError, UnknownNameError

# --- registry and parameters -------------------------------------------------------------------


def test_names_and_case_insensitive_lookup():
    assert {"mnist", "fashion-mnist", "kmnist", "cifar10", "svhn", "mnist1d", "chirps",
            "wav-folder"} <= set(data.names())  # fmt: skip
    assert data.info("CIFAR10").input_shape == (3, 32, 32)
    assert data.info("Chirps", n_train=30).n_train == 30
    assert data.canonical("WAV-Folder") == "wav-folder"


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownNameError, match="unknown dataset 'nope'; valid: mnist, .*chirps"):
        data.info("nope")


def test_unknown_param_names_it_and_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        data.load("chirps", n_trian=5)
    assert str(err.value) == (
        "unknown parameter 'n_trian' for dataset 'chirps'; valid: n_train, n_test, sample_rate, duration_ms"
    )
    with pytest.raises(ConfigError, match="'bins' for dataset 'mnist'; valid: none"):
        data.info("mnist", bins=3)


@pytest.mark.parametrize("params", [{"n_train": 0}, {"n_train": "10"}, {"n_test": True}, {"duration_ms": -1}])
def test_bad_param_values(params):
    with pytest.raises(ConfigError):
        data.load("chirps", **params)


# --- torchvision image sets ----------------------------------------------------------------------


def write_idx(folder, prefix, images, labels):
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">iiii", 0x0803, n, rows, cols) + images.astype(np.uint8).tobytes()
    )
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">ii", 0x0801, n) + labels.astype(np.uint8).tobytes()
    )


@pytest.fixture
def idx_files(tmp_path):
    rng = np.random.default_rng(1)
    sets = {
        "train": (rng.integers(0, 256, (30, 28, 28)), np.arange(30) % 10),
        "t10k": (rng.integers(0, 256, (20, 28, 28)), (np.arange(20) * 3) % 10),
    }
    return tmp_path, sets


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_files_read_back_normalised_with_train_stats(idx_files, name, folder):
    root, sets = idx_files
    for prefix, (images, labels) in sets.items():
        write_idx(root / folder / "raw", prefix, images, labels)
    ds = data.load(name, root=root)

    train_raw = torch.tensor(sets["train"][0], dtype=torch.float64) / 255
    test_raw = torch.tensor(sets["t10k"][0], dtype=torch.float64) / 255
    mean, std = train_raw.mean().item(), train_raw.std(correction=0).item()
    assert ds.norm[0] == pytest.approx((mean,), abs=1e-6)
    assert ds.norm[1] == pytest.approx((std,), abs=1e-6)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_train.dtype == torch.float32
    assert ds.x_test.shape == (20, 1, 28, 28)
    close = dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(ds.x_train[:, 0].double(), (train_raw - mean) / std, **close)
    torch.testing.assert_close(ds.x_test[:, 0].double(), (test_raw - mean) / std, **close)
    assert ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == sets["train"][1].tolist()
    assert ds.y_test.tolist() == sets["t10k"][1].tolist()
    assert ds.groups_train is None and ds.groups_test is None
    assert ds.info.n_train == 60000 and ds.info.num_classes == 10  # info: the real set's sizes


def test_missing_idx_files_message_word_for_word(idx_files):
    root, sets = idx_files
    expected = (
        f"MNIST files not found in {root}/MNIST/raw: expected train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte "
        "(pass download: true to fetch them)"
    )
    with pytest.raises(DataError) as err:
        data.load("mnist", root=root)
    assert str(err.value) == expected
    write_idx(root / "MNIST" / "raw", "train", *sets["train"])  # half the files present
    with pytest.raises(DataError) as err:
        data.load("mnist", root=root)
    assert str(err.value) == expected


def test_other_vision_sets_name_their_files(tmp_path):
    with pytest.raises(DataError, match=r"SVHN files not found in .*: expected train_32x32.mat"):
        data.load("svhn", root=tmp_path)
    with pytest.raises(DataError, match=r"cifar-10-batches-py: expected data_batch_1, .*\.meta"):
        data.load("cifar10", root=tmp_path)


def test_corrupt_idx_file_is_a_data_error(idx_files):
    root, sets = idx_files
    for prefix, (images, labels) in sets.items():
        write_idx(root / "MNIST" / "raw", prefix, images, labels)
    (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03garbage")
    with pytest.raises(DataError, match="cannot read MNIST files in"):
        data.load("mnist", root=root)


def test_vision_set_needs_root():
    with pytest.raises(ConfigError, match="needs a root"):
        data.load("kmnist")


# --- wav-folder ----------------------------------------------------------------------------------

RATE, WINDOW, HOP = 16000, 1600, 800  # window_ms=100, overlap=0.5


def tone(rate, seconds, hz=1000.0, amp=0.5):
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture
def wav_root(tmp_path):
    """(root, {(class, file): resampled length at 16 kHz})"""
    lengths = {}

    def write(cls, name, audio, rate, resampled):
        (tmp_path / cls).mkdir(exist_ok=True)
        soundfile.write(tmp_path / cls / name, audio, rate)
        lengths[(cls, name)] = resampled

    write("crow", "a.wav", tone(8000, 0.7), 8000, 11200)
    write("crow", "b.wav", tone(22050, 0.8), 22050, 12800)  # 17640 * 320 / 441
    write("crow", "c.WAV", tone(16000, 0.05), 16000, 800)  # under one window: padded
    stereo = np.stack([tone(22050, 0.5, amp=0.2), tone(22050, 0.5, amp=0.6)], axis=1)
    write("owl", "d.wav", stereo, 22050, 8000)
    write("owl", "e.wav", tone(8000, 1.0, hz=500), 8000, 16000)
    write("wren", "f.wav", tone(16000, 0.33), 16000, 5280)
    return tmp_path, lengths


def windows_of(length):
    return 1 + (max(length, WINDOW) - WINDOW) // HOP


WAV_PARAMS = dict(sample_rate=RATE, window_ms=100, overlap=0.5, test_fraction=0.4)


def test_wav_folder_windows_groups_and_labels(wav_root):
    root, lengths = wav_root
    ds = data.load("wav-folder", root=root, seed=3, **WAV_PARAMS)
    recordings = sorted(lengths)  # group ids follow (class, file) order
    assert ds.info.class_names == ("crow", "owl", "wren")
    assert ds.info.input_shape == (1, WINDOW) and ds.x_train.shape[1:] == (1, WINDOW)

    train_groups = set(ds.groups_train.tolist())
    test_groups = set(ds.groups_test.tolist())
    assert not train_groups & test_groups
    assert train_groups | test_groups == set(range(len(recordings)))
    # stratified: both two-recording-or-more classes have a test recording, the lone wren trains
    assert {recordings[g][0] for g in test_groups} == {"crow", "owl"}

    for x, y, groups in ((ds.x_train, ds.y_train, ds.groups_train),
                         (ds.x_test, ds.y_test, ds.groups_test)):  # fmt: skip
        assert len(x) == len(y) == len(groups)
        for g in set(groups.tolist()):
            cls, name = recordings[g]
            mask = groups == g
            assert mask.sum().item() == windows_of(lengths[(cls, name)]), name
            assert set(y[mask].tolist()) == {ds.info.class_names.index(cls)}
    assert (ds.info.n_train, ds.info.n_test) == (len(ds.x_train), len(ds.x_test))
    assert data.info("wav-folder", root=root, seed=3, **WAV_PARAMS) == ds.info


def test_wav_folder_resamples_and_mixes_to_mono(wav_root):
    root, lengths = wav_root
    ds = data.load("wav-folder", root=root, seed=0, **WAV_PARAMS)
    mean, std = ds.norm[0][0], ds.norm[1][0]
    x = torch.cat([ds.x_train, ds.x_test])[:, 0] * std + mean
    groups = torch.cat([ds.groups_train, ds.groups_test])
    recordings = sorted(lengths)

    def middle_window(name):
        rows = x[groups == recordings.index(name)]
        return rows[len(rows) // 2].numpy()

    # A 1 kHz tone recorded at 8 kHz must still be 1 kHz at 16 kHz: bin 100 of 1600 samples.
    for name, hz in ((("crow", "a.wav"), 1000), (("owl", "e.wav"), 500)):
        spectrum = np.abs(np.fft.rfft(middle_window(name)))
        assert spectrum.argmax() == hz * WINDOW // RATE
    # Stereo channels of amplitude 0.2 and 0.6 average to 0.4.
    assert np.abs(middle_window(("owl", "d.wav"))).max() == pytest.approx(0.4, rel=0.02)
    # The short recording is padded with zeros after its 800 samples.
    short = x[groups == recordings.index(("crow", "c.WAV"))]
    assert short.shape[0] == 1
    assert short[0, 800:].abs().max() < 1e-6 and short[0, :800].abs().max() > 0.4


def test_wav_folder_split_depends_on_seed_only(wav_root):
    root, _ = wav_root

    def held_out(seed):
        ds = data.load("wav-folder", root=root, seed=seed, **WAV_PARAMS)
        return tuple(ds.groups_test.unique().tolist())

    splits = {seed: held_out(seed) for seed in range(6)}
    assert held_out(4) == splits[4]
    assert len(set(splits.values())) > 1


def test_wav_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        data.load("wav-folder", root=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no .wav files"):
        data.info("wav-folder", root=tmp_path)
    (tmp_path / "empty" / "broken.wav").write_bytes(b"RIFF nonsense")
    with pytest.raises(DataError, match="cannot read .*broken.wav"):
        data.info("wav-folder", root=tmp_path)
    with pytest.raises(ConfigError, match="overlap"):
        data.info("wav-folder", root=tmp_path, overlap=1.0)


def test_per_group_accuracy_averages_softmax_not_votes():
    logits = torch.tensor([
        [0.0, 0.1], [0.0, 0.1], [6.0, 0.0],  # group 7, label 0: two weak votes for 1, mean says 0
        [2.0, 0.0], [1.0, 0.0],  # group 3, label 1: wrong
        [0.0, 1.0],  # group 5, label 1: right
    ])  # fmt: skip
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    groups = torch.tensor([7, 7, 7, 3, 3, 5])
    assert per_group_accuracy(logits, y, groups) == pytest.approx(2 / 3)
    assert data.accuracy(logits, y) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="different labels"):
        per_group_accuracy(logits, torch.tensor([0, 1, 0, 1, 1, 1]), groups)


# --- generated sets ------------------------------------------------------------------------------

CHIRPS = dict(n_train=60, n_test=30, duration_ms=100)


def test_chirps_deterministic_balanced_and_seed_dependent():
    a = data.load("chirps", seed=5, **CHIRPS)
    b = data.load("chirps", seed=5, **CHIRPS)
    c = data.load("chirps", seed=6, **CHIRPS)
    assert a.x_train.shape == (60, 1, 1600) and a.x_test.shape == (30, 1, 1600)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert torch.bincount(a.y_train).tolist() == [6] * 10
    assert torch.bincount(a.y_test).tolist() == [3] * 10
    assert abs(a.x_train.mean().item()) < 1e-5
    assert a.x_train.std().item() == pytest.approx(1, abs=0.01)
    assert data.info("chirps", **CHIRPS) == a.info
    assert len(a.info.class_names) == 10


def test_chirps_calls_sit_in_the_clip_with_their_class_pitch():
    ds = data.load("chirps", seed=0, n_train=200, n_test=10)
    x = ds.x_train[:, 0].numpy() * ds.norm[1][0] + ds.norm[0][0]
    power = np.abs(np.fft.rfft(x, axis=1)) ** 2
    freqs = np.fft.rfftfreq(x.shape[1], 1 / 16000)
    centroid = (power * freqs).sum(axis=1) / power.sum(axis=1)
    # "fall" (5000 -> 2500 Hz) lies above "pure-low-rise" (1500 -> 3000 Hz) on average.
    names = ds.info.class_names
    fall = centroid[ds.y_train.numpy() == names.index("fall")].mean()
    low = centroid[ds.y_train.numpy() == names.index("pure-low-rise")].mean()
    assert fall > low + 1000


def test_mnist1d_deterministic_sizes_and_leaves_global_rngs_alone():
    np.random.seed(123)
    random.seed(123)
    a = data.load("mnist1d", seed=1, num_samples=200)
    assert np.random.rand() == np.random.RandomState(123).rand()
    assert random.random() == random.Random(123).random()
    b = data.load("mnist1d", seed=1, num_samples=200)
    c = data.load("mnist1d", seed=2, num_samples=200)
    assert a.x_train.shape == (160, 1, 40) and a.x_test.shape == (40, 1, 40)
    assert data.info("mnist1d", num_samples=200) == a.info
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    assert torch.bincount(torch.cat([a.y_train, a.y_test])).tolist() == [20] * 10
    assert abs(a.x_train.mean().item()) < 1e-5


# --- splits --------------------------------------------------------------------------------------

LABELS = np.repeat(np.arange(4), [30, 20, 25, 25])[np.random.default_rng(0).permutation(100)]


def test_split_balanced_disjoint_covering():
    s = make_split(LABELS, 12, seed=0, n_val=20)
    assert np.bincount(LABELS[s.labeled]).tolist() == [3, 3, 3, 3]
    # validation stratified: 30/20/25/25 % of 20
    assert np.bincount(LABELS[s.validation]).tolist() == [6, 4, 5, 5]
    parts = np.concatenate([s.labeled, s.validation, s.unlabeled])
    assert sorted(parts.tolist()) == list(range(100))
    assert len(s.unlabeled) == 68
    for part in (s.labeled, s.validation, s.unlabeled):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)


def test_split_deterministic_nested_and_seed_dependent():
    a = make_split(LABELS, 8, seed=4, n_val=20)
    assert make_split(torch.from_numpy(LABELS), 8, seed=4, n_val=20) == a
    b = make_split(LABELS, 16, seed=4, n_val=20)
    assert np.array_equal(a.validation, b.validation)
    assert set(a.labeled) < set(b.labeled)
    c = make_split(LABELS, 8, seed=5, n_val=20)
    assert not np.array_equal(a.labeled, c.labeled)
    assert a.digest() != c.digest()


def test_split_fully_supervised():
    s = make_split(LABELS, None, seed=0, n_val=10)
    assert len(s.unlabeled) == 0 and len(s.labeled) == 90


def test_split_errors():
    with pytest.raises(ConfigError, match="n_labeled=10 is not a multiple of the 4 classes"):
        make_split(LABELS, 10, seed=0)
    with pytest.raises(DataError, match="class 1 has 16 examples outside validation, 19"):
        make_split(LABELS, 76, seed=0, n_val=20)
    with pytest.raises(ConfigError, match="n_val=101 exceeds"):
        make_split(LABELS, 4, seed=0, n_val=101)
    with pytest.raises(DataError, match="overlap"):
        Split(np.array([1, 2]), np.array([2]), np.array([3]))


def test_split_with_groups_keeps_recordings_whole():
    groups = np.arange(100) // 5  # 20 recordings of five windows
    labels = groups % 4
    s = make_split(labels, 8, seed=2, n_val=12, groups=groups)
    val_groups = set(groups[s.validation])
    rest_groups = set(groups[np.concatenate([s.labeled, s.unlabeled])])
    assert not val_groups & rest_groups
    # 3 windows per class requested; whole recordings give 5 per class
    assert np.bincount(labels[s.validation]).tolist() == [5, 5, 5, 5]
    assert np.bincount(labels[s.labeled]).tolist() == [2, 2, 2, 2]
    with pytest.raises(DataError, match="more than one class"):
        make_split(np.arange(100) % 4, 8, seed=2, groups=groups)


def test_split_json_round_trip_is_compact():
    labels = np.arange(60000) % 10
    s = make_split(labels, 50, seed=1, n_val=100)
    text = s.to_json()
    assert len(text) < 10000  # the 59850 unlabeled indices collapse into runs
    back = Split.from_json(text)
    assert back == s and back.digest() == s.digest()
    assert set(json.loads(text)) == {"labeled", "validation", "unlabeled"}
    with pytest.raises(DataError, match="malformed"):
        Split.from_json('{"labeled": [[5, 2]], "validation": [], "unlabeled": []}')
    with pytest.raises(DataError, match="malformed"):
        Split.from_json("[1, 2]")


def test_generated_mnist1d_is_cached_on_disk_and_reads_back_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = data.load("mnist1d", num_samples=200, seed=3)
    cached = list((tmp_path / "invssl").glob("mnist1d-*-n200-s3.npz"))
    assert len(cached) == 1
    again = data.load("mnist1d", num_samples=200, seed=3)
    for a, b in ((first.x_train, again.x_train), (first.y_train, again.y_train), (first.x_test, again.x_test)):
        assert torch.equal(a, b)
    cached[0].write_bytes(b"not an npz")  # a damaged cache is regenerated, not trusted
    assert torch.equal(data.load("mnist1d", num_samples=200, seed=3).x_train, first.x_train)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    (tmp_path / "file").write_text("")  # the cache folder cannot be made: loading still works
    assert torch.equal(data.load("mnist1d", num_samples=200, seed=3).y_test, first.y_test)
