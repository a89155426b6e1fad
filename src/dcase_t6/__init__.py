"""dcase-t6: language-based audio retrieval toolkit for DCASE Challenge Task 6."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dcase-t6")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
