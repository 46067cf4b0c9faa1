"""The one exception type that reaches the user.

Anything raised as `LrwaError` is a problem with the user's input or
environment; the CLI prints its message on a single line and exits non-zero,
without a traceback. Every other exception is a bug and keeps its traceback.
"""


class LrwaError(Exception):
    """A user-facing error whose message names the problem in one line."""
