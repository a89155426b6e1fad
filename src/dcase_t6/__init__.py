"""dcase-t6: language-based audio retrieval toolkit for DCASE Challenge Task 6."""

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dcase-t6")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# A library logs and never configures logging: its records reach nobody until the user (or `dcase-t6 --log-file`)
# adds a handler to this logger or to the root.
logging.getLogger("dcase_t6").addHandler(logging.NullHandler())
