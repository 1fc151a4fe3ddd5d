"""Knowledge distillation: logit (KL at temperature T + CE) or sequence-level (train on teacher answers)."""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from prefect import task
from torch.nn import functional as F

from tasks.caching import digest_cache_key
from tasks.config import DistillConfig, RuntimeConfig
from tasks.data.chat import IGNORE_INDEX
from tasks.data.prepare import encode_split, read_prepared_rows
from tasks.errors import ConfigError, TrainingError
from tasks.evaluate.generation import generate_answers
from tasks.modeling import (
    apply_threads,
    count_parameters,
    load_model,
    load_tokenizer,
    same_tokenizer,
    select_device,
)
from tasks.records import ModelDir, PreparedData, TrainResult
from tasks.train.loop import Batch, causal_lm_loss, train_loop

log = logging.getLogger(__name__)


def kd_loss(teacher: Any, temperature: float, kl_weight: float, student: Any, batch: Batch) -> torch.Tensor:
    """``kl_weight · T² · KL(teacher_T ‖ student_T) + (1 − kl_weight) · CE`` on the labelled tokens."""
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    vocab = min(t_logits.shape[-1], s_logits.shape[-1])
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    s = s_logits[:, :-1][keep][:, :vocab].float()
    t = t_logits[:, :-1][keep][:, :vocab].float()
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean") * temperature**2
    ce = F.cross_entropy(s, labels[keep])
    return kl_weight * kl + (1 - kl_weight) * ce


def choose_method(cfg: DistillConfig, shared_tokenizer: bool) -> str:
    """Resolve ``auto`` to logit or sequence, refusing logit across different tokenizers."""
    if cfg.method == "logit" and not shared_tokenizer:
        raise ConfigError("distill.method: 'logit' needs teacher and student to share a tokenizer; "
                          "these differ — use 'sequence' or 'auto'")
    if cfg.method != "auto":
        return cfg.method
    return "logit" if shared_tokenizer else "sequence"


def teacher_labelled(teacher: Any, tokenizer: Any, train_path: str, cfg: DistillConfig, out: Path) -> Path:
    """Write the train split with each answer replaced by the teacher's greedy answer to ``out`` (kept for audit).

    Prompts the teacher leaves unanswered are dropped, counted in the log, and fail the step above
    ``cfg.max_empty_share``.
    """
    rows = read_prepared_rows(train_path)
    conversations = [messages for _, messages in rows]
    answers = generate_answers(teacher, tokenizer, conversations, cfg.max_new_tokens)
    labelled = [{"messages": [*conv[:-1], {"role": "assistant", "content": ans}], "line": line}
                for (line, conv), ans in zip(rows, answers, strict=True) if ans]
    empty = len(conversations) - len(labelled)
    log.info("sequence-level distillation: the teacher left %d of %d training prompts unanswered (%.1f%%); "
             "they are left out", empty, len(conversations), 100 * empty / max(len(conversations), 1))
    if empty > cfg.max_empty_share * len(conversations):
        raise TrainingError(f"the teacher left {empty} of {len(conversations)} training prompts unanswered "
                            f"({empty / len(conversations):.0%} > distill.max_empty_share "
                            f"{cfg.max_empty_share:.0%}); check the teacher, or raise distill.max_new_tokens")
    out.write_text("".join(json.dumps(row) + "\n" for row in labelled))
    return out


def distill(teacher: ModelDir, student: ModelDir, data: PreparedData, cfg: DistillConfig, max_length: int,
            runtime: RuntimeConfig, out: Path) -> TrainResult:
    """Distil ``teacher`` into ``student`` on ``data.train``; save the student under ``out``."""
    apply_threads(runtime.threads)
    device = select_device(runtime.device)
    t_tok, s_tok = load_tokenizer(teacher.path), load_tokenizer(student.path)
    method = choose_method(cfg, same_tokenizer(t_tok, s_tok))
    log.info("distillation: %s (%s)", method, "teacher and student share a tokenizer" if method == "logit"
             else "tokenizers differ: the student learns from teacher-generated answers")
    teacher_model = load_model(teacher.path, device).eval().requires_grad_(False)
    student_model = load_model(student.path, device)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if method == "logit":
        train = encode_split(s_tok, data.train, max_length, data.sources.get("train"))
        loss_fn = partial(kd_loss, teacher_model, cfg.temperature, cfg.kl_weight)
    else:
        labelled = teacher_labelled(teacher_model, t_tok, data.train, cfg, out / "teacher.jsonl")
        source = f"{data.sources.get('train', data.train)} (with the teacher's answers)"
        train = encode_split(s_tok, str(labelled), max_length, source)
        loss_fn = causal_lm_loss
    val = (encode_split(s_tok, data.validation, max_length, data.sources.get("validation"))
           if data.validation else None)
    losses, val_losses = train_loop(student_model, train, val, cfg, pad_id=s_tok.pad_token_id, device=device,
                                    seed=runtime.seed, desc=f"distill ({method})", loss_fn=loss_fn)
    student_model.save_pretrained(out)
    s_tok.save_pretrained(out)
    return TrainResult(model=ModelDir.from_path(out, student_model.config.model_type,
                                                count_parameters(student_model)),
                       stage="distill", method=method, losses=losses, val_losses=val_losses,
                       seconds=time.perf_counter() - start,
                       trainable_parameters=count_parameters(student_model, trainable_only=True))


distill_task = task(distill, name="distill", cache_key_fn=digest_cache_key)
