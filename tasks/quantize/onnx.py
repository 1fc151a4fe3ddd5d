"""ONNX for onnxruntime-genai through its model builder: int4 (block size, rtn/k_quant), int8, fp32."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from tasks.config import OnnxPrecision, QuantizeConfig
from tasks.errors import QuantizeError
from tasks.quantize.tools import disk_size, run_tool
from tasks.records import Artifact, ModelDir, digest_dir
from tasks.served_folder import CONFIG_FILE


def onnx_artifact(name: str, folder: Path) -> Artifact:
    """Check an ONNX GenAI folder is complete and describe it."""
    missing = [f for f in (CONFIG_FILE, "model.onnx") if not (folder / f).is_file()]
    if missing:
        raise QuantizeError(f"{name}: the tool exited 0 but {folder} lacks {', '.join(missing)}")
    return Artifact(name=name, kind="onnx", path=str(folder), digest=digest_dir(folder), size_bytes=disk_size(folder))


def build_onnx(model: ModelDir, precision: OnnxPrecision, cfg: QuantizeConfig, out: Path,
               extra_options: Sequence[str] = ()) -> Artifact:
    """Export with the onnxruntime-genai model builder (CPU execution provider); ``extra_options`` are the
    builder's own ``key=value`` options (tasks/quantize/adapters.py adds a LoRA branch with them)."""
    if precision == "int4" and cfg.int4_algorithm.startswith("k_quant"):
        check_k_quant_blocks(model, cfg.int4_block_size)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", model.path, "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(out.parent / f".cache-{precision}")]
    options = list(extra_options)
    if precision == "int4":
        # onnxruntime-genai 0.18 reads the un-prefixed names; its documented int4_* aliases are silently ignored
        options += int4_options(cfg)
    if options:
        cmd += ["--extra_options", *options]
    run_tool(cmd, f"onnxruntime-genai builder ({precision})", out.parent / f"{out.name}.log")
    artifact = onnx_artifact(f"onnx-{precision}", out)
    if precision == "int4":
        matmuls = quantized_matmuls(out)
        built = {n["block_size"] for n in matmuls}
        if built != {cfg.int4_block_size}:
            raise QuantizeError(f"onnx-int4: asked for block size {cfg.int4_block_size}, the builder wrote "
                                f"{sorted(built) or 'no int4 MatMul'}")
        levels = {n["accuracy_level"] for n in matmuls}
        if cfg.int4_accuracy_level is not None and levels != {cfg.int4_accuracy_level}:
            raise QuantizeError(f"onnx-int4: asked for accuracy level {cfg.int4_accuracy_level}, the builder wrote "
                                f"{sorted(levels)}")
        int8 = [n["name"] for n in matmuls if n["bits"] == 8]
        if cfg.int4_algorithm.endswith("_last") and not any("lm_head" in name for name in int8):
            raise QuantizeError(f"onnx-int4: asked for an int8 lm_head ({cfg.int4_algorithm}); the builder wrote "
                                f"int8 MatMuls {int8 or 'none'}")
    return artifact


def int4_options(cfg: QuantizeConfig) -> list[str]:
    """The builder's int4 ``key=value`` options for ``cfg`` ."""
    options = [f"block_size={cfg.int4_block_size}", f"algo_config={cfg.int4_algorithm}"]
    if cfg.int4_accuracy_level is not None:
        options.append(f"accuracy_level={cfg.int4_accuracy_level}")
    if cfg.int4_embeddings:
        options.append("op_types_to_quantize=MatMul/Gather")
    return options


def check_k_quant_blocks(model: ModelDir, block_size: int) -> None:
    """Refuse, before building, a block size that splits some MatMul input into an odd number of blocks.

    onnxruntime 1.31's k_quant packs two zero points per byte across rows and then fails to reshape them
    (``cannot reshape array of size …``) whenever a weight's input dimension has an odd number of blocks.
    """
    config = json.loads((Path(model.path) / "config.json").read_text())
    hidden = config.get("hidden_size")
    head_dim = config.get("head_dim") or (hidden // config["num_attention_heads"] if hidden else None)
    inputs = {"hidden_size": hidden, "intermediate_size": config.get("intermediate_size"),
              "num_attention_heads × head_dim": head_dim and config.get("num_attention_heads", 0) * head_dim}
    odd = {name: math.ceil(k / block_size) for name, k in inputs.items() if k and math.ceil(k / block_size) % 2}
    if odd:
        found = ", ".join(f"{name}={inputs[name]} → {blocks} block(s)" for name, blocks in odd.items())
        even = [b for b in (16, 32, 64, 128, 256)
                if all(not k or math.ceil(k / b) % 2 == 0 for k in inputs.values())]
        raise QuantizeError(f"int4 k_quant with block size {block_size} needs an even number of blocks per input "
                            f"dimension; {model.path} has {found}. Use quantize.int4_block_size from {even or 'none'} "
                            f"or quantize.int4_algorithm: rtn")


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
