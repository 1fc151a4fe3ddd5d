"""Evaluate the fp32 parent, every quantized artifact and the champion on the same data in one run."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from prefect import task
from pydantic import BaseModel, Field

from tasks.config import EvalConfig
from tasks.data.chat import prompt_ids, render_ids
from tasks.data.prepare import encode_split, read_prepared, read_prepared_rows
from tasks.errors import ConfigError, DatasetError
from tasks.evaluate.batched import engine_answers, hf_answers
from tasks.evaluate.metrics import is_exact_match, perplexity
from tasks.evaluate.runners import open_runner
from tasks.modeling import apply_threads, load_tokenizer
from tasks.progress import Progress
from tasks.quantize.tools import disk_size
from tasks.records import Artifact, ModelDir, PreparedData

PARENT = "fp32-parent"
CHAMPION = "champion"


class EvalRow(BaseModel):
    """One test row as a model answered it."""

    messages: list[dict[str, str]] = Field(description="The conversation up to the answer the model was asked for.")
    expected: str = Field(description="The reference answer.")
    answer: str = Field(description="The model's greedy answer.")


class ArtifactScore(BaseModel):
    """Metrics of one scored model, and its answer to every test row."""

    name: str
    kind: str
    path: str
    metrics: dict[str, float]
    rows: list[EvalRow] = Field(default_factory=list)


class EvalReport(BaseModel):
    """Every artifact's metrics, plus degradation against the fp32 parent."""

    data_digest: str
    scores: list[ArtifactScore]

    def metrics(self, name: str) -> dict[str, float]:
        """Metrics of the artifact called ``name`` (KeyError listing the names when absent)."""
        for score in self.scores:
            if score.name == name:
                return score.metrics
        raise KeyError(f"no artifact {name!r} in the report; have {[s.name for s in self.scores]}")


def heldout_examples(tokenizer: Any, data: PreparedData, cfg: EvalConfig,
                     max_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids of the held-out passages (every token scored); a passage over ``max_length`` is an error."""
    if cfg.heldout_text:
        source = cfg.heldout_text
        if not Path(source).is_file():
            raise ConfigError(f"evaluate.heldout_text: file not found: {source}")
        lines = enumerate(Path(source).read_text(encoding="utf-8").splitlines(), start=1)
        encoded = [(n, tokenizer(line, add_special_tokens=False)["input_ids"]) for n, line in lines if line.strip()]
    else:
        split = "validation" if data.validation else "test"
        source = data.sources.get(split) or getattr(data, split)
        encoded = [(n, render_ids(tokenizer, m, add_generation_prompt=False))
                   for n, m in read_prepared_rows(getattr(data, split))]
    encoded = encoded[: cfg.heldout_limit or cfg.limit]
    too_long = [f"{source}:{n}: {len(ids)} tokens > data.max_length {max_length}"
                for n, ids in encoded if len(ids) > max_length]
    if too_long:
        raise DatasetError(source, too_long)
    return [(ids, ids) for _, ids in encoded]


def text_windows(tokenizer: Any, cfg: EvalConfig) -> list[tuple[list[int], list[int]]]:
    """``evaluate.real_text`` tokenized whole and cut into windows of ``real_text_window`` tokens (the last one
    shorter); every token of a window but its first is scored."""
    path = Path(cfg.real_text or "")
    if not path.is_file():
        raise ConfigError(f"evaluate.real_text: file not found: {path}")
    ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    step = cfg.real_text_window
    return [(ids[i: i + step], ids[i: i + step]) for i in range(0, len(ids), step) if len(ids[i: i + step]) > 1]


def greedy_answers(name: str, kind: str, path: str, runner: Any, tokenizer: Any,
                   conversations: list[list[dict[str, str]]], cfg: EvalConfig) -> list[str]:
    """Every test row's greedy answer: batched for ONNX (the serving engine) and transformers, one row at a time
    for llama.cpp."""
    if kind == "onnx":
        prompts = [prompt_ids(tokenizer, conv) for conv in conversations]
        return engine_answers(runner.engine, prompts, cfg.max_new_tokens, name)
    if kind == "hf":
        return hf_answers(runner.model, tokenizer, conversations, cfg.max_new_tokens, name)
    answers = []
    with Progress(len(conversations), f"evaluate {name}") as progress:
        for conv in conversations:
            gen = runner.generate(prompt_ids(tokenizer, conv), cfg.max_new_tokens)
            answers.append(tokenizer.decode(gen.tokens, skip_special_tokens=True))
            progress.update()
    return answers


def score(name: str, kind: str, path: str, tokenizer_path: str, data: PreparedData, cfg: EvalConfig,
          max_length: int) -> ArtifactScore:
    """Perplexity (test answers, held-out text), exact match, latency and size of one model."""
    tokenizer = load_tokenizer(tokenizer_path)
    runner = open_runner(kind, path, cfg.threads)
    conversations = read_prepared(data.test)[: cfg.limit]
    test = encode_split(tokenizer, data.test, max_length, data.sources.get("test"))[: cfg.limit]
    answers = greedy_answers(name, kind, path, runner, tokenizer, conversations, cfg)
    rows = [EvalRow(messages=conv[:-1], expected=conv[-1]["content"], answer=a)
            for a, conv in zip(answers, conversations, strict=True)]
    hits = sum(is_exact_match(row.answer, row.expected) for row in rows)
    timings = [runner.generate(prompt_ids(tokenizer, conversations[i % len(conversations)]), cfg.latency_new_tokens,
                               cfg.latency_new_tokens) for i in range(cfg.latency_requests)]
    decode = [(len(t.tokens) - 1) / max(t.total_s - t.ttft_s, 1e-9) for t in timings]
    totals = sorted(t.total_s for t in timings)
    metrics = {
        "perplexity": perplexity(runner, test),
        "perplexity_heldout": perplexity(runner, heldout_examples(tokenizer, data, cfg, max_length)),
        **({"perplexity_text": perplexity(runner, text_windows(tokenizer, cfg))} if cfg.real_text else {}),
        "exact_match": hits / max(len(conversations), 1),
        "ttft_ms": 1000 * statistics.median(t.ttft_s for t in timings),
        "decode_tokens_per_s": statistics.median(decode),
        "latency_p50_ms": 1000 * statistics.median(totals),
        "latency_p95_ms": 1000 * totals[min(len(totals) - 1, math.ceil(0.95 * len(totals)) - 1)],
        "size_mb": disk_size(Path(path)) / 2**20,
    }
    return ArtifactScore(name=name, kind=kind, path=path, metrics=metrics, rows=rows)


def evaluate(parent: ModelDir, artifacts: list[Artifact], data: PreparedData, cfg: EvalConfig, max_length: int,
             champion: Artifact | None = None) -> EvalReport:
    """Score the parent, each artifact and the champion; add each artifact's degradation versus the parent."""
    apply_threads(cfg.threads)
    scores = [score(PARENT, "hf", parent.path, parent.path, data, cfg, max_length)]
    base = scores[0].metrics
    for artifact in [*artifacts, *([champion] if champion else [])]:
        tokenizer_path = artifact.path if artifact.kind == "onnx" else parent.path
        result = score(artifact.name, artifact.kind, artifact.path, tokenizer_path, data, cfg, max_length)
        result.metrics["perplexity_increase"] = result.metrics["perplexity"] / base["perplexity"] - 1
        result.metrics["exact_match_drop"] = base["exact_match"] - result.metrics["exact_match"]
        scores.append(result)
    return EvalReport(data_digest=data.digest, scores=scores)


evaluate_task = task(evaluate, name="evaluate")
