"""The structured-output mask (tasks/engine/structured.py) over the trained tiny teacher's tokenizer; the served
path (response_format over HTTP) is tests/infra/serving/test_structured_outputs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.engine.structured import Constraints, GrammarError, format_grammar


def test_the_mask_allows_exactly_what_the_grammar_takes(tiny_onnx: Path) -> None:
    from tasks.modeling import load_tokenizer
    from tasks.served_folder import ServedFolder

    folder, tokenizer = ServedFolder.read(tiny_onnx), load_tokenizer(str(tiny_onnx))
    row = Constraints(tokenizer, folder.vocab_size, folder.eos_ids).matcher(format_grammar({"type": "json_object"}))
    scores = row.mask(np.zeros(folder.vocab_size, np.float32))
    allowed = np.flatnonzero(np.isfinite(scores))
    assert len(allowed) and all(tokenizer.decode([int(t)]).lstrip().startswith("{") for t in allowed)
    assert not set(folder.eos_ids) & set(allowed.tolist()), "no end-of-sequence before the object"
    with pytest.raises(GrammarError):
        format_grammar({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}})
