"""The library's own exceptions.

Every error a user can cause by bad input or a broken environment is an ``InvsslError``; its
message is one line meant for a person. Only ``cli.py`` turns these into exit codes.
"""


class InvsslError(Exception):
    """Base class: a failure the user can act on, described in one line."""


class UnknownNameError(InvsslError, ValueError):
    """A name that is not in a registry (topology, dataset, table...)."""


class ConfigError(InvsslError, ValueError):
    """An experiment file or job configuration that cannot be used."""


class DataError(InvsslError):
    """Data that is missing, malformed or too small for the request."""


class DatabaseError(InvsslError):
    """A results database that cannot be opened or is at another schema revision."""


class DatabaseLost(DatabaseError):
    """The database went away under a running process (file deleted, server down for good)."""


class JobError(InvsslError):
    """A training job that failed (non-finite loss, out of memory...)."""
