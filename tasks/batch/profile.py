"""A profile of prompts: per-feature distributions a later input is compared with (see ``drift``).

Features of each prompt (the conversation up to its answer, rendered with the chat template):

- ``prompt_tokens``: its length in tokens;
- ``prompt_chars``: characters of its messages' contents;
- ``chars_per_token``: how densely the tokenizer covers it (falls for text unlike the training data);
- ``rare_token_share``: share of its tokens that are the unknown token or byte fallbacks (``<0xNN>`` pieces, or
  byte-level pieces that are not whole UTF-8 characters);
- ``roles``: its role structure, e.g. ``system>user`` (categorical).

A reference profile (of the training prompts) fixes the bins: deciles of each numeric feature, the most common
role structures. Profiling another input with ``bins_from=reference`` counts it into the same bins.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from prefect import task
from pydantic import BaseModel, Field

from tasks.data.chat import render_ids

NUMERIC = ("prompt_tokens", "prompt_chars", "chars_per_token", "rare_token_share")
CATEGORICAL = ("roles",)
OTHER = "(other)"
MAX_CATEGORIES = 20
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class FeatureProfile(BaseModel):
    """One feature's bins and the share of prompts in each."""

    kind: Literal["numeric", "categorical"]
    bins: list[str] = Field(description="Bin labels: value ranges, or categories (plus '(other)').")
    edges: list[float] = Field(default_factory=list, description="Numeric: upper edges of every bin but the last.")
    shares: list[float] = Field(description="Share of prompts per bin (sums to 1).")
    summary: dict[str, float] = Field(default_factory=dict, description="mean, p50, p95, max (numeric).")


class Profile(BaseModel):
    """Profile of a set of prompts."""

    rows: int
    features: dict[str, FeatureProfile]


class RareTokens:
    """Which token ids are the unknown token or byte fallbacks, decided once per id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.unk = tokenizer.unk_token_id
        self._known: dict[int, bool] = {}

    def __call__(self, token: int) -> bool:
        if token not in self._known:
            piece = self.tokenizer.convert_ids_to_tokens(token)
            self._known[token] = (token == self.unk or bool(BYTE_PIECE.fullmatch(str(piece)))
                                  or "\ufffd" in self.tokenizer.decode([token]))
        return self._known[token]


def prompt_features(tokenizer: Any, conversations: Sequence[list[dict[str, str]]],
                    prompt_ids: Sequence[Sequence[int]] | None = None) -> dict[str, list[Any]]:
    """Every feature's value per prompt (``prompt_ids`` when already encoded, else rendered here)."""
    rare = RareTokens(tokenizer)
    values: dict[str, list[Any]] = {name: [] for name in (*NUMERIC, *CATEGORICAL)}
    for i, messages in enumerate(conversations):
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # the answer is not part of the prompt
        ids = prompt_ids[i] if prompt_ids is not None else render_ids(tokenizer, messages, True)
        chars = sum(len(m["content"]) for m in messages)
        values["prompt_tokens"].append(len(ids))
        values["prompt_chars"].append(chars)
        values["chars_per_token"].append(chars / max(len(ids), 1))
        values["rare_token_share"].append(sum(map(rare, ids)) / max(len(ids), 1))
        values["roles"].append(">".join(m["role"] for m in messages))
    return values


def _numeric_bins(values: np.ndarray) -> tuple[list[float], list[str]]:
    edges = sorted({float(round(q, 6)) for q in np.quantile(values, np.linspace(0.1, 0.9, 9))})
    inner = [f"({a:g}, {b:g}]" for a, b in itertools.pairwise(edges)]
    return edges, [f"<= {edges[0]:g}", *inner, f"> {edges[-1]:g}"]


def _shares(counts: Sequence[float]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def _numeric(values: list[float], ref: FeatureProfile | None) -> FeatureProfile:
    arr = np.asarray(values, dtype=float)
    edges, labels = (ref.edges, ref.bins) if ref else _numeric_bins(arr)
    counts = np.bincount(np.searchsorted(edges, arr, side="left"), minlength=len(labels))
    summary = {"mean": float(arr.mean()), "p50": float(np.quantile(arr, 0.5)), "p95": float(np.quantile(arr, 0.95)),
               "max": float(arr.max())}
    return FeatureProfile(kind="numeric", bins=labels, edges=edges, shares=_shares(counts.tolist()), summary=summary)


def _categorical(values: list[str], ref: FeatureProfile | None) -> FeatureProfile:
    counts = Counter(values)
    labels = ref.bins if ref else [c for c, _ in counts.most_common(MAX_CATEGORIES)] + [OTHER]
    known = set(labels) - {OTHER}
    per_bin = [counts[label] if label != OTHER else sum(n for c, n in counts.items() if c not in known)
               for label in labels]
    return FeatureProfile(kind="categorical", bins=labels, shares=_shares(per_bin))


def profile_prompts(tokenizer: Any, conversations: Sequence[list[dict[str, str]]],
                    prompt_ids: Sequence[Sequence[int]] | None = None, bins_from: Profile | None = None) -> Profile:
    """Profile ``conversations``; with ``bins_from`` (a reference), count them into the reference's bins."""
    if not conversations:
        raise ValueError("cannot profile an empty set of prompts")
    values = prompt_features(tokenizer, conversations, prompt_ids)
    features = {}
    for name in NUMERIC:
        features[name] = _numeric(values[name], bins_from.features.get(name) if bins_from else None)
    for name in CATEGORICAL:
        features[name] = _categorical(values[name], bins_from.features.get(name) if bins_from else None)
    return Profile(rows=len(conversations), features=features)


def profile_training_prompts(model_dir: str, train_path: str) -> Profile:
    """Reference profile of a prepared train split, with the tokenizer in ``model_dir``."""
    from tasks.data.prepare import read_prepared
    from tasks.modeling import load_tokenizer

    return profile_prompts(load_tokenizer(model_dir), read_prepared(train_path))


profile_training_prompts_task = task(profile_training_prompts, name="profile-training-prompts")
