"""How a job is named for people: one format in logs, listings, legends and titles.

It works on a stored config (plain JSON values) and needs none of its fields: a config this
version no longer accepts, or a partial one, is still named by what it has.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_PARTS = (
    ("topology", "{}"),
    ("dataset", "{}"),
    ("n_labeled", "N_L={}"),
    ("alpha", "a={}"),
    ("beta", "b={}"),
    ("seed", "seed={}"),
)


def short(value: Any) -> str:
    """A config value in a label: numbers as they are, a schedule as compact JSON."""
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)


def job_label(config: Mapping[str, Any]) -> str:
    """``topology dataset N_L=.. a=.. b=.. seed=..``, leaving out the fields ``config`` lacks."""
    return " ".join(form.format(short(config[k])) for k, form in _PARTS if config.get(k) is not None) or "?"
