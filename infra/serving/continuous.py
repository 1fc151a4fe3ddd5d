"""Continuous batching: requests join the running batch between decoding steps and leave it when they end.

``SlotBatch`` holds the rows of one LoRA adapter (or of the base) in a ``SlotCache``. ``admit`` prefills a new
request into a free slot and emits its first token at once; ``step`` decodes one token for every row; a finished
or cancelled row frees its slot for the next request. Tokens are picked here (greedy, or temperature and top-p
with the request's own seeded generator), so rows with different sampling settings share a step. Text, stops,
logprobs and events are ``BatchRun``'s, the same as for onnxruntime-genai's static batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from infra.serving.batch import BatchRun, _Row
from infra.serving.protocol import GenerationRequest, Sampling
from infra.serving.slots import SlotDecoder


def pick(scores: np.ndarray, sampling: Sampling, rng: np.random.Generator, banned: Iterable[int] = ()) -> int:
    """The next token from one row's logits: the most likely (greedy) or drawn after temperature and top-p."""
    x = scores.astype(np.float64)
    banned = list(banned)
    if banned:
        x[banned] = -np.inf
    if sampling.greedy:
        return int(np.argmax(x))
    x = x / sampling.temperature
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        keep = int(np.searchsorted(np.cumsum(probs[order]), sampling.top_p)) + 1
        kept = order[:keep]
        return int(kept[rng.choice(len(kept), p=probs[kept] / probs[kept].sum())])
    return int(rng.choice(len(probs), p=probs))


@dataclass
class _Slot:
    row: _Row
    rng: np.random.Generator
    token: int = -1  # the last picked token, fed at the next step


class SlotBatch:
    """The running rows of one adapter: ``admit`` adds a request between steps, ``step`` decodes one token each."""

    def __init__(self, runner: BatchRun, decoder: SlotDecoder, slots: int, adapter: str | None):
        self.runner, self.decoder, self.adapter = runner, decoder, adapter
        self.cache = decoder.cache(slots)
        self.live: list[_Slot] = []  # live[i] is in cache slot i
        runner.stats.batches += 1

    @property
    def free(self) -> int:
        """Slots a new request can take."""
        return self.cache.slots - len(self.live)

    def admit(self, request: GenerationRequest) -> None:
        """Prefill ``request`` into the next free slot and emit its first token."""
        seed = request.sampling.seed
        slot = _Slot(self.runner.new_row(request), np.random.default_rng(None if seed is None else seed % 2**64))
        logits = self.decoder.prefill(self.cache, len(self.live), request.prompt_ids, self.adapter)
        self.live.append(slot)
        self.runner.stats.active += 1
        self._advance(slot, logits[-1])
        self._compact()

    def step(self) -> None:
        """Decode one token for every live row; finished and cancelled rows leave."""
        self.runner._drop_cancelled([s.row for s in self.live])
        self._compact()
        if not self.live:
            return
        logits = self.decoder.decode(self.cache, np.array([s.token for s in self.live]), self.adapter)
        for slot, scores in zip(self.live, logits, strict=True):
            self._advance(slot, scores)
        self._compact()

    def abandon(self) -> list[GenerationRequest]:
        """Forget every row after a failure; their requests (for the caller to tell)."""
        requests = [s.row.request for s in self.live if not s.row.done]
        self.runner.stats.active -= len(requests)
        self.live.clear()
        return requests

    def _advance(self, slot: _Slot, scores: np.ndarray) -> None:
        row, sampling = slot.row, slot.row.request.sampling
        banned = self.runner.eos_ids if len(row.tokens) < sampling.min_tokens else ()
        slot.token = pick(scores, sampling, slot.rng, banned)
        self.runner._advance(row, slot.token, scores if row.request.top_logprobs is not None else None)

    def _compact(self) -> None:
        """Fill each finished row's slot with the last live row, so the live rows stay the first slots."""
        i = 0
        while i < len(self.live):
            if not self.live[i].row.done:
                i += 1
                continue
            last = len(self.live) - 1
            if i != last:
                self.cache.move(last, i)
                self.live[i] = self.live[last]
            self.live.pop()

