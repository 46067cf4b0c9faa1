"""The one exception type that reaches the user.

Anything raised as `LrwaError` is a problem with the user's input or
environment; the CLI prints its message on a single line and exits non-zero,
without a traceback. Every other exception is a bug and keeps its traceback.
"""


class LrwaError(Exception):
    """A user-facing error whose message names the problem in one line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (cut to 300 characters), or its type's name
    when it has none: what a one-line LrwaError quotes of another library's exception."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
