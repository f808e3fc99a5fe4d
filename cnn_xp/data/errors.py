"""The one error type of the data package."""
from __future__ import annotations

from ..errors import DataError


class DatasetError(DataError):
    """A data set cannot be found, downloaded or read.

    The message is one line that names the file (or folder) and the reason, so a
    command-line front end can print it as is and exit with status 2.
    """
