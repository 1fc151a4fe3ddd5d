"""onnxruntime-genai's own decoding: static batches of right-padded prompts, each row stopped on its own.

The engine's fallback for decoders the slot scheduler cannot drive (no GroupQueryAttention: ``scheduler:
batches``), self-contained and touched by no default path. ``OgModel`` loads a folder in onnxruntime-genai;
``start_batch`` pads a batch and starts an ``og.Generator``; ``decode_batch`` decodes one batch to its end
(tests and benchmarks use it as the reference the engine's answers are checked against); ``ActiveBatch`` steps
one batch for the engine, one token per call, its rows' text and events kept by ``tasks/engine/output.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.engine.output import Outputs
from tasks.engine.protocol import GenerationRequest
from tasks.engine.sampling import Sampling
from tasks.engine.settings import available_cores
from tasks.served_folder import ServedFolder


@dataclass
class Decoded:
    """One row's generated tokens (end-of-sequence not included) and why it stopped: ``stop`` or ``length``."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"


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
                 sampling: Sampling | None = None, adapter: str | None = None) -> list[Decoded]:
    """Generate for every prompt at once (greedy unless ``sampling`` says otherwise; with LoRA ``adapter`` if
    given); row ``i`` stops at end-of-sequence or after ``max_new_tokens[i]``."""
    rows = [Decoded() for _ in prompts]
    done = [n <= 0 for n in max_new_tokens]
    generator = start_batch(m, prompts, max(max_new_tokens), sampling or Sampling(), adapter)
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


class ActiveBatch:
    """One static batch in progress: each ``step`` decodes one token for every live row."""

    def __init__(self, model: OgModel, outputs: Outputs, requests: list[GenerationRequest]):
        # plan_batches made the batch fit the context window; each row stops at its own max_tokens
        self.generator = start_batch(model, [r.prompt_ids for r in requests], max(r.max_tokens for r in requests),
                                     requests[0].sampling, requests[0].adapter)
        outputs.stats.batches += 1
        self.rows = [outputs.open(r) for r in requests]
        self.first = True

    def step(self) -> bool:
        """Decode one token for each live row; True once every row has finished (or been cancelled)."""
        rows, generator = self.rows, self.generator
        if all([row.drop_if_cancelled() for row in rows]):
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
            row.add(int(tokens[i]), logits[i, position] if logits is not None else None)
        self.first = False
        return self.finish() if generator.is_done() else all(row.done for row in rows)

    def finish(self) -> bool:
        """End every unfinished row with ``length`` (the generator reached its budget)."""
        for row in self.rows:
            if not row.done:
                row.finish("length")
        return True

    def abandon(self) -> None:
        """Forget the unfinished rows after a failure (the caller has told their requests)."""
        for row in self.rows:
            row.abandon()

    def unfinished(self) -> list[GenerationRequest]:
        """Requests whose rows have not ended."""
        return [row.request for row in self.rows if not row.done]
