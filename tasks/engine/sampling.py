"""Sampling: a request's settings and the choice of each next token from one row's logits."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

GREEDY_BELOW = 1e-5  # temperatures below this decode greedily (as vLLM does): 1/T would overflow the logits


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens; temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    min_tokens: int = 0  # end-of-sequence cannot be drawn before this many new tokens

    @property
    def greedy(self) -> bool:
        """True when decoding picks the most likely token."""
        return self.temperature < GREEDY_BELOW

    def generator(self) -> np.random.Generator:
        """The request's own random generator: seeded (the same draws in any company) or fresh."""
        return np.random.default_rng(None if self.seed is None else self.seed % 2**64)


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


def log_softmax(scores: np.ndarray, banned: Iterable[int] = ()) -> np.ndarray:
    """Log-probabilities of one row's logits in float64, ``banned`` tokens at -inf (as the search saw them)."""
    x = scores.astype(np.float64)
    x[list(banned)] = -np.inf
    x -= x.max()
    return x - np.log(np.exp(x).sum())


def top_k(logprobs: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most likely token ids, most likely first (ties in id order)."""
    top = np.argpartition(-logprobs, k)[:k] if 0 < k < len(logprobs) else np.arange(len(logprobs))[:k]
    return top[np.argsort(-logprobs[top], kind="stable")]
