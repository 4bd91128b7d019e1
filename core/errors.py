"""The one exception type users see: a clear, single-line explanation of bad input."""


class WorkbenchError(Exception):
    """Bad input or an impossible request, worded for the user.

    The message says what is wrong, which file or field, and what to do. The CLI prints it
    as one line (plus indented detail lines where a list is the point, e.g. mismatched
    tensors) and exits with code 2.
    """

    exit_code = 2
