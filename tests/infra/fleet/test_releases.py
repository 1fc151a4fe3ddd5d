"""A registered version as fleet variants: the served folder as an onnx tar, Foundry Local's layout, its GGUFs;
stored once by digest."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from infra.fleet.models import GoldenPrompt
from infra.fleet.releases import fleet_release
from tasks.records import ModelRelease


def test_a_version_becomes_variants_stored_by_digest(tiny_onnx: Path, tmp_path: Path) -> None:
    gguf = tmp_path / "model-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    release = ModelRelease(name="tiny-slm", version="3", onnx_dir=str(tiny_onnx), gguf={"Q4_K_M": str(gguf)})
    store = tmp_path / "artifacts"
    found = fleet_release(release, [GoldenPrompt(prompt="Reverse: a b")], store)
    assert [v.kind for v in found.variants] == ["onnx-int4", "foundry", "gguf-q4_k_m"]
    for v in found.variants:
        assert hashlib.sha256((store / v.digest).read_bytes()).hexdigest() == v.digest
        assert v.size_bytes == (store / v.digest).stat().st_size and v.url == f"/v1/artifacts/{v.digest}"
    with tarfile.open(store / found.variants[1].digest) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("model/inference_model.json").read())
    assert "model/genai_config.json" in names and meta["Name"] == "tiny-slm:3"
    again = fleet_release(release, found.golden, store)  # the same bytes: the same digests, stored once
    assert [v.digest for v in again.variants] == [v.digest for v in found.variants]
    assert len(list(store.iterdir())) == 3
