"""GGUF for Ollama / llama.cpp: llama.cpp's converter (f16, q8_0) and quantizer (Q4_0, Q4_K_M).

Needs the ``gguf`` extra (llama-cpp-python, built from source). The converter script ships in
llama-cpp-python's sdist; it is fetched from the package registry for the installed version on first use.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tasks.config import GgufType
from tasks.errors import SlmopsError
from tasks.quantize import Artifact, QuantizeError, disk_size, run_tool
from tasks.records import ModelDir, digest_file
from tasks.runners import Generation
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
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                               "llama-cpp-python", "-d", tmp, f"llama-cpp-python=={version}"], capture_output=True,
                              text=True, check=False)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            raise SlmopsError(f"could not fetch the llama-cpp-python {version} sdist for its converter:\n"
                              f"{proc.stderr[-2000:]}")
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
    run_tool([sys.executable, "-m", "tasks.gguf_convert", str(llama_cpp_tools()), model.path, "--outfile", str(out),
              "--outtype", outtype], f"llama.cpp convert_hf_to_gguf ({outtype})", out.with_suffix(".log"))
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


class GgufRunner:
    """A GGUF file in llama.cpp (through llama-cpp-python)."""

    def __init__(self, path: str, threads: int | None = None, n_ctx: int = 512):
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=threads,
                         n_batch=n_ctx)
        self.eos = self.llm.token_eos()

    def nll(self, ids: list[int], labels: list[int]) -> tuple[float, int]:
        from tasks.runners import nll_from_logits

        self.llm.reset()
        self.llm.eval(ids)
        return nll_from_logits(self.llm.scores[: len(ids)].copy(), ids, labels)

    def generate(self, prompt: list[int], max_new_tokens: int, min_new_tokens: int = 0) -> Generation:
        import numpy as np

        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(prompt)
        tokens: list[int] = []
        ttft = 0.0
        while len(tokens) < max_new_tokens:
            logits = self.llm.scores[self.llm.n_tokens - 1].copy()
            if len(tokens) < min_new_tokens:
                logits[self.eos] = -np.inf
            token = int(np.argmax(logits))
            if not tokens:
                ttft = time.perf_counter() - start
            if token == self.eos:
                break
            tokens.append(token)
            self.llm.eval([token])
        return Generation(tokens, ttft, time.perf_counter() - start)
