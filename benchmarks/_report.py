"""How every benchmark publishes its table: printed, and written to its page in docs/."""

from __future__ import annotations

from pathlib import Path


def publish(lines: list[str], out: Path) -> None:
    """Print ``lines`` as one Markdown text and write it to ``out`` (folders created)."""
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
