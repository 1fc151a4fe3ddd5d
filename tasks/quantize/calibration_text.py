"""General text for GPTQ calibration: a plain file or the Python reference topics, cut into token windows.

GPTQ fits each layer to the activations of its calibration rows. Rows of one narrow task keep the task and lose
general text (bench/RESULTS.md, "int4 on a real SLM"); mixing windows of general prose in keeps both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PYTHON_DOCS = "python-docs"


def check_source(source: str) -> str:
    """``source`` if it names a readable text (``python-docs`` or an existing file), else a ValueError saying which
    exist."""
    if source != PYTHON_DOCS and not Path(source).expanduser().is_file():
        raise ValueError(f"file not found: {source} (a plain UTF-8 text file, or {PYTHON_DOCS!r})")
    return source


def read_text(source: str) -> str:
    """The whole text of ``source``: a UTF-8 file, or every pydoc_data topic of this Python, in name order."""
    if source == PYTHON_DOCS:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[name] for name in sorted(topics))
    return Path(check_source(source)).expanduser().read_text(encoding="utf-8")


def text_rows(tokenizer: Any, source: str, count: int, length: int) -> list[list[int]]:
    """``count`` windows of ``length`` tokens of ``source``, evenly spaced over the whole text (never overlapping).

    Raises ValueError when the text holds fewer than ``count`` whole windows.
    """
    ids = tokenizer(read_text(source), add_special_tokens=False)["input_ids"]
    windows = len(ids) // length
    if windows < count:
        raise ValueError(f"quantize.olive_calibration_text {source}: {len(ids)} tokens make {windows} window(s) of "
                         f"{length}, {count} needed (lower olive_calibration_samples or olive_calibration_text_share)")
    starts = [length * (i * windows // count) for i in range(count)]
    return [ids[s: s + length] for s in starts]
