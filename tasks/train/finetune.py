"""LoRA fine-tuning with peft, then ``merge_and_unload`` into a plain Hugging Face folder."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path

import torch
from prefect import task

from tasks.caching import digest_cache_key
from tasks.config import FinetuneConfig, RuntimeConfig
from tasks.data.prepare import encode_split
from tasks.errors import ConfigError, TrainingError
from tasks.modeling import apply_threads, count_parameters, load_model, load_tokenizer, select_device
from tasks.records import ModelDir, PreparedData, TrainResult
from tasks.train.loop import train_loop

log = logging.getLogger(__name__)


def check_qlora(cfg: FinetuneConfig) -> None:
    """QLoRA needs CUDA and bitsandbytes; say so before any training starts."""
    if not cfg.qlora:
        return
    missing = [what for what, ok in (("a CUDA device", torch.cuda.is_available()),
                                     ("the bitsandbytes package",
                                      importlib.util.find_spec("bitsandbytes") is not None)) if not ok]
    if missing:
        raise TrainingError(f"finetune.qlora needs {' and '.join(missing)}; set finetune.qlora=false "
                            "to train plain LoRA on this machine")


def _load_base(path: str, cfg: FinetuneConfig, device: torch.device) -> torch.nn.Module:
    if not cfg.qlora:
        return load_model(path, device)
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, device_map={"": 0})
    return prepare_model_for_kbit_training(model)


def attach_lora(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters; only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"finetune.target_modules {cfg.target_modules}: {exc}; "
                          f"this model's linear modules: {linear}") from None


def finetune(base: ModelDir, data: PreparedData, cfg: FinetuneConfig, max_length: int, runtime: RuntimeConfig,
             out: Path) -> TrainResult:
    """Train LoRA adapters on ``data.train`` over a frozen ``base``; save the adapter under ``out``."""
    check_qlora(cfg)
    apply_threads(runtime.threads)
    device = select_device(runtime.device)
    tok = load_tokenizer(base.path)
    model = attach_lora(_load_base(base.path, cfg, device), cfg)
    train = encode_split(tok, data.train, max_length, data.sources.get("train"))
    val = (encode_split(tok, data.validation, max_length, data.sources.get("validation"))
           if data.validation else None)
    start = time.perf_counter()
    losses, val_losses = train_loop(model, train, val, cfg, pad_id=tok.pad_token_id, device=device,
                                    seed=runtime.seed, desc="LoRA fine-tune")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return TrainResult(model=ModelDir.from_path(out, "lora", count_parameters(model)), stage="finetune",
                       method="qlora" if cfg.qlora else "lora", losses=losses, val_losses=val_losses,
                       seconds=time.perf_counter() - start,
                       trainable_parameters=count_parameters(model, trainable_only=True))


def merge(base: ModelDir, adapter: ModelDir, out: Path) -> ModelDir:
    """Fold the LoRA adapter into a copy of ``base`` and save a plain Hugging Face folder under ``out``."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(base.path), adapter.path).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    load_tokenizer(adapter.path).save_pretrained(out)
    return ModelDir.from_path(out, model.config.model_type, count_parameters(model))


finetune_task = task(finetune, name="finetune-lora", cache_key_fn=digest_cache_key)
merge_task = task(merge, name="merge", cache_key_fn=digest_cache_key)
