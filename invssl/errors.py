"""The library's own exceptions.

Every error a user can cause by bad input or a broken environment is an ``InvsslError``; its
message is one line meant for a person, in the library's terms: it names no command-line
option. Only ``cli.py`` turns these into exit codes, and into pointers to its own options.
"""

from __future__ import annotations

from typing import Optional


class InvsslError(Exception):
    """Base class: a failure the user can act on, described in one line.

    ``option`` names the part of the request whose change fixes it ("dataset": the dataset
    asked for; "fields": the fields that split or filter the jobs), for a front end to point
    to its own way of setting it.
    """

    def __init__(self, *args: object, option: Optional[str] = None) -> None:
        super().__init__(*args)
        self.option = option


class UnknownNameError(InvsslError, ValueError):
    """A name that is not in a registry (topology, dataset, table...)."""


class ConfigError(InvsslError, ValueError):
    """An experiment file or job configuration that cannot be used."""


class DataError(InvsslError):
    """Data that is missing, malformed or too small for the request."""


class DatabaseError(InvsslError):
    """A results database that cannot be opened or is at another schema revision."""


class SchemaMismatch(DatabaseError):
    """A database whose schema revision this invssl does not use; ``where`` is its masked URL."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where


class DatabaseLost(DatabaseError):
    """The database went away under a running process (file deleted, server down for good)."""


class JobError(InvsslError):
    """A training job that failed (non-finite loss, out of memory...)."""
