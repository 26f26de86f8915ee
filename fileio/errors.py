"""Errors a user can fix in their data or files: the message names the file, column or row and the fix."""


class DataError(ValueError):
    """Missing, truncated or malformed data or files; the message says which file (and row/column) and what to do."""
