"""The continuous scheduler: requests join the running batch between decoding steps and leave it when they end.

``SlotBatch`` holds the running rows in a ``SlotCache``, each with its own LoRA adapter (or the base). ``admit``
prefills new requests into free slots (in groups of at most ``PREFILL_TOKENS`` padded positions) and emits their
first tokens at once; ``step`` decodes one token for every row; a finished or cancelled row frees its slot for
the next request. Tokens are picked here (``tasks/engine/sampling.py``: greedy, or temperature and top-p with the
request's own seeded generator), so rows with different sampling settings share a step; each row's text, stops,
logprobs and events are its ``RowOutput``'s (``tasks/engine/output.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.engine.output import Outputs, RowOutput
from tasks.engine.protocol import GenerationRequest
from tasks.engine.sampling import pick
from tasks.engine.slots import SlotDecoder

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
    row: RowOutput
    rng: np.random.Generator
    token: int = -1  # the last picked token, fed at the next step


class SlotBatch:
    """The running rows: ``admit`` adds requests between steps, ``step`` decodes one token for each, every row with
    its own LoRA adapter (or the base)."""

    def __init__(self, outputs: Outputs, decoder: SlotDecoder, slots: int):
        self.outputs, self.decoder = outputs, decoder
        self.cache = decoder.cache(slots)
        self.live: list[_Slot] = []  # live[i] is in cache slot i
        outputs.stats.batches += 1

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
            logits = self.decoder.prefill(self.cache, len(self.live), [r.prompt_ids for r in group],
                                          [r.adapter for r in group])
            slots = [_Slot(self.outputs.open(r), r.sampling.generator()) for r in group]
            self.live += slots
            for slot, scores in zip(slots, logits, strict=True):
                self._advance(slot, scores)
        self._compact()

    def step(self) -> None:
        """Decode one token for every live row; finished and cancelled rows leave."""
        for slot in self.live:
            slot.row.drop_if_cancelled()
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
        for slot in self.live:
            slot.row.abandon()
        self.live.clear()
        return requests

    def _advance(self, slot: _Slot, scores: np.ndarray) -> None:
        row, sampling, constraint = slot.row, slot.row.request.sampling, slot.row.request.constraint
        if constraint is not None:  # a structured output: only what its grammar takes next (EOS once complete)
            slot.token = pick(constraint.mask(scores), sampling, slot.rng)
            constraint.accept(slot.token)
        else:
            slot.token = pick(scores, sampling, slot.rng, row.banned())
        row.add(slot.token, scores)

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

