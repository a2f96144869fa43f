"""The one base class for errors caused by the user's input (params, data, model files).

Front ends (stage entry points, the CLI) print these as a single clear message and exit
with status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the file, key or field and what is wrong."""


class MissingInput(UserError, FileNotFoundError):
    """An artifact a stage reads is absent (usually: an upstream stage has not run)."""
