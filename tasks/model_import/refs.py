"""``gguf:PATH`` and ``ollama:NAME[:TAG]`` model references resolved to cached Hugging Face folders."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.errors import ModelError
from tasks.model_import.gguf_file import check_supported, dequantize_gguf, inspect_gguf, locate_gguf, write_record
from tasks.model_import.ollama_store import find_ollama_gguf
from tasks.records import digest_file

SCHEMES = ("gguf:", "ollama:")
RECORD = "import.json"


def is_import_ref(ref: str) -> bool:
    """True for the references this module resolves."""
    return ref.startswith(SCHEMES)


def source_gguf(ref: str) -> Path:
    """The GGUF file a ``gguf:`` or ``ollama:`` reference names."""
    scheme, _, rest = ref.partition(":")
    if not rest:
        raise ModelError(f"{ref!r}: {scheme}: needs a {'path' if scheme == 'gguf' else 'model name'} after it")
    return locate_gguf(rest) if scheme == "gguf" else find_ollama_gguf(rest)


def import_model(ref: str, root: Path) -> Path:
    """The Hugging Face folder of ``ref``, dequantized on first use and cached by the GGUF's sha256."""
    gguf = source_gguf(ref)
    digest = digest_file(gguf)
    out = Path(root) / "imports" / f"gguf-{digest[:16]}"
    if (out / RECORD).is_file():
        return out
    info = inspect_gguf(gguf)
    check_supported(info, ref)
    out.parent.mkdir(parents=True, exist_ok=True)
    dequantize_gguf(gguf, out)
    write_record(out, {"source": ref, "gguf_file": gguf.name, "gguf_sha256": digest,
                       "architecture": info.architecture, "quant_type": info.quant_type,
                       "tensor_types": sorted(info.tensor_types)})
    return out


def resolve_import(ref: str, root: Path) -> str:
    """``ref`` as a local folder path when it is a ``gguf:``/``ollama:`` reference, else unchanged."""
    return str(import_model(ref, root)) if is_import_ref(ref) else ref


def import_record(path: str | Path) -> dict | None:
    """Where an imported folder came from (source, GGUF digest, quant type), or None for other folders."""
    record = Path(path) / RECORD
    return json.loads(record.read_text()) if record.is_file() else None
