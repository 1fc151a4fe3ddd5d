"""Quantize a merged Hugging Face folder: ONNX for onnxruntime-genai (int4/int8/fp32), Olive GPTQ, GGUF."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Literal

from prefect import task
from pydantic import BaseModel, Field

from tasks.caching import digest_cache_key
from tasks.config import OnnxPrecision, QuantizeConfig
from tasks.errors import SlmopsError
from tasks.records import ModelDir, digest_dir

log = logging.getLogger(__name__)



class QuantizeError(SlmopsError):
    """A quantization tool failed or produced no model."""


class Artifact(BaseModel):
    """One quantized artifact: a folder (ONNX) or a file (GGUF)."""

    name: str = Field(description="e.g. onnx-int4, olive-gptq-int4, gguf-Q4_K_M")
    kind: Literal["onnx", "gguf"]
    path: str
    digest: str
    size_bytes: int


def disk_size(path: Path) -> int:
    """Bytes on disk of a file or folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_tool(cmd: list[str], what: str, log_file: Path, env: dict[str, str] | None = None) -> None:
    """Run a quantization tool, keeping its output in ``log_file``; fail with its last lines."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        raise QuantizeError(f"{what} failed (exit {proc.returncode}); log {log_file}:\n{tail}")


def onnx_artifact(name: str, folder: Path) -> Artifact:
    """Check an ONNX GenAI folder is complete and describe it."""
    missing = [f for f in ("genai_config.json", "model.onnx") if not (folder / f).is_file()]
    if missing:
        raise QuantizeError(f"{name}: the tool exited 0 but {folder} lacks {', '.join(missing)}")
    return Artifact(name=name, kind="onnx", path=str(folder), digest=digest_dir(folder), size_bytes=disk_size(folder))


def build_onnx(model: ModelDir, precision: OnnxPrecision, cfg: QuantizeConfig, out: Path) -> Artifact:
    """Export with the onnxruntime-genai model builder (CPU execution provider)."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", model.path, "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(out.parent / f".cache-{precision}")]
    if precision == "int4":
        cmd += ["--extra_options", f"int4_block_size={cfg.int4_block_size}",
                f"int4_algo_config={cfg.int4_algorithm}"]
    run_tool(cmd, f"onnxruntime-genai builder ({precision})", out.parent / f"onnx-{precision}.log")
    return onnx_artifact(f"onnx-{precision}", out)


def quantize(model: ModelDir, cfg: QuantizeConfig, calibration: str, out: Path) -> list[Artifact]:
    """Build every configured artifact of ``model`` under ``out``; ``calibration`` is a prepared train split."""
    artifacts = [build_onnx(model, p, cfg, out / f"onnx-{p}") for p in cfg.onnx]
    if cfg.olive_gptq:
        from tasks.olive import build_olive_gptq

        artifacts.append(build_olive_gptq(model, calibration, cfg, out / "olive-gptq-int4"))
    if cfg.gguf:
        from tasks.gguf import build_gguf

        artifacts += build_gguf(model, cfg.gguf, out / "gguf")
    names = [a.name for a in artifacts]
    if cfg.served not in names:
        raise QuantizeError(f"quantize.served {cfg.served!r} was not built; built: {names}")
    return artifacts


quantize_task = task(quantize, name="quantize", cache_key_fn=digest_cache_key)
