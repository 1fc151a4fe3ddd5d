"""The quantize step: build every configured artifact of a merged Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.caching import digest_cache_key
from tasks.config import QuantizeConfig
from tasks.errors import QuantizeError
from tasks.quantize.adapters import build_multi_lora
from tasks.quantize.gguf import build_gguf
from tasks.quantize.olive import build_olive_gptq
from tasks.quantize.onnx import build_onnx
from tasks.records import Artifact, ModelDir


def quantize(model: ModelDir, cfg: QuantizeConfig, calibration: str, max_length: int, out: Path) -> list[Artifact]:
    """Build every configured artifact of ``model`` under ``out``.

    ``calibration`` is a prepared train split whose rows fit ``max_length`` (``data.max_length``).
    """
    artifacts = [build_onnx(model, p, cfg, out / f"onnx-{p}") for p in cfg.onnx]
    if cfg.olive_gptq:
        artifacts.append(build_olive_gptq(model, calibration, cfg, max_length, out / "olive-gptq-int4"))
    if cfg.gguf:
        artifacts += build_gguf(model, cfg.gguf, out / "gguf")
    names = [a.name for a in artifacts]
    if cfg.served not in names:
        raise QuantizeError(f"quantize.served {cfg.served!r} was not built; built: {names}")
    return artifacts


quantize_task = task(quantize, name="quantize", cache_key_fn=digest_cache_key)
build_multi_lora_task = task(build_multi_lora, name="build-multi-lora", cache_key_fn=digest_cache_key)
