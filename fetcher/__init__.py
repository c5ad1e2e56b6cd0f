"""DECODE OpenCloud job fetcher."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("decode-fetcher")
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0+unknown"
