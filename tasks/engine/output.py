"""Each request's output state: its tokens, detokenized incrementally (UTF-8 held back until complete), stop
strings, logprobs and the events its caller receives — the same for every scheduler.

``Outputs`` holds what rows share (the tokenizer, end-of-sequence ids, the engine's counters); ``Outputs.open``
gives a request its ``RowOutput``. A scheduler picks each token and hands it to ``RowOutput.add``, which
emits ``Delta`` events and, once the row ends (end-of-sequence, a stop string, ``max_tokens``), ``Done``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np
from tokenizers.decoders import DecodeStream

from tasks.engine.protocol import Delta, Done, EngineStats, GenerationRequest, TokenLogprob
from tasks.engine.sampling import log_softmax, top_k


class TokenText:
    """Text and bytes of single tokens, for logprobs (byte-level BPE tokens may hold part of a character)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.byte_level = "ByteLevel" in repr(getattr(backend, "decoder", ""))
        self.unbyte = {c: b for b, c in _bytes_to_unicode().items()}
        self.text = lru_cache(maxsize=65536)(self._text)
        self.bytes = lru_cache(maxsize=65536)(self._bytes)

    def _text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _bytes(self, token_id: int) -> list[int]:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if self.byte_level and isinstance(piece, str) and all(c in self.unbyte for c in piece):
            return [self.unbyte[c] for c in piece]
        return list(self.text(token_id).encode("utf-8"))

    def logprob(self, scores: np.ndarray, token: int, k: int, banned: Iterable[int] = ()) -> TokenLogprob:
        """``token``'s log-probability under ``scores`` and the ``k`` most likely alternatives."""
        logprobs = log_softmax(scores, banned)
        return TokenLogprob(token, self.text(token), self.bytes(token), float(logprobs[token]),
                            [TokenLogprob(int(t), self.text(int(t)), self.bytes(int(t)), float(logprobs[t]))
                             for t in top_k(logprobs, k)])


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte ↔ printable-character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


class Outputs:
    """What every row's output shares: the tokenizer, the end-of-sequence ids and the engine's counters."""

    def __init__(self, tokenizer: Any, eos_ids: Iterable[int], stats: EngineStats):
        self.tokenizer, self.eos_ids, self.stats = tokenizer, frozenset(eos_ids), stats
        self.token_text = TokenText(tokenizer)
        # each token's text is decoded once (DecodeStream) instead of the whole answer again per token; a
        # tokenizer that cleans up spaces over the whole text (or has no Rust backend) is decoded whole
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.incremental = self.backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True)

    def open(self, request: GenerationRequest) -> RowOutput:
        """The output state of ``request``, now running (counted in ``stats.active`` until it ends)."""
        self.stats.active += 1
        return RowOutput(self, request)


class RowOutput:
    """One running request: its tokens, its text so far, logprobs held back with their text, its events."""

    def __init__(self, outputs: Outputs, request: GenerationRequest):
        self.outputs, self.request = outputs, request
        self.tokens: list[int] = []
        self.text = ""  # text emitted so far
        self.decoded = ""  # text of all tokens so far (may end inside a character or a stop sequence)
        self.pending: list[TokenLogprob] = []  # logprobs of tokens whose text is held back
        self.stream = DecodeStream(skip_special_tokens=True) if outputs.incremental else None
        self.done = False
        self.first_token_s: float | None = None

    def banned(self) -> frozenset[int]:
        """Tokens the row may not pick next: end-of-sequence while ``min_tokens`` is unmet."""
        return self.outputs.eos_ids if len(self.tokens) < self.request.sampling.min_tokens else frozenset()

    def add(self, token: int, scores: np.ndarray | None = None) -> None:
        """Take the row's next token (``scores``: the logits it was picked from, for logprobs); emits what text is
        complete and, when the row ends, ``Done``."""
        outputs = self.outputs
        outputs.stats.tokens += 1
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.request.enqueued
        if token in outputs.eos_ids:
            self.finish("stop")
            return
        self.tokens.append(token)
        if scores is not None and self.request.top_logprobs is not None:
            # while min_tokens is unmet end-of-sequence cannot be drawn: it gets no probability (as in the search)
            banned = outputs.eos_ids if len(self.tokens) <= self.request.sampling.min_tokens else ()
            self.pending.append(outputs.token_text.logprob(scores, token, self.request.top_logprobs, banned))
        text, complete = self._text(token)
        self.decoded = text
        for stop in self.request.stop:
            cut = text.find(stop)
            if cut != -1:
                self.finish("stop", text[:cut])
                return
        if len(self.tokens) >= self.request.max_tokens:
            self.finish("length")
        elif complete:  # an incomplete UTF-8 sequence waits for the next token
            self._emit(text[: len(text) - held_back(text, self.request.stop)])

    def finish(self, reason: str, text: str | None = None) -> None:
        """End the row: emit the text held back (up to ``text`` when a stop string cut it) and ``Done``."""
        self._emit(self.decoded if text is None else text, force=True)
        self._end()
        self.request.emit(Done(reason, self.text, len(self.request.prompt_ids), len(self.tokens),
                               self.first_token_s or 0.0, list(self.tokens)))

    def drop_if_cancelled(self) -> bool:
        """End the row silently if its caller cancelled it; whether it has ended."""
        if not self.done and self.request.cancelled:
            self._end()
            self.outputs.stats.cancelled += 1
        return self.done

    def abandon(self) -> None:
        """End the row silently after a failure (the caller has told its request)."""
        if not self.done:
            self._end()

    def _end(self) -> None:
        self.done = True
        self.outputs.stats.active -= 1

    def _text(self, token: int) -> tuple[str, bool]:
        """The row's text after ``token`` and whether it is complete (not ending inside a UTF-8 character)."""
        if self.stream is None:
            text = self.outputs.tokenizer.decode(self.tokens, skip_special_tokens=True)
            return text, not text.endswith("\ufffd")
        # DecodeStream returns None until a token completes a character: the text then stays as it was
        return self.decoded + (self.stream.step(self.outputs.backend, token) or ""), True

    def _emit(self, text: str, force: bool = False) -> None:
        grows = len(text) > len(self.text) and text.startswith(self.text)
        if grows or (force and self.pending):
            new = text[len(self.text):] if grows else ""
            self.request.emit(Delta(new, self.pending))
            self.text, self.pending = (text if grows else self.text), []


def held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of ``text`` that may begin a stop sequence, so must not be sent yet."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:n]):
                held = n
                break
    return held
