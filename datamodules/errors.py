"""Errors a user can fix in their data: raised with a message that names the file, column or row and the fix."""


class DataError(ValueError):
    """Missing, truncated or malformed data; the message says which file (and row/column) and what to do."""
