"""One interface over a model in any format: token log-likelihoods and timed greedy generation.

``HfRunner`` wraps transformers (the fp32 parent); ``OnnxRunner`` wraps an onnxruntime-genai folder (an
onnxruntime session for full-sequence logits, the serving engine, tasks/engine, for decoding); ``GgufRunner``
wraps a GGUF file in llama.cpp (the ``gguf`` extra).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from tasks.data.chat import IGNORE_INDEX
from tasks.engine.engine import Engine
from tasks.engine.protocol import Failed, GenerationRequest, Sampling
from tasks.engine.settings import EngineConfig
from tasks.errors import SlmopsError
from tasks.modeling import load_model, load_tokenizer
from tasks.records import Generation
from tasks.served_folder import ServedFolder

Example = tuple[list[int], list[int]]
"""Token ids and their labels (``IGNORE_INDEX`` where a token is not scored)."""
NLL_ROWS = 16  # sequences scored in one forward pass
ENGINE_ROWS = 16  # rows the engine decodes together: past ~16 on 2 cores a step costs about what two smaller ones do


class EvaluationError(SlmopsError):
    """Generation failed while scoring an artifact."""


class Runner(Protocol):
    """What evaluation needs from a model."""

    def nll(self, ids: list[int], labels: list[int]) -> tuple[float, int]:
        """Summed negative log-likelihood of the labelled tokens, and their count."""

    def nll_many(self, examples: list[Example]) -> list[tuple[float, int]]:
        """``nll`` of every example, computed in padded batches where the format allows it."""

    def generate(self, prompt: list[int], max_new_tokens: int, min_new_tokens: int = 0) -> Generation:
        """Greedy continuation of ``prompt``."""


def nll_from_logits(logits: np.ndarray, ids: list[int], labels: list[int]) -> tuple[float, int]:
    """Summed NLL of the labelled tokens given per-position logits (shared by every runner)."""
    target = np.asarray(labels[1:])
    keep = target != IGNORE_INDEX
    logits = logits[:-1][keep].astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = logits[np.arange(len(logits)), target[keep]]
    return float((logz - picked).sum()), int(keep.sum())


def length_batches(examples: list[Example], rows: int = NLL_ROWS) -> list[list[int]]:
    """Indices of ``examples`` grouped ``rows`` at a time by similar length (little padding per batch)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    return [order[i: i + rows] for i in range(0, len(order), rows)]


def right_padded(examples: list[Example], batch: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Ids (padded with 0 after the end) and the attention mask of the examples in ``batch``.

    Right padding leaves every real position's logits as they are alone: causal attention never looks ahead.
    """
    width = max(len(examples[i][0]) for i in batch)
    ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, i in enumerate(batch):
        n = len(examples[i][0])
        ids[row, :n], mask[row, :n] = examples[i][0], 1
    return ids, mask


def batched_nll(examples: list[Example], logits_of: Any) -> list[tuple[float, int]]:
    """``nll_from_logits`` of every example, ``logits_of(ids, mask)`` giving a padded batch's logits."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    for batch in length_batches(examples):
        logits = logits_of(*right_padded(examples, batch))
        for row, i in enumerate(batch):
            ids, labels = examples[i]
            out[i] = nll_from_logits(logits[row, : len(ids)].astype(np.float32), ids, labels)
    return out


class HfRunner:
    """A transformers causal LM in fp32 on CPU (or the chosen device)."""

    def __init__(self, path: str, device: torch.device | None = None):
        self.model = load_model(path, device).eval()
        self.tokenizer = load_tokenizer(path)
        self.device = next(self.model.parameters()).device

    @torch.no_grad()
    def nll(self, ids: list[int], labels: list[int]) -> tuple[float, int]:
        logits = self.model(torch.tensor([ids], device=self.device)).logits[0].float().cpu().numpy()
        return nll_from_logits(logits, ids, labels)

    @torch.no_grad()
    def _logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = self.model(torch.from_numpy(ids).to(self.device), attention_mask=torch.from_numpy(mask).to(self.device))
        return out.logits.float().cpu().numpy()

    def nll_many(self, examples: list[Example]) -> list[tuple[float, int]]:
        return batched_nll(examples, self._logits)

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, min_new_tokens: int = 0) -> Generation:
        ids = torch.tensor([prompt], device=self.device)
        kw = dict(do_sample=False, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        start = time.perf_counter()
        self.model.generate(ids, max_new_tokens=1, **kw)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        out = self.model.generate(ids, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, **kw)
        total = time.perf_counter() - start
        tokens = out[0, len(prompt):].tolist()
        if tokens and tokens[-1] == self.tokenizer.eos_token_id:
            tokens = tokens[:-1]
        return Generation(tokens, ttft, total)


class OnnxRunner:
    """An onnxruntime-genai model folder (as written by the model builder or Olive): an onnxruntime session for
    full-sequence logits, the serving engine for generation."""

    def __init__(self, path: str, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.folder = ServedFolder.read(self.path)
        self.threads = threads
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.folder.decoder.file), options,
                                            providers=["CPUExecutionProvider"])
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self._kv_shape = (self.folder.decoder.kv_heads, self.folder.decoder.head_size)
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The serving engine over this folder, started on first use. int8 steps stay off, so each answer is what
        its prompt gets alone, whatever else is decoding."""
        if self._engine is None:
            self._engine = Engine(self.path, EngineConfig(int8_steps="off", threads=self.threads or 0,
                                                          max_batch_size=ENGINE_ROWS))
        return self._engine

    def close(self) -> None:
        """Stop the engine's worker thread (if one was started)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __del__(self) -> None:
        self.close()

    def _empty_past(self, name: str, rows: int) -> np.ndarray:
        dtype = np.float16 if "float16" in self._inputs[name].type else np.float32
        return np.zeros((rows, self._kv_shape[0], 0, self._kv_shape[1]), dtype=dtype)

    def _logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        for name in self._inputs:
            if name.startswith("past_key_values"):
                feed[name] = self._empty_past(name, len(ids))
            elif name == "position_ids":
                feed[name] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        return self.session.run(["logits"], feed)[0]

    def nll(self, ids: list[int], labels: list[int]) -> tuple[float, int]:
        arr = np.asarray([ids], dtype=np.int64)
        return nll_from_logits(self._logits(arr, np.ones_like(arr))[0].astype(np.float32), ids, labels)

    def nll_many(self, examples: list[Example]) -> list[tuple[float, int]]:
        return batched_nll(examples, self._logits)

    def generate(self, prompt: list[int], max_new_tokens: int, min_new_tokens: int = 0) -> Generation:
        start = time.perf_counter()
        request = GenerationRequest(list(prompt), max_new_tokens, Sampling(min_tokens=min_new_tokens))
        [(_, end)] = list(self.engine.run([request]))
        if isinstance(end, Failed):
            raise EvaluationError(f"{self.path}: generation failed: {end.message}")
        return Generation(end.token_ids, end.ttft_s, time.perf_counter() - start)


class GgufRunner:
    """A GGUF file in llama.cpp (through llama-cpp-python)."""

    def __init__(self, path: str, threads: int | None = None, n_ctx: int = 512):
        from llama_cpp import Llama

        # n_threads_batch too: llama-cpp-python otherwise gives prompt processing every core
        self.llm = Llama(model_path=path, n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=threads,
                         n_threads_batch=threads, n_batch=n_ctx)
        self.eos = self.llm.token_eos()

    def nll(self, ids: list[int], labels: list[int]) -> tuple[float, int]:
        self.llm.reset()
        self.llm.eval(ids)
        return nll_from_logits(self.llm.scores[: len(ids)].copy(), ids, labels)

    def nll_many(self, examples: list[Example]) -> list[tuple[float, int]]:
        return [self.nll(ids, labels) for ids, labels in examples]  # one llama.cpp context: one row at a time

    def generate(self, prompt: list[int], max_new_tokens: int, min_new_tokens: int = 0) -> Generation:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(prompt)
        tokens: list[int] = []
        ttft = 0.0
        while len(tokens) < max_new_tokens:
            logits = self.llm.scores[self.llm.n_tokens - 1].copy()
            if len(tokens) < min_new_tokens:
                logits[self.eos] = -np.inf
            token = int(np.argmax(logits))
            if not tokens:
                ttft = time.perf_counter() - start
            if token == self.eos:
                break
            tokens.append(token)
            self.llm.eval([token])
        return Generation(tokens, ttft, time.perf_counter() - start)


def open_runner(kind: str, path: str, threads: int | None = None) -> Runner:
    """A runner for an artifact kind: ``hf``, ``onnx`` or ``gguf``."""
    if kind == "hf":
        return HfRunner(path)
    if kind == "onnx":
        return OnnxRunner(path, threads)
    if kind == "gguf":
        return GgufRunner(path, threads)
    raise ValueError(f"no runner for artifact kind {kind!r}")
