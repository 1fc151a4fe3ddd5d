"""Structured outputs: a request's ``response_format`` compiled to a grammar, and each row's token mask.

llguidance (the constrained-decoding library llama.cpp and vLLM use) compiles a JSON schema, or "any JSON
object", to a grammar over the model's own tokenizer. Each constrained row keeps a matcher: before a token is
picked, the tokens the grammar cannot take next get -inf; the picked token is then fed to the matcher. Once the
value is complete the grammar allows only end-of-sequence, so the answer stops there (``finish_reason: stop``);
a row cut short by ``max_tokens`` ends with ``length`` and an incomplete value, as OpenAI's API does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import llguidance
import llguidance.hf
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

JSON_OBJECT_SCHEMA = {"type": "object"}


class GrammarError(ValueError):
    """A response format the grammar compiler refuses (the message says why)."""


def format_grammar(response_format: dict[str, Any]) -> str | None:
    """The llguidance grammar for an OpenAI ``response_format`` (already validated in shape), or None for text."""
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    schema = JSON_OBJECT_SCHEMA if kind == "json_object" else response_format["json_schema"].get("schema") or {}
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                                 defaults={"whitespace_flexible": False})
    except ValueError as exc:
        raise GrammarError(f"response_format: {exc}") from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise GrammarError(f"response_format: the schema cannot be enforced: {messages[0]}")
    return grammar


class Constraints:
    """One engine's grammar compiler: the model's tokenizer as llguidance sees it (built once, on first use)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]):
        self._hf, self.vocab_size, self.eos_ids = tokenizer, vocab_size, list(eos_ids)
        self._lock = threading.Lock()
        self._tokenizer: Any = None

    def _ll(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(self._hf, n_vocab=self.vocab_size,
                                                               eos_token=self.eos_ids)
            return self._tokenizer

    def matcher(self, grammar: str) -> RowConstraint:
        """A fresh constraint for one row."""
        matcher = llguidance.LLMatcher(self._ll(), grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"response_format: {matcher.get_error()}")
        return RowConstraint(matcher, self.vocab_size)


class RowConstraint:
    """A row's grammar state: masks its scores, follows its tokens."""

    def __init__(self, matcher: Any, vocab_size: int):
        self.matcher, self.vocab_size = matcher, vocab_size
        self._bitmask = allocate_token_bitmask(1, vocab_size)
        self._bits = np.arange(32, dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """Boolean mask over the vocabulary: the tokens the grammar accepts next."""
        fill_next_token_bitmask(self.matcher, self._bitmask)
        bits = (self._bitmask[0][:, None] >> self._bits) & 1
        return bits.reshape(-1)[: self.vocab_size].astype(bool)

    def mask(self, scores: np.ndarray) -> np.ndarray:
        """A copy of ``scores`` with every token the grammar cannot take next at -inf."""
        return np.where(self.allowed()[: scores.shape[-1]], scores, -np.inf).astype(scores.dtype, copy=False)

    def accept(self, token: int) -> None:
        """Feed the picked token to the grammar."""
        self.matcher.consume_token(int(token))
