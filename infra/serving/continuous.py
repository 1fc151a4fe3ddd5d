"""Continuous batching: requests join the running batch between decoding steps and leave it when they end.

``SlotBatch`` holds the running rows in a ``SlotCache``, each with its own LoRA adapter (or the base). ``admit``
prefills new requests into free slots and emits their first tokens at once; ``step`` decodes one token for every
row; a finished or cancelled row frees its slot for the next request. Tokens are picked here (greedy, or
temperature and top-p with the request's own seeded generator), so rows with different sampling settings share
a step. Text, stops, logprobs and events are ``BatchRun``'s, the same as for onnxruntime-genai's static batches.
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
    banned = list(banned)
    if sampling.greedy and not banned:
        return int(np.argmax(scores))
    x = scores.astype(np.float64)
    x[banned] = -np.inf
    if sampling.greedy:
        return int(np.argmax(x))
    probs = np.exp((x - x.max()) / sampling.temperature)
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        kept = nucleus(probs, sampling.top_p)
        return int(kept[rng.choice(len(kept), p=probs[kept] / probs[kept].sum())])
    return int(rng.choice(len(probs), p=probs))


def nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The most likely tokens, most likely first, whose probabilities first add up to ``top_p`` (at least one).

    Sorts only the top k (k doubling from 64) instead of the whole vocabulary: the same set, far faster.
    """
    k = 64
    while True:
        k = min(k, len(probs))
        top = np.argpartition(-probs, k - 1)[:k] if k < len(probs) else np.arange(len(probs))
        top = top[np.argsort(-probs[top], kind="stable")]
        mass = np.cumsum(probs[top])
        if mass[-1] >= top_p or k == len(probs):
            return top[: int(np.searchsorted(mass, top_p)) + 1]
        k *= 2


PREFILL_TOKENS = 2048  # padded prompt positions prefilled in one run at most (one longer prompt runs alone)


def prefill_groups(requests: list[GenerationRequest], budget: int) -> list[list[GenerationRequest]]:
    """Consecutive groups of ``requests`` whose padded size (rows × longest prompt) stays within ``budget``."""
    groups: list[list[GenerationRequest]] = []
    for request in requests:
        group = groups[-1] if groups else None
        if group and (len(group) + 1) * max(len(request.prompt_ids), *(len(r.prompt_ids) for r in group)) <= budget:
            group.append(request)
        else:
            groups.append([request])
    return groups


@dataclass
class _Slot:
    row: _Row
    rng: np.random.Generator
    token: int = -1  # the last picked token, fed at the next step


class SlotBatch:
    """The running rows: ``admit`` adds requests between steps, ``step`` decodes one token for each, every row with
    its own LoRA adapter (or the base)."""

    def __init__(self, runner: BatchRun, decoder: SlotDecoder, slots: int):
        self.runner, self.decoder = runner, decoder
        self.cache = decoder.cache(slots)
        self.live: list[_Slot] = []  # live[i] is in cache slot i
        runner.stats.batches += 1

    @property
    def free(self) -> int:
        """Slots a new request can take."""
        return self.cache.slots - len(self.live)

    def admit(self, requests: list[GenerationRequest]) -> None:
        """Prefill ``requests`` (no more than ``free``) into the next free slots and emit each one's first token.

        Prompts are prefilled together in groups of at most ``PREFILL_TOKENS`` padded positions (or one prompt):
        the group size bounds the activations and key/value outputs of one prefill run.
        """
        for group in prefill_groups(requests, PREFILL_TOKENS):
            slots = [_Slot(self.runner.new_row(r), np.random.default_rng(None if r.sampling.seed is None
                                                                         else r.sampling.seed % 2**64))
                     for r in group]
            logits = self.decoder.prefill(self.cache, len(self.live), [r.prompt_ids for r in group],
                                          [r.adapter for r in group])
            self.live += slots
            self.runner.stats.active += len(slots)
            for slot, scores in zip(slots, logits, strict=True):
                self._advance(slot, scores)
        self._compact()

    def step(self) -> None:
        """Decode one token for every live row; finished and cancelled rows leave."""
        self.runner._drop_cancelled([s.row for s in self.live])
        self._compact()
        if not self.live:
            return
        logits = self.decoder.decode(self.cache, np.array([s.token for s in self.live]),
                                     [s.row.request.adapter for s in self.live])
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
        row, sampling, constraint = slot.row, slot.row.request.sampling, slot.row.request.constraint
        if constraint is not None:  # a structured output: only what its grammar takes next (EOS once complete)
            slot.token = pick(constraint.mask(scores), sampling, slot.rng)
            constraint.accept(slot.token)
        else:
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

