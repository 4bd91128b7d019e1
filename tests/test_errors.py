"""core.errors: the one helper that puts a foreign failure in one line."""

from core.errors import describe, first_line


def test_first_line_is_the_first_stripped_line_cut_at_the_limit():
    assert first_line(RuntimeError("\n  size mismatch for w\n  copying a param\n")) == "size mismatch for w"
    assert first_line(RuntimeError("")) == "" and first_line("") == ""
    assert first_line(ValueError("abcdef"), 3) == "abc"
    assert first_line("text\nmore") == "text"


def test_describe_names_the_type_and_the_first_line():
    assert describe(OSError("disk\nfull")) == "OSError: disk"
    assert describe(ValueError("x" * 300)) == "ValueError: " + "x" * 200
