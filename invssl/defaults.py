"""Defaults of the worker settings a user may change, named once for the library and the CLI."""

HEARTBEAT_S = 10.0  # seconds between heartbeats of a running job
# A running job whose heartbeat is older than this is presumed dead and goes back to the queue.
STALE_AFTER_S = 120.0
MAX_ATTEMPTS = 3  # a failed job is retried only while it has been tried fewer times
