"""Metrics every scorer shares: exact match of an answer and perplexity over labelled tokens."""

from __future__ import annotations

import math
from typing import Protocol

SCORED = ("perplexity", "perplexity_heldout", "perplexity_text", "exact_match", "ttft_ms", "decode_tokens_per_s",
          "latency_p50_ms", "latency_p95_ms", "size_mb")
"""Metrics ``evaluate`` measures for every model (perplexity_text only with ``evaluate.real_text``)."""
DEGRADATION = ("perplexity_increase", "exact_match_drop")
"""Metrics of an artifact relative to its fp32 parent (relative perplexity increase, absolute exact-match drop)."""
HIGHER_IS_BETTER = frozenset({"exact_match", "decode_tokens_per_s"})


class _Scorer(Protocol):
    def nll_many(self, examples: list[tuple[list[int], list[int]]]) -> list[tuple[float, int]]: ...


def is_exact_match(answer: str, reference: str) -> bool:
    """The answer equals the reference once surrounding whitespace is trimmed."""
    return answer.strip() == reference.strip()


def exact_match_rate(answers: list[str], references: list[str]) -> float:
    """Share of answers that exactly match their reference."""
    hits = sum(is_exact_match(a, r) for a, r in zip(answers, references, strict=True))
    return hits / max(len(references), 1)


def perplexity(runner: _Scorer, examples: list[tuple[list[int], list[int]]]) -> float:
    """exp(mean NLL) over the labelled tokens of ``examples`` (scored in batches where the runner can)."""
    scored = runner.nll_many(examples)
    total, count = sum(nll for nll, _ in scored), sum(n for _, n in scored)
    return math.exp(total / max(count, 1))
