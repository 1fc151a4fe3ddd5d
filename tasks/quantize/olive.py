"""Olive path: GPTQ calibrated on local data (Olive's ``Gptq`` pass), then our onnxruntime-genai 0.18 model builder
turns the GPTQ checkpoint into the int4 folder.

Olive writes a Hugging Face folder whose ``quantization_config`` (``quant_method: olive``) the builder reads as
is: the int4 weights, zero points and scales GPTQ chose are kept, and the builder adds the tied embedding /
lm_head in int4 (``int4_algorithm``). Olive's own ModelBuilder pass is not used: it needs onnxruntime-genai
<= 0.14.1, and the 0.18 builder shares the tied table (87.9 MB instead of 195.5 MB on SmolLM2-135M).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tasks.config import QuantizeConfig
from tasks.errors import QuantizeError
from tasks.quantize.onnx import build_onnx
from tasks.quantize.tools import last_error, run_tool
from tasks.records import Artifact, ModelDir

NAME = "olive-gptq-int4"


def workflow(model: ModelDir, calibration: str, cfg: QuantizeConfig, max_length: int, out: Path) -> dict:
    """The Olive workflow config: local calibration data → GPTQ (int4, asymmetric, CPU) → a Hugging Face folder."""
    return {
        "input_model": {"type": "HfModel", "model_path": model.path},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{
            "name": "slmops_calibration",
            "user_script": str(Path(__file__).with_name("olive_data.py")),
            "load_dataset_config": {"type": "slmops_chat_jsonl", "data_files": calibration,
                                    "model_path": model.path, "max_samples": cfg.olive_calibration_samples,
                                    "max_length": max_length, **calibration_text(cfg)},
        }],
        "passes": {**mixed_precision(cfg),
                   "gptq": {"type": "Gptq", "data_config": "slmops_calibration", "group_size": cfg.int4_block_size,
                            "damp_percent": cfg.olive_damp_percent}},
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(out.parent / ".olive-cache"),
        "output_dir": str(out),
        "log_severity_level": 1,
    }


def mixed_precision(cfg: QuantizeConfig) -> dict:
    """Olive's SelectiveMixedPrecision pass for ``olive_mixed_precision`` (none: no pass); GPTQ reads its choice."""
    if cfg.olive_mixed_precision == "none":
        return {}
    return {"mixed_precision": {"type": "SelectiveMixedPrecision", "algorithm": cfg.olive_mixed_precision,
                                "bits": 4, "high_bits": 8}}


def calibration_text(cfg: QuantizeConfig) -> dict:
    """The calibration dataset's general-text arguments (none without ``olive_calibration_text``)."""
    if not cfg.olive_calibration_text:
        return {}
    return {"text": cfg.olive_calibration_text,
            "text_samples": round(cfg.olive_calibration_samples * cfg.olive_calibration_text_share)}


def gptq_checkpoint(out: Path) -> Path:
    """The Hugging Face folder Olive wrote under ``out`` (the one with an Olive ``quantization_config``)."""
    for config in sorted(out.rglob("config.json")):
        quant = json.loads(config.read_text()).get("quantization_config") or {}
        if quant.get("quant_method") == "olive":
            return config.parent
    log_file = out.parent / "olive.log"
    raise QuantizeError(f"Olive exited 0 but wrote no GPTQ checkpoint under {out} (a pass failed): "
                        f"{last_error(log_file)} (full log: {log_file})")


def build_olive_gptq(model: ModelDir, calibration: str, cfg: QuantizeConfig, max_length: int,
                     out: Path) -> Artifact:
    """GPTQ with Olive, then the int4 ONNX folder ``out`` built from its checkpoint; block size and accuracy level
    are read back from the built model (``build_onnx``).

    Calibration rows longer than ``max_length`` (``data.max_length``) fail the run instead of being cut.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f"{out.name}-gptq"
    config_file = out.parent / "olive-workflow.json"
    config_file.write_text(json.dumps(workflow(model, calibration, cfg, max_length, staging), indent=2))
    run_tool([sys.executable, "-m", "olive", "run", "--config", str(config_file)], "Olive GPTQ workflow",
             out.parent / "olive.log")
    checkpoint = gptq_checkpoint(staging)
    artifact = build_onnx(ModelDir(path=str(checkpoint), digest=model.digest), "int4", cfg, out)
    for scratch in (staging, out.parent / ".olive-cache"):  # the checkpoint lives on inside the ONNX folder
        shutil.rmtree(scratch, ignore_errors=True)
    return artifact.model_copy(update={"name": NAME})
