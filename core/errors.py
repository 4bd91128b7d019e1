"""The one exception type users see: a clear, single-line explanation of bad input."""


class WorkbenchError(Exception):
    """Bad input or an impossible request, worded for the user.

    The message says what is wrong, which file or field, and what to do. The CLI prints it
    as one line (plus indented detail lines where a list is the point, e.g. mismatched
    tensors) and exits with code 2.
    """

    exit_code = 2


def first_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first line of an exception's message (or of a text), stripped, cut at `limit`
    characters; "" when there is none. For the detail in a one-line error."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else "")[:limit]


def describe(exc: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message`, for one-line errors about a foreign failure."""
    return f"{type(exc).__name__}: {first_line(exc, limit)}"
