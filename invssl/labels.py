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
    """A config value in a label: numbers as they are, a schedule in its short form (as in reports)."""
    if isinstance(value, Mapping) and "kind" in value:
        return str(weight_label(value))
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)


def job_label(config: Mapping[str, Any]) -> str:
    """``topology dataset N_L=.. a=.. b=.. seed=..``, leaving out the fields ``config`` lacks."""
    return " ".join(form.format(short(config[k])) for k, form in _PARTS if config.get(k) is not None) or "?"


def number_text(value: float) -> str:
    return f"{float(value):g}"


def weight_label(spec: Any) -> Any:
    """A loss weight for display and grouping: constants as floats, schedules as short text.

    ``{"kind": "ramp", "start": 0, "end": 0.5, "until": 10}`` -> ``"ramp(0>0.5@10)"``;
    ``since`` shows as ``@2-10``; a step schedule as ``"step(0.1>0.5>1@5,10)"``; a learned weight
    as ``"learned(0.5,lr=0.01)"``.
    """
    if spec is None:
        return None
    if isinstance(spec, bool):
        return float(spec)
    if isinstance(spec, (int, float)):
        return float(spec)
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        kind = spec.get("kind", "constant")
        if kind == "constant":
            return float(spec["value"])
        if kind in ("ramp", "cosine"):
            since = float(spec.get("since", 0.0) or 0.0)
            span = f"{number_text(since)}-{number_text(spec['until'])}" if since else number_text(spec["until"])
            name = "cos" if kind == "cosine" else "ramp"
            return f"{name}({number_text(spec['start'])}>{number_text(spec['end'])}@{span})"
        if kind == "step":
            values = ">".join(number_text(v) for v in spec["values"])
            at = ",".join(number_text(a) for a in spec["at"])
            return f"step({values}@{at})"
        if kind == "learned":
            return f"learned({number_text(spec.get('init', 0.5))},lr={number_text(spec.get('lr', 0.01))})"
        return json.dumps(dict(spec), sort_keys=True, separators=(",", ":"))
    return str(spec)
