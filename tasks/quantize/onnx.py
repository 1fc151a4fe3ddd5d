"""ONNX for onnxruntime-genai through its model builder: int4 (block size, rtn/k_quant), int8, fp32."""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.config import OnnxPrecision, QuantizeConfig
from tasks.errors import QuantizeError
from tasks.quantize.tools import disk_size, run_tool
from tasks.records import Artifact, ModelDir, digest_dir


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
        # onnxruntime-genai 0.18 reads the un-prefixed names; its documented int4_* aliases are silently ignored
        cmd += ["--extra_options", f"block_size={cfg.int4_block_size}", f"algo_config={cfg.int4_algorithm}"]
    run_tool(cmd, f"onnxruntime-genai builder ({precision})", out.parent / f"onnx-{precision}.log")
    artifact = onnx_artifact(f"onnx-{precision}", out)
    if precision == "int4":
        built = {n["block_size"] for n in quantized_matmuls(out)}
        if built != {cfg.int4_block_size}:
            raise QuantizeError(f"onnx-int4: asked for block size {cfg.int4_block_size}, the builder wrote "
                                f"{sorted(built) or 'no int4 MatMul'}")
    return artifact


def quantized_matmuls(folder: Path) -> list[dict]:
    """Name, bits, block size and accuracy level of every ``MatMulNBits`` in a built model (read, not assumed)."""
    import onnx

    model = onnx.load(str(Path(folder) / "model.onnx"), load_external_data=False)
    found = []
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            found.append({"name": node.name, "bits": attrs.get("bits"), "block_size": attrs.get("block_size"),
                          "accuracy_level": attrs.get("accuracy_level")})
    return found
