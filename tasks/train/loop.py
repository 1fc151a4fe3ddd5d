"""The one training loop every stage shares: batching, AdamW, warm-up/decay, validation loss, progress."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.nn import functional as F
from transformers import get_linear_schedule_with_warmup

from tasks.config import TrainLoopConfig
from tasks.data.chat import IGNORE_INDEX
from tasks.modeling import autocast
from tasks.progress import Progress

Example = tuple[list[int], list[int]]
Batch = dict[str, torch.Tensor]
LossFn = Callable[[Any, Batch], torch.Tensor]


def collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> Batch:
    """Right-pad a list of (ids, labels) into tensors with an attention mask."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def _shuffled_batches(data: Sequence[Example], batch_size: int, seed: int) -> Iterator[list[Example]]:
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            fresh = list(range(len(data)))
            rng.shuffle(fresh)
            order += fresh
        chunk, order = order[:batch_size], order[batch_size:]
        yield [data[i] for i in chunk]


def causal_lm_loss(model: Any, batch: Batch) -> torch.Tensor:
    """Token-level cross-entropy on the labelled (assistant) tokens."""
    return model(**batch).loss


@torch.no_grad()
def validation_loss(model: Any, data: Sequence[Example], pad_id: int, device: torch.device,
                    batch_size: int = 32) -> float:
    """Mean cross-entropy per labelled token over ``data``."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = collate(data[start: start + batch_size], pad_id, device)
        with autocast(device):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE_INDEX
        total += F.cross_entropy(logits[:, :-1][keep].float(), labels[keep], reduction="sum").item()
        count += int(keep.sum())
    model.train()
    return total / max(count, 1)


def train_loop(model: Any, train: Sequence[Example], val: Sequence[Example] | None, cfg: TrainLoopConfig, *,
               pad_id: int, device: torch.device, seed: int, desc: str,
               loss_fn: LossFn = causal_lm_loss) -> tuple[list[float], list[tuple[int, float]]]:
    """Train the parameters that require grad; return per-step losses and (step, validation loss)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, min(cfg.warmup_steps, cfg.steps), cfg.steps)
    torch.manual_seed(seed)
    losses: list[float] = []
    val_losses: list[tuple[int, float]] = []
    if val:
        val_losses.append((0, validation_loss(model, val, pad_id, device)))
    batches = _shuffled_batches(train, cfg.batch_size, seed)
    model.train()
    with Progress(cfg.steps, desc) as progress:
        for step in range(1, cfg.steps + 1):
            batch = collate(next(batches), pad_id, device)
            with autocast(device):
                loss = loss_fn(model, batch)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; "
                                         "lower the learning rate")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if val and (step % cfg.eval_every == 0 or step == cfg.steps):
                val_losses.append((step, validation_loss(model, val, pad_id, device)))
            progress.update(loss=losses[-1])
    model.eval()
    return losses, val_losses
