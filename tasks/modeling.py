"""Loading models and tokenizers, choosing the device, counting parameters."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from tasks.errors import ModelError

log = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """cuda when available (or asked for), else cpu; asking for cuda without one is an error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelError("runtime.device is 'cuda' but no CUDA device is available")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU thread count from the config or ``SLMOPS_THREADS`` (unset keeps torch's default)."""
    threads = threads or (int(os.environ["SLMOPS_THREADS"]) if os.environ.get("SLMOPS_THREADS") else None)
    if threads:
        torch.set_num_threads(threads)


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA; a no-op context on CPU (fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def load_tokenizer(ref: str) -> Any:
    """Tokenizer from a local folder or hub id; it must have a chat template."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load tokenizer {ref!r}: {exc}") from None
    if not tok.chat_template:
        raise ModelError(f"tokenizer {ref!r} has no chat template")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref: str, device: torch.device | None = None) -> Any:
    """Causal LM from a local folder or hub id, fp32, on ``device``."""
    from transformers import AutoModelForCausalLM

    if not Path(ref).exists() and ref.startswith((".", "/")):
        raise ModelError(f"model folder {ref!r} does not exist")
    try:
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {ref!r}: {exc}") from None
    return model.to(device or torch.device("cpu"))


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when two tokenizers map text to the same ids (same vocabulary and special tokens)."""
    return a.get_vocab() == b.get_vocab() and a.all_special_tokens == b.all_special_tokens
