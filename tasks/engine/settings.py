"""Settings of the generation engine: how it schedules, batches and queues.

``EngineConfig`` is the one statement of the engine's settings: the server's command line is made from its
fields (``python -m infra.serving --max-batch-size …``), the local target starts servers with ``engine_argv``,
and the SageMaker target hands them to the container as ``SLMOPS_ENGINE_*`` variables (``engine_env``), which
the container reads back with ``engine_from_env``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, Field


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class EngineConfig(BaseModel, extra="forbid"):
    """Batching and queueing of the generation engine."""

    scheduler: Literal["auto", "continuous", "batches"] = Field(
        "auto", description="continuous: requests join the running batch between decoding steps (onnxruntime run "
        "directly, a KV-cache slot per row); batches: onnxruntime-genai static batches decoded in turn; auto: "
        "continuous where the model's decoder allows it.")
    max_batch_size: int = Field(32, gt=0, description="Rows decoded together at most (continuous: KV-cache "
                                "slots per adapter, whose memory grows only with the tokens really cached; "
                                "batches: requests per static batch).")
    max_queue: int = Field(64, gt=0, description="Requests waiting for the engine before new ones get 503.")
    batch_window_ms: float = Field(5.0, ge=0, description="How long the first waiting request waits for company "
                                   "(batches only: continuous admits at every step).")
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 uses every available core.")
    int8_steps: Literal["auto", "on", "off"] = Field(
        "auto", description="Continuous only: decoding steps of many rows on an int8 copy of the int4 build's "
        "MatMuls, made at load (faster where the CPU has int8 GEMM units such as AMX or VNNI), with the prefills "
        "that join such a batch; a lone request stays on the build's weights. auto: both are timed at load and "
        "int8 is used from the row count where it wins, or not at all; on: from 2 rows; off: never.")
    max_running_batches: int = Field(4, gt=0, description="Batches only: static batches decoded in turn, so a "
                                     "request arriving while others run starts its own batch at once (1: one "
                                     "static batch at a time).")


ENGINE_ENV_PREFIX = "SLMOPS_ENGINE_"


def engine_argv(cfg: EngineConfig) -> list[str]:
    """The server's command-line options for ``cfg`` (``--max-batch-size 32`` …), every field spelled out."""
    return [arg for name in EngineConfig.model_fields
            for arg in (f"--{name.replace('_', '-')}", str(getattr(cfg, name)))]


def engine_env(cfg: EngineConfig) -> dict[str, str]:
    """``cfg`` as environment variables (``SLMOPS_ENGINE_MAX_BATCH_SIZE=32`` …) for a container."""
    return {f"{ENGINE_ENV_PREFIX}{name.upper()}": str(getattr(cfg, name)) for name in EngineConfig.model_fields}


def engine_from_env(environ: Mapping[str, str]) -> EngineConfig:
    """The engine settings a container was given (``engine_env``); absent variables keep their defaults."""
    given = {name: environ[key] for name in EngineConfig.model_fields
             if (key := f"{ENGINE_ENV_PREFIX}{name.upper()}") in environ}
    return EngineConfig.model_validate(given)
