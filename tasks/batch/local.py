"""The local executor: batched onnxruntime-genai generation, requests sorted by prompt length."""

from __future__ import annotations

import os
from collections.abc import Callable

from tasks.batch.config import GenerationSettings, LocalExecutorConfig
from tasks.batch.executors import Answer, Part
from tasks.decoding import OgModel, Sampling, decode_batch
from tasks.records import ModelRelease


class LocalExecutor:
    """Decodes a part in batches of ``batch_size`` records of similar prompt length (little padding)."""

    def __init__(self, release: ModelRelease, cfg: LocalExecutorConfig, generation: GenerationSettings):
        from transformers import AutoTokenizer

        threads = cfg.threads or (int(os.environ["SLMOPS_THREADS"]) if os.environ.get("SLMOPS_THREADS") else None)
        self.model = OgModel(release.onnx_dir, threads)
        self.tokenizer = AutoTokenizer.from_pretrained(release.onnx_dir)
        self.cfg, self.generation = cfg, generation
        self.sampling = Sampling(generation.temperature, generation.top_p, generation.seed)

    def run(self, part: Part, on_batch: Callable[[int], None]) -> list[Answer]:
        order = sorted(range(len(part.records)), key=lambda i: len(part.prompt_ids[i]))
        answers = []
        for start in range(0, len(order), self.cfg.batch_size):
            rows = order[start: start + self.cfg.batch_size]
            prompts = [part.prompt_ids[i] for i in rows]
            budgets = [min(self.generation.max_new_tokens, self.model.context_length - len(p)) for p in prompts]
            for i, decoded in zip(rows, decode_batch(self.model, prompts, budgets, self.sampling), strict=True):
                text = self.tokenizer.decode(decoded.tokens, skip_special_tokens=True)
                answers.append(Answer(part.records[i].id, text, decoded.finish_reason, len(part.prompt_ids[i]),
                                      len(decoded.tokens)))
            on_batch(len(rows))
        return answers

    def close(self) -> None:
        del self.model
