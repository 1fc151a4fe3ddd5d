"""Multi-LoRA artifacts: one ONNX base whose LoRA weights are optional inputs, and each adapter as ``.onnx_adapter``.

onnxruntime-genai's model builder, given a peft adapter (``adapter_path``), adds a float LoRA branch
(``x·A·B``, B pre-scaled by alpha/r) beside every adapted MatMul; the base weights are quantized as usual and the
branch is kept out of int4. Olive's ``ExtractAdapters`` then turns the branch's weights into optional graph inputs
with a dynamic rank (empty by default: the base answers alone) and writes them to an ``.onnx_adapter`` file, which
onnxruntime-genai activates per generator (``og.Adapters``). A further adapter's weights are read straight from
its peft file and renamed to the base's inputs (A transposed, B transposed and scaled by alpha/r: what the
builder's branch holds, bit for bit); an adapter that mapping does not cover (rsLoRA, per-module ranks or alphas,
DoRA, biases, other module names) is built like the first and only its weights file kept.

Layout of a multi-LoRA folder: the usual onnxruntime-genai files plus ``adapters/<name>.onnx_adapter``; the serving
runtime serves each adapter under its file's name.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tasks.config import OnnxPrecision, QuantizeConfig
from tasks.errors import QuantizeError
from tasks.quantize.onnx import build_onnx, onnx_artifact, quantized_matmuls
from tasks.records import Artifact, ModelDir
from tasks.served_folder import ADAPTER_SUFFIX, ADAPTERS_DIR

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# the builder's names for the LoRA branch of each projection (builders/base.py, make_matmul_lora)
_PROJECTIONS = {"attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def lora_branch_nodes(layers: int) -> list[str]:
    """Every MatMul name the builder may give a LoRA branch in a model of ``layers`` layers (kept out of int4)."""
    return [f"/model/layers.{i}/{block}/{proj}/lora_{ab}/MatMul"
            for i in range(layers) for block, projs in _PROJECTIONS.items() for proj in projs for ab in "AB"]


def with_adapter_options(base: ModelDir, adapter: ModelDir) -> list[str]:
    """Builder options that add ``adapter``'s LoRA branch to ``base`` and keep the branch in float."""
    layers = int(json.loads((Path(base.path) / "config.json").read_text())["num_hidden_layers"])
    return [f"adapter_path={adapter.path}", "hf_token=false", f"nodes_to_exclude={','.join(lora_branch_nodes(layers))}"]


def check_adapter_name(name: str) -> str:
    """``name`` if it can name a served adapter (a file name and a request's ``model``), else QuantizeError."""
    if not ADAPTER_NAME.match(name):
        raise QuantizeError(f"adapter name {name!r}: use 1–64 letters, digits, '.', '_' or '-', starting with a "
                            "letter or digit")
    return name


def lora_inputs(model_dir: Path) -> dict[str, list[int | str]]:
    """The LoRA weight inputs of a built model and their shapes (``lora_r`` where the rank is free)."""
    import onnx

    model = onnx.load(str(Path(model_dir) / "model.onnx"), load_external_data=False)
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in model.graph.input if ".lora_A." in i.name or ".lora_B." in i.name}


def _build_with_adapter(base: ModelDir, adapter: ModelDir, precision: OnnxPrecision, cfg: QuantizeConfig,
                        out: Path) -> Path:
    """The base with ``adapter``'s float LoRA branch, then its LoRA weights extracted; returns the weights file."""
    built = out.parent / f"{out.name}.with-adapter"
    shutil.rmtree(built, ignore_errors=True)
    build_onnx(base, precision, cfg, built, with_adapter_options(base, adapter))
    quantized_branch = [m["name"] for m in quantized_matmuls(built) if "/lora_" in m["name"]]
    if quantized_branch:
        raise QuantizeError(f"the builder quantized the LoRA branch ({quantized_branch[:3]}…); multi-LoRA needs "
                            "it in float")
    _extract(built, out)
    shutil.rmtree(built)
    return out / "adapter_weights.onnx_adapter"


def _extract(built: Path, out: Path) -> None:
    """Olive's ExtractAdapters: LoRA weights → optional inputs of ``out/model.onnx`` + ``adapter_weights``."""
    from olive.model import ONNXModelHandler
    from olive.passes.olive_pass import create_pass_from_dict
    from olive.passes.onnx.extract_adapters import ExtractAdapters

    options = {"make_inputs": True, "dynamic_lora_r": True, "optional_inputs": True, "save_format": "onnx_adapter"}
    extract = create_pass_from_dict(ExtractAdapters, options, disable_search=True)
    out.mkdir(parents=True, exist_ok=True)
    result = extract.run(ONNXModelHandler(str(built), onnx_file_name="model.onnx"), str(out / "model.onnx"))
    if not result.model_attributes or not result.model_attributes.get("constant_inputs"):
        raise QuantizeError(f"Olive's ExtractAdapters found no LoRA weights in {built}")
    for file in built.iterdir():  # the onnxruntime-genai files (config, tokenizer, chat template)
        if file.is_file() and not file.name.startswith("model.onnx"):
            shutil.copy2(file, out / file.name)


def build_multi_lora(base: ModelDir, adapters: dict[str, ModelDir], precision: OnnxPrecision,
                     cfg: QuantizeConfig, out: Path) -> Artifact:
    """A multi-LoRA folder: ``base`` quantized once, with every adapter of ``adapters`` (name → peft folder).

    The first adapter decides which projections have a LoRA branch; every other adapter may adapt those or
    fewer (an adapter that adapts more is refused, naming the missing projections).
    """
    if not adapters:
        raise QuantizeError("a multi-LoRA build needs at least one adapter")
    names = [check_adapter_name(n) for n in adapters]
    shutil.rmtree(out, ignore_errors=True)
    first = _build_with_adapter(base, adapters[names[0]], precision, cfg, out)
    (out / ADAPTERS_DIR).mkdir()
    first.rename(out / ADAPTERS_DIR / f"{names[0]}{ADAPTER_SUFFIX}")
    for name in names[1:]:
        add_adapter(out, base, name, adapters[name], precision, cfg)
    return onnx_artifact(f"onnx-{precision}-multi-lora", out)


def add_adapter(model_dir: Path, base: ModelDir, name: str, adapter: ModelDir, precision: OnnxPrecision,
                cfg: QuantizeConfig) -> Path:
    """Add ``adapter`` to the multi-LoRA folder ``model_dir`` built from ``base``; returns its weights file."""
    check_adapter_name(name)
    expected = lora_inputs(model_dir)
    target = model_dir / ADAPTERS_DIR / f"{name}{ADAPTER_SUFFIX}"
    weights = peft_lora_weights(adapter, expected)
    if weights is not None:
        _check_fits(name, adapter, model_dir, expected, set(weights))
        target.parent.mkdir(exist_ok=True)
        write_adapter(weights, target)
        return target
    with tempfile.TemporaryDirectory(prefix="adapter-", dir=model_dir.parent) as tmp:
        built = _build_with_adapter(base, adapter, precision, cfg, Path(tmp) / "model")
        _check_fits(name, adapter, model_dir, expected, set(lora_inputs(Path(tmp) / "model")))
        target.parent.mkdir(exist_ok=True)
        shutil.move(built, target)
    return target


def _check_fits(name: str, adapter: ModelDir, model_dir: Path, expected: dict[str, list[int | str]],
                found: set[str]) -> None:
    """Refuse an adapter with weights for projections the base has no LoRA branch for, naming them."""
    extra = _projections(found - set(expected))
    if extra:
        raise QuantizeError(f"adapter {name!r} ({adapter.path}) adapts projections the base at {model_dir} has "
                            f"no LoRA branch for: {extra}; the base adapts {_projections(set(expected))}. Rebuild "
                            "the base with an adapter that targets every module the others do")


def _projections(names: set[str]) -> list[str]:
    """``model.layers.3.mlp.gate_proj.lora_A.MatMul.weight`` … → ``['mlp.gate_proj']``."""
    return sorted({re.sub(r"^model\.layers\.\d+\.", "", n).rsplit(".lora_", 1)[0] for n in names})


_PEFT_KEY = re.compile(r"^base_model\.model\.(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)"
                       r"\.lora_([AB])\.weight$")


def peft_lora_weights(adapter: ModelDir, expected: dict[str, list[int | str]]) -> dict[str, np.ndarray] | None:
    """``adapter``'s LoRA weights under the base's input names (``expected``, from ``lora_inputs``; a projection
    the base lacks keeps its would-be name), or None when the adapter uses anything this direct mapping does not
    cover or a shape does not fit, so the caller builds it instead."""
    from safetensors.numpy import load_file

    folder = Path(adapter.path)
    config = json.loads((folder / "adapter_config.json").read_text())
    plain = (config.get("peft_type") == "LORA" and not config.get("use_rslora") and not config.get("use_dora")
             and not config.get("rank_pattern") and not config.get("alpha_pattern")
             and not config.get("fan_in_fan_out") and config.get("bias", "none") == "none")
    if not plain or not (folder / "adapter_model.safetensors").is_file():
        return None
    scaling = config["lora_alpha"] / config["r"]
    weights = {}
    for key, value in load_file(folder / "adapter_model.safetensors").items():
        match = _PEFT_KEY.match(key)
        if not match:
            return None
        layer, block, proj, ab = match.groups()
        name = f"model.layers.{layer}.{'attn' if block == 'self_attn' else 'mlp'}.{proj}.lora_{ab}.MatMul.weight"
        weight = (value.T * scaling if ab == "B" else value.T).astype(np.float32)
        shape = expected.get(name)
        if shape is not None and any(d != "lora_r" and d != n for d, n in zip(shape, weight.shape, strict=True)):
            return None
        weights[name] = np.ascontiguousarray(weight)
    return weights


def write_adapter(weights: dict[str, np.ndarray], path: Path) -> None:
    """Write LoRA weights as an onnxruntime ``.onnx_adapter`` file."""
    import onnxruntime as ort

    adapter = ort.AdapterFormat()
    adapter.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in weights.items()})
    adapter.export_adapter(str(path))
