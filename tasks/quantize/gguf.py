"""GGUF for Ollama / llama.cpp: llama.cpp's converter (f16, q8_0) and quantizer (Q4_0, Q4_K_M).

Needs the ``gguf`` extra (llama-cpp-python, built from source). The converter script ships in
llama-cpp-python's sdist; it is fetched from the package registry for the installed version on first use.
"""

from __future__ import annotations

import importlib.metadata
import sys
import tarfile
import tempfile
from pathlib import Path

from tasks.config import GgufType
from tasks.errors import QuantizeError, SlmopsError
from tasks.quantize.downloads import pinned_pip
from tasks.quantize.tools import disk_size, run_tool
from tasks.records import Artifact, ModelDir, digest_file
from tasks.settings import get_settings

CONVERTER_TYPES = {"f16": "f16", "q8_0": "q8_0"}
QUANTIZER_TYPES = {"Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
SDIST_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def llama_cpp_version() -> str:
    """Installed llama-cpp-python version, or a clear error naming the extra to install."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise SlmopsError("GGUF needs llama-cpp-python: pip install -e '.[gguf]' "
                          "(builds llama.cpp from source, ~15 min on 2 cores)") from None


def llama_cpp_tools(root: Path | None = None) -> Path:
    """Folder with llama.cpp's converter matching the installed llama-cpp-python (fetched once)."""
    version = llama_cpp_version()
    folder = (root or get_settings().root) / "tools" / f"llama.cpp-{version}"
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    with tempfile.TemporaryDirectory() as tmp:
        # --no-binary for this package only: for ':all:' pip would also build cmake & co. from source
        pinned_pip(f"llama-cpp-python=={version}", ["download", "--no-binary", "llama-cpp-python", "-d", tmp],
                   "llama.cpp's GGUF converter")
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if not sdists:
            raise SlmopsError(f"pip fetched no llama-cpp-python {version} sdist for llama.cpp's converter")
        with tarfile.open(sdists[0]) as tar:
            prefix = tar.getnames()[0].split("/")[0] + "/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and any(m.name[len(prefix):].startswith(p) for p in SDIST_PARTS)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(folder, members=members, filter="data")
    return folder


def convert(model: ModelDir, outtype: str, out: Path) -> Path:
    """HF folder → GGUF file with llama.cpp's converter."""
    out.parent.mkdir(parents=True, exist_ok=True)
    run_tool([sys.executable, "-m", "tasks.quantize.gguf_convert", str(llama_cpp_tools()), model.path,
              "--outfile", str(out), "--outtype", outtype], f"llama.cpp convert_hf_to_gguf ({outtype})",
             out.with_suffix(".log"))
    return out


def quantize_file(source: Path, ftype: str, out: Path) -> Path:
    """Re-quantize a GGUF file with llama.cpp's quantizer (K-quants fall back where rows are too short)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if rc != 0:
        raise QuantizeError(f"llama.cpp quantize to {ftype} failed (return code {rc})")
    return out


def build_gguf(model: ModelDir, types: list[GgufType], out: Path) -> list[Artifact]:
    """Build each requested GGUF type of ``model`` under ``out`` and check each file loads."""
    built: dict[str, Path] = {}
    for t in types:
        path = out / f"model-{t}.gguf"
        if t in CONVERTER_TYPES:
            built[t] = convert(model, CONVERTER_TYPES[t], path)
        else:
            f16 = built.get("f16") or convert(model, "f16", out / "model-f16.gguf")
            built[t] = quantize_file(f16, QUANTIZER_TYPES[t], path)
    artifacts = []
    for t, path in built.items():
        if not path.is_file() or path.stat().st_size == 0:
            raise QuantizeError(f"gguf-{t}: the tool exited 0 but wrote no file at {path}")
        artifacts.append(Artifact(name=f"gguf-{t}", kind="gguf", path=str(path), digest=digest_file(path),
                                  size_bytes=disk_size(path)))
    return artifacts
