"""The local executor: a part's records decoded by the serving engine in this process, continuously batched."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable

from tasks.batch.config import GenerationSettings, LocalExecutorConfig
from tasks.batch.executors import Answer, Part
from tasks.engine.engine import Engine
from tasks.engine.protocol import Failed, GenerationRequest
from tasks.engine.sampling import Sampling
from tasks.engine.settings import EngineConfig
from tasks.errors import SlmopsError
from tasks.records import ModelRelease


class LocalExecutor:
    """Decodes a part with the engine (``batch_size`` rows at a time), shortest prompts first."""

    def __init__(self, release: ModelRelease, cfg: LocalExecutorConfig, generation: GenerationSettings):
        threads = cfg.threads or (int(os.environ["SLMOPS_THREADS"]) if os.environ.get("SLMOPS_THREADS") else 0)
        # int8 steps off: an answer must not depend on which records shared its steps (a resumed part repeats it)
        self.engine = Engine(release.onnx_dir, EngineConfig(max_batch_size=cfg.batch_size, threads=threads,
                                                            int8_steps="off"))
        self.cfg, self.generation = cfg, generation

    def sampling(self, record_id: str) -> Sampling:
        """The record's sampling: its own seed (the job's seed and its id), so a draw repeats on resume."""
        g = self.generation
        sampling = Sampling(g.temperature, g.top_p)
        # greedy rows all share one setting (onnxruntime-genai's static batches join only equal settings)
        return sampling if sampling.greedy else Sampling(g.temperature, g.top_p,
                                                         (g.seed + zlib.crc32(record_id.encode())) % 2**63)

    def run(self, part: Part, on_batch: Callable[[int], None]) -> list[Answer]:
        order = sorted(range(len(part.records)), key=lambda i: len(part.prompt_ids[i]))
        room = self.engine.context_length
        requests = [GenerationRequest(list(part.prompt_ids[i]),
                                      min(self.generation.max_new_tokens, room - len(part.prompt_ids[i])),
                                      self.sampling(part.records[i].id)) for i in order]
        answers = []
        for n, end in self.engine.run(requests):
            record = part.records[order[n]]
            if isinstance(end, Failed):
                raise SlmopsError(f"record {record.id!r} of {part.name}: {end.message}")
            answers.append(Answer(record.id, end.text, end.finish_reason, end.prompt_tokens, end.completion_tokens))
            on_batch(1)
        return answers

    def close(self) -> None:
        self.engine.close()
