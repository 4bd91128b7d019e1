"""Number formatting shared by the CLI tables and the TUI."""

from __future__ import annotations

import math


def num(x: float | None, digits: int = 4) -> str:
    """Compact number: 4 significant digits, scientific when very small/large, '-' for missing/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 2, 1)}e}"


def count(n: int | None) -> str:
    """Human count: 853,018 -> '853.0K', 8.2e9 -> '8.18G'."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.{3 if unit == 'G' else 1 if unit == 'K' else 2}f}{unit}"
    return str(n)


def shape(s) -> str:
    return "x".join(str(int(d)) for d in s)


def percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def duration(seconds: float | None) -> str:
    """Seconds as h:mm:ss ('-' when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def ms(x: float | None) -> str:
    """Milliseconds with 3 decimals, so that values read alike side by side ('-' when unknown)."""
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f} ms"


def plural(n: int, word: str) -> str:
    """'1 input channel', '3 input channels', '10 classes'."""
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


def jb_p(jb: float | None, p: float | None) -> str:
    """The Jarque-Bera p-value; one that underflows to 0 is shown from its closed form (chi-square
    with 2 degrees of freedom: p = exp(-jb / 2)), so it reads as small, not as zero."""
    if p is None or jb is None or p != 0 or not math.isfinite(jb):
        return num(p, 3)
    exponent = -jb / (2 * math.log(10))
    e = math.floor(exponent)
    return f"{10 ** (exponent - e):.2f}e{e}"
