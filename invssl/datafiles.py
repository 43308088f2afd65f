"""Dataset files on disk: presence checks, IDX reading (plain or gzip), downloads under a lock.

The IDX sets (MNIST, Fashion-MNIST, KMNIST) are read here rather than by torchvision, which
accepts only the uncompressed files, while mirrors and packages ship ``*-ubyte.gz``. Downloads
go through torchvision, one process at a time per folder: parallel workers starting together
would otherwise write the same files at once.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from invssl.errors import DataError

# IDX type codes (the format's third magic byte) and their big-endian numpy types.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
LOCK_NAME = ".invssl-download.lock"


def find(folder: Path, name: str, gz_too: bool) -> Path | None:
    """``folder/name``, else ``folder/name.gz`` where gzip is accepted, else None."""
    for candidate in (name, f"{name}.gz") if gz_too else (name,):
        path = folder / candidate
        if path.is_file():
            return path
    return None


def missing(folder: Path, names: Sequence[str], gz_too: bool) -> list[str]:
    return [n for n in names if find(folder, n, gz_too) is None]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (``*-ubyte`` or ``*-ubyte.gz``) as a numpy array of its own shape and type."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path.name}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path.name}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path.name}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">i4"))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path.name}: {len(raw) - header} data bytes where the header promises {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


@contextmanager
def download_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if absent) across processes on this host
    and, where the file system supports ``flock``, across hosts sharing it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_NAME, "a+b")
    except OSError as exc:
        raise DataError(f"cannot write in {folder}: {exc.strerror or exc}") from None
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; one process per data folder is on the user
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


def fetch(
    title: str, root: Path, folder: Path, names: Sequence[str], gz_too: bool, download: Callable[[], None]
) -> None:
    """Make ``names`` present in ``folder``, calling ``download`` under the lock if some are
    missing; a failed download is one DataError that says how to go on without a network."""
    if not missing(folder, names, gz_too):
        return
    with download_lock(root):
        # Another process may have finished the download while this one waited.
        if not missing(folder, names, gz_too):
            return
        try:
            download()
        except Exception as exc:  # torchvision raises assorted types for network faults
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise DataError(
                f"cannot download {title} into {folder}: {reason}. Without a network, copy "
                f"{', '.join(names)} there (gzip is fine for MNIST-style sets) and set "
                "download: false"
            ) from None
    still = missing(folder, names, gz_too)
    if still:
        raise DataError(f"{title}: download finished but {', '.join(still)} is missing in {folder}")
