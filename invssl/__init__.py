"""invssl: semi-supervised learning by deep-network inversion."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("invssl")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
