"""Datasets, one registry of loaders, and the labeled / validation / unlabeled splits.

``sources`` holds the registry and what every loader returns; ``vision``, ``mnist1d``,
``chirps`` and ``wav`` are the families of sources; ``splits`` draws a job's labeled,
validation and unlabeled sets; ``accuracy`` scores predictions.
"""

from invssl.data import chirps, mnist1d, vision, wav
from invssl.data.accuracy import accuracy, per_group_accuracy
from invssl.data.sources import (
    SCALINGS,
    Dataset,
    DatasetInfo,
    canonical,
    ensure_files,
    info,
    load,
    names,
    scale_inputs,
)
from invssl.data.splits import Split, make_split

# Registered in this order, the order ``names()`` lists them in.
for _family in (vision, mnist1d, chirps, wav):
    _family.register()

__all__ = [
    "SCALINGS",
    "scale_inputs",
    "Dataset",
    "DatasetInfo",
    "Split",
    "accuracy",
    "canonical",
    "ensure_files",
    "info",
    "load",
    "make_split",
    "names",
    "per_group_accuracy",
]
