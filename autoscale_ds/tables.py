"""Plain-text tables for the CLI's human-readable output."""

from typing import List, Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-align text, right-align numbers; floats are pre-formatted by the caller."""
    cells: List[List[str]] = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        parts = [_align(text, width, rows[index - 1][i] if index else "")
                 for i, (text, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    """The same cells as :func:`format_table`, as Markdown table lines."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _align(text: str, width: int, original: object) -> str:
    numeric = isinstance(original, (int, float)) and not isinstance(original, bool)
    return text.rjust(width) if numeric else text.ljust(width)


def human_tokens(count: float) -> str:
    """1234567 -> '1.23M' (for tables; files always carry exact numbers)."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.3g}{suffix}"
    return f"{count:.0f}"
