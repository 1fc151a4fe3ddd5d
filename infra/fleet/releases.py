"""A registered version as fleet variants: its served ONNX folder packed as one artifact and its GGUF files,
each stored by digest in the controller's artifact folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from infra.fleet.models import GoldenPrompt, Release, Variant
from infra.fleet.runtimes import pack_served_folder
from infra.targets.foundry import write_layout
from tasks.records import ModelRelease

GGUF_KINDS = {"Q4_K_M": "gguf-q4_k_m", "Q8_0": "gguf-q8_0"}
OVERHEAD = 64 * 1024 * 1024  # runtime, KV cache and buffers beside the weights


def artifacts_dir(root: Path) -> Path:
    """Where the controller keeps artifacts: ``SLMOPS_FLEET_ARTIFACTS``, else ``<home>/fleet/artifacts``."""
    return Path(os.environ.get("SLMOPS_FLEET_ARTIFACTS") or Path(root) / "fleet" / "artifacts")


def store_artifact(path: Path, artifacts: Path) -> tuple[str, int]:
    """Copy ``path`` into the store under its sha256 (once); (digest, size)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    sha = h.hexdigest()
    artifacts.mkdir(parents=True, exist_ok=True)
    final = artifacts / sha
    if not final.is_file():
        tmp = artifacts / f".{sha}.tmp"
        shutil.copyfile(path, tmp)
        tmp.replace(final)
    return sha, final.stat().st_size


def fleet_release(release: ModelRelease, golden: list[GoldenPrompt], artifacts: Path,
                  precision: str = "int4") -> Release:
    """The fleet's view of ``release``, stored in ``artifacts``: ``onnx-<precision>`` (the served folder as a
    tar), ``foundry`` (the same folder in Foundry Local's layout, with ``inference_model.json``), and the GGUF files
    it has (Q4_K_M, Q8_0)."""
    variants = []
    with tempfile.TemporaryDirectory(prefix="slmops-fleet-") as tmp:
        packed = pack_served_folder(Path(release.onnx_dir), Path(tmp) / "served.tar", release.version)
        layout = Path(tmp) / "foundry"
        write_layout(release, layout, f"{release.name}:{release.version}")
        foundry = pack_served_folder(layout, Path(tmp) / "foundry.tar", release.version)
        for kind, path in ((f"onnx-{precision}", packed), ("foundry", foundry)):
            sha, size = store_artifact(path, artifacts)
            variants.append(Variant(kind=kind, digest=sha, size_bytes=size, memory_bytes=size + OVERHEAD,
                                    url=f"/v1/artifacts/{sha}"))
    for quant, file in sorted(release.gguf.items()):
        if quant.upper() in GGUF_KINDS and Path(file).is_file():
            sha, size = store_artifact(Path(file), artifacts)
            variants.append(Variant(kind=GGUF_KINDS[quant.upper()], digest=sha, size_bytes=size,
                                    memory_bytes=size + OVERHEAD, url=f"/v1/artifacts/{sha}"))
    return Release(model=release.name, version=release.version, variants=variants, golden=golden)
