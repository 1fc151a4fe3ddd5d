"""Olive path: GPTQ calibrated on local data, then ModelBuilder to an onnxruntime-genai int4 folder.

Olive 0.13's ModelBuilder pass works only with onnxruntime-genai <= 0.14.1, while our runtime (and Foundry
Local's SDK) needs 0.18. Olive therefore runs in a subprocess whose ``PYTHONPATH`` puts a project-made overlay
holding onnxruntime-genai 0.14.1 ahead of the main environment; everything else is shared.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tasks.config import QuantizeConfig
from tasks.errors import QuantizeError
from tasks.quantize.downloads import pinned_pip
from tasks.quantize.onnx import onnx_artifact, quantized_matmuls
from tasks.quantize.tools import last_error, run_tool
from tasks.records import Artifact, ModelDir
from tasks.settings import get_settings

OLIVE_GENAI = "onnxruntime-genai==0.14.1"


def olive_overlay(root: Path | None = None) -> Path:
    """Folder holding onnxruntime-genai 0.14.1 for Olive, installed from the package registry on first use."""
    overlay = (root or get_settings().root) / "envs" / "olive-genai-0.14.1"
    marker = overlay / ".complete"
    if marker.is_file():
        return overlay
    pinned_pip(OLIVE_GENAI, ["install", "--upgrade", "--target", str(overlay)], f"Olive's overlay {overlay}")
    marker.write_text(OLIVE_GENAI)
    return overlay


def workflow(model: ModelDir, calibration: str, cfg: QuantizeConfig, max_length: int, out: Path) -> dict:
    """The Olive workflow config: local calibration data → GPTQ → ModelBuilder (int4, CPU)."""
    return {
        "input_model": {"type": "HfModel", "model_path": model.path},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{
            "name": "slmops_calibration",
            "user_script": str(Path(__file__).with_name("olive_data.py")),
            "load_dataset_config": {"type": "slmops_chat_jsonl", "data_files": calibration,
                                    "model_path": model.path, "max_samples": cfg.olive_calibration_samples,
                                    "max_length": max_length},
        }],
        "passes": {
            "gptq": {"type": "Gptq", "data_config": "slmops_calibration", "group_size": cfg.int4_block_size},
            "builder": {"type": "ModelBuilder", "precision": "int4",
                        "int4_block_size": cfg.int4_block_size},
        },
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(out.parent / ".olive-cache"),
        "output_dir": str(out),
        "log_severity_level": 1,
    }


def build_olive_gptq(model: ModelDir, calibration: str, cfg: QuantizeConfig, max_length: int,
                     out: Path) -> Artifact:
    """Run the Olive workflow and check that it really produced a model (Olive exits 0 when a pass failed) with
    int4 MatMuls in the asked block size (read from the built model).

    Calibration rows longer than ``max_length`` (``data.max_length``) fail the run instead of being cut.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    config_file = out.parent / "olive-workflow.json"
    config_file.write_text(json.dumps(workflow(model, calibration, cfg, max_length, out), indent=2))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(olive_overlay()), *filter(None, [env.get("PYTHONPATH")])])
    run_tool([sys.executable, "-m", "olive", "run", "--config", str(config_file)], "Olive GPTQ workflow",
             out.parent / "olive.log", env=env)
    found = sorted(out.rglob("genai_config.json"))
    if not found:
        log_file = out.parent / "olive.log"
        raise QuantizeError(f"Olive exited 0 but wrote no model under {out} (a pass failed): "
                            f"{last_error(log_file)} (full log: {log_file})")
    built = {(n["bits"], n["block_size"]) for n in quantized_matmuls(found[0].parent)}
    if built != {(4, cfg.int4_block_size)}:
        raise QuantizeError(f"olive-gptq-int4: asked for int4 in blocks of {cfg.int4_block_size}, Olive wrote "
                            f"MatMulNBits (bits, block size) {sorted(built) or 'none'}")
    return onnx_artifact("olive-gptq-int4", found[0].parent)
