"""Static-batch decoding with onnxruntime-genai: right-padded prompts stepped together, each row stopped on its own.

One place that reads a model folder, pads a batch and starts an ``og.Generator``: the batch transform uses
``decode_batch``; the serving engine (infra/serving/batch.py) drives ``start_batch`` itself to stream tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.served_folder import ServedFolder

GREEDY_BELOW = 1e-5  # temperatures below this decode greedily (as vLLM does): 1/T would overflow the logits


@dataclass(frozen=True)
class Sampling:
    """Sampling settings shared by every row of one batch; temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    min_tokens: int = 0  # end-of-sequence cannot be drawn before this many new tokens

    @property
    def greedy(self) -> bool:
        """True when decoding picks the most likely token."""
        return self.temperature < GREEDY_BELOW


@dataclass
class Decoded:
    """One row's generated tokens (end-of-sequence not included) and why it stopped: ``stop`` or ``length``."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OgModel:
    """An onnxruntime-genai model folder loaded: the model, its context window, end-of-sequence and pad ids.

    ``threads``: onnxruntime's intra-op threads; None or 0 means every available core (onnxruntime-genai's own
    default is half of them). LoRA adapters in the folder are loaded once; ``start_batch`` activates one by name.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime_genai as og

        folder = ServedFolder.read(path)
        self.og, self.path = og, folder.path
        self.context_length, self.pad_id = folder.context_length, folder.pad_id
        self.eos_ids = frozenset(folder.eos_ids)
        self.threads = threads or available_cores()
        config = og.Config(str(self.path))
        options = {"intra_op_num_threads": self.threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        self.adapter_files = folder.adapters
        self.adapters = og.Adapters(self.model) if self.adapter_files else None
        for name, file in self.adapter_files.items():
            self.adapters.load(str(file), name)


def start_batch(m: OgModel, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling,
                adapter: str | None = None) -> Any:
    """An ``og.Generator`` holding ``prompts`` right-padded with the model's pad id, ready to step; every row
    answers with LoRA ``adapter`` (one of ``m.adapter_files``) when given, else with the base alone.

    Right padding: onnxruntime-genai (0.18) finds each row's length from the pad id; left-padded rows decode
    garbage.
    """
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), m.pad_id, dtype=np.int32)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p
    options: dict[str, Any] = dict(max_length=min(width + max_new_tokens, m.context_length),
                                   batch_size=len(prompts), do_sample=not sampling.greedy)
    if sampling.min_tokens:
        options["min_length"] = width + sampling.min_tokens
    if not sampling.greedy:
        options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    if sampling.seed is not None:
        options["random_seed"] = sampling.seed % 2**31  # onnxruntime-genai takes a non-negative int32
    params = m.og.GeneratorParams(m.model)
    params.set_search_options(**options)
    generator = m.og.Generator(m.model, params)
    if adapter is not None:
        if adapter not in m.adapter_files:
            raise KeyError(f"unknown adapter {adapter!r}; {m.path} has {sorted(m.adapter_files) or 'none'}")
        generator.set_active_adapter(m.adapters, adapter)
    generator.append_tokens(ids)
    return generator


def next_tokens(generator: Any) -> Iterator[np.ndarray]:
    """Each step's next token of every row, until the generator is done (the caller may stop earlier)."""
    while not generator.is_done():
        generator.generate_next_token()
        yield generator.get_next_tokens()


def decode_batch(m: OgModel, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int],
                 sampling: Sampling = Sampling(), adapter: str | None = None) -> list[Decoded]:
    """Generate for every prompt at once (with LoRA ``adapter`` if given); row ``i`` stops at end-of-sequence or
    after ``max_new_tokens[i]``."""
    rows = [Decoded() for _ in prompts]
    done = [n <= 0 for n in max_new_tokens]
    generator = start_batch(m, prompts, max(max_new_tokens), sampling, adapter)
    for step in next_tokens(generator):
        for i, row in enumerate(rows):
            if done[i]:
                continue
            token = int(step[i])
            if token in m.eos_ids:
                row.finish_reason, done[i] = "stop", True
                continue
            row.tokens.append(token)
            done[i] = len(row.tokens) >= max_new_tokens[i]
        if all(done):
            break
    return rows
