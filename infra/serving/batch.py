"""One static onnxruntime-genai batch: right-padded prompts, each row decoded, stopped and cancelled on its own."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from tokenizers.decoders import DecodeStream

from infra.serving.protocol import Delta, Done, EngineStats, GenerationRequest, TokenLogprob
from tasks.decoding import OgModel, start_batch


def plan_batches(requests: Sequence[GenerationRequest], context_length: int,
                 max_batch_size: int) -> list[list[GenerationRequest]]:
    """Split waiting requests into batches that share sampling settings and adapter and fit the context window.

    A static batch reserves ``longest prompt + largest max_tokens`` positions, so two requests that each fit
    alone may not fit together; first-fit in arrival order keeps every request that fits alone runnable.
    """
    batches: list[list[GenerationRequest]] = []
    for request in requests:
        for batch in batches:
            width = max(len(request.prompt_ids), *(len(r.prompt_ids) for r in batch))
            budget = max(request.max_tokens, *(r.max_tokens for r in batch))
            if (batch[0].sampling == request.sampling and batch[0].adapter == request.adapter
                    and len(batch) < max_batch_size
                    and width + budget <= context_length):
                batch.append(request)
                break
        else:
            batches.append([request])
    return batches


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


@dataclass
class _Row:
    request: GenerationRequest
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # text emitted so far
    decoded: str = ""  # text of all tokens so far (may end inside a character or a stop sequence)
    pending: list[TokenLogprob] = field(default_factory=list)  # logprobs of tokens whose text is held back
    stream: Any = None  # incremental detokenizer (tokenizers' DecodeStream), when the tokenizer allows one
    done: bool = False
    first_token_s: float | None = None


class BatchRun:
    """Starts static batches and decodes them; every row ends with Done, or silently when cancelled."""

    def __init__(self, model: OgModel, tokenizer: Any, token_text: TokenText, stats: EngineStats):
        self.model, self.tokenizer, self.token_text, self.stats = model, tokenizer, token_text, stats
        self.eos_ids = model.eos_ids
        # each token's text is decoded once (DecodeStream) instead of the whole answer again per token; a
        # tokenizer that cleans up spaces over the whole text (or has no Rust backend) is decoded whole
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.incremental = self.backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True)

    def new_row(self, request: GenerationRequest) -> _Row:
        """A row for ``request``, with its own incremental detokenizer."""
        return _Row(request, stream=DecodeStream(skip_special_tokens=True) if self.incremental else None)

    def _text(self, row: _Row, token: int) -> tuple[str, bool]:
        """The row's text after ``token`` and whether it is complete (not ending inside a UTF-8 character)."""
        if row.stream is None:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            return text, not text.endswith("\ufffd")
        # DecodeStream returns None until a token completes a character: the text then stays as it was
        return row.decoded + (row.stream.step(self.backend, token) or ""), True

    def run(self, requests: list[GenerationRequest]) -> None:
        """Decode ``requests`` together until every row has finished or been cancelled."""
        batch = self.start(requests)
        while not batch.step():
            pass

    def start(self, requests: list[GenerationRequest]) -> ActiveBatch:
        """Prefill ``requests`` as one batch, ready to be stepped (possibly in turn with other batches)."""
        return ActiveBatch(self, requests)

    def _start(self, requests: list[GenerationRequest]) -> Any:
        # plan_batches made every batch fit the context window; each row stops at its own max_tokens
        generator = start_batch(self.model, [r.prompt_ids for r in requests], max(r.max_tokens for r in requests),
                                requests[0].sampling, requests[0].adapter)
        self.stats.batches += 1
        return generator

    def _drop_cancelled(self, rows: list[_Row]) -> None:
        for row in rows:
            if not row.done and row.request.cancelled:
                row.done = True
                self.stats.cancelled += 1
                self.stats.active -= 1

    def _advance(self, row: _Row, token: int, scores: np.ndarray | None) -> None:
        self.stats.tokens += 1
        if row.first_token_s is None:
            row.first_token_s = time.perf_counter() - row.request.enqueued
        if token in self.eos_ids:
            self._finish(row, "stop")
            return
        row.tokens.append(token)
        if scores is not None:
            # while min_tokens is unmet end-of-sequence cannot be drawn: it gets no probability (as in the search)
            banned = self.eos_ids if len(row.tokens) <= row.request.sampling.min_tokens else ()
            row.pending.append(self._logprob(scores, token, row.request.top_logprobs or 0, banned))
        text, complete = self._text(row, token)
        row.decoded = text
        for stop in row.request.stop:
            cut = text.find(stop)
            if cut != -1:
                self._finish(row, "stop", text[:cut])
                return
        if len(row.tokens) >= row.request.max_tokens:
            self._finish(row, "length")
        elif complete:  # an incomplete UTF-8 sequence waits for the next token
            self._emit(row, text[: len(text) - _held_back(text, row.request.stop)])

    def _logprob(self, scores: np.ndarray, token: int, k: int, banned: Iterable[int] = ()) -> TokenLogprob:
        x = scores.astype(np.float64)
        x[list(banned)] = -np.inf
        x -= x.max()
        logprobs = x - np.log(np.exp(x).sum())
        top = np.argpartition(-logprobs, k)[:k] if 0 < k < len(logprobs) else np.arange(len(logprobs))[:k]
        top = top[np.argsort(-logprobs[top], kind="stable")]
        return TokenLogprob(token, self.token_text.text(token), self.token_text.bytes(token), float(logprobs[token]),
                            [TokenLogprob(int(t), self.token_text.text(int(t)), self.token_text.bytes(int(t)),
                                          float(logprobs[t])) for t in top])

    @staticmethod
    def _emit(row: _Row, text: str, force: bool = False) -> None:
        grows = len(text) > len(row.text) and text.startswith(row.text)
        if grows or (force and row.pending):
            new = text[len(row.text):] if grows else ""
            row.request.emit(Delta(new, row.pending))
            row.text, row.pending = (text if grows else row.text), []

    def _finish(self, row: _Row, reason: str, text: str | None = None) -> None:
        self._emit(row, row.decoded if text is None else text, force=True)
        row.done = True
        self.stats.active -= 1
        row.request.emit(Done(reason, row.text, len(row.request.prompt_ids), len(row.tokens),
                              row.first_token_s or 0.0))


class ActiveBatch:
    """One static batch in progress: each ``step`` decodes one token for every live row."""

    def __init__(self, runner: BatchRun, requests: list[GenerationRequest]):
        self.runner, self.rows = runner, [runner.new_row(r) for r in requests]
        self.generator = runner._start(requests)
        self.first = True
        runner.stats.active += len(self.rows)

    def step(self) -> bool:
        """Decode one token for each live row; True once every row has finished (or been cancelled)."""
        runner, rows, generator = self.runner, self.rows, self.generator
        runner._drop_cancelled(rows)
        if all(row.done for row in rows):
            return True
        if generator.is_done():
            return self.finish()
        generator.generate_next_token()
        tokens = generator.get_next_tokens()
        wants = any(r.request.top_logprobs is not None and not r.done for r in rows)
        logits = np.asarray(generator.get_output("logits")) if wants else None
        for i, row in enumerate(rows):
            if row.done:
                continue
            # the first step's logits cover every prompt position: a row's own last one predicted it
            position = len(row.request.prompt_ids) - 1 if self.first else -1
            scores = logits[i, position] if logits is not None else None
            runner._advance(row, int(tokens[i]), scores)
        self.first = False
        return self.finish() if generator.is_done() else all(row.done for row in rows)

    def finish(self) -> bool:
        """End every unfinished row with ``length`` (the generator reached its budget)."""
        for row in self.rows:
            if not row.done:
                self.runner._finish(row, "length")
        return True

    def abandon(self) -> None:
        """Forget the unfinished rows after a failure (the caller has told their requests)."""
        for row in self.rows:
            if not row.done:
                row.done = True
                self.runner.stats.active -= 1

    def unfinished(self) -> list[GenerationRequest]:
        """Requests whose rows have not ended."""
        return [row.request for row in self.rows if not row.done]


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of ``text`` that may begin a stop sequence, so must not be sent yet."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:n]):
                held = n
                break
    return held
