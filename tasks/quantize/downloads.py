"""Run-time downloads from the package registry, pinned by version and verified by sha256 (pip --require-hashes).

Two tools are fetched on first use rather than installed with the project: llama.cpp's GGUF converter (from the
llama-cpp-python sdist of the installed version) and onnxruntime-genai 0.14.1 for Olive's overlay. Hashes are
those PyPI publishes for each file; a version without pinned hashes is refused, never fetched unverified.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from tasks.errors import SlmopsError

PINNED: dict[str, tuple[str, ...]] = {
    # sdist only: the converter script ships in it
    "llama-cpp-python==0.3.36": ("832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",),
    # cp311/cp312 wheels for manylinux x86_64/aarch64, macOS arm64, Windows amd64/arm64
    "onnxruntime-genai==0.14.1": (
        "cd8d6413124cca69c66f1dc347596a69f84e0cd5ad6dbd69de6ae524208990ac",
        "bf8f8d05ff2d4b5eee7de98f3f3a0fb16d7db456bc37bf9cb72231b4e9645775",
        "0a075530fc8b501cfcefc8c2ba13c17dc7ae74580f6369a7d1295ba7c5f6470b",
        "79595bb8336c5b3bb7e753d4cd6c7f2682d74cb5d30975fb59cd448551d5a853",
        "42e51ce6469db477d05513afb0669386dbca8adcecff88e0c41840f147561806",
        "cd8b4e9dd59c389168c68e7144e4c0c1ed8f7784491150ab53f17db0f72259ed",
        "09053361be024625df60cdb1349a3287f3d51b312ad3e41d3473016acf7b1db8",
        "c3a636ed7523ca9ead852ed183de1ed82eeba08e73e613f7f7ceb3a9f184b051",
        "8387b9124f9bc9d179d747c61679cae084c3fd4ae1c061fd7714fac8f45f1f62",
        "624a657e19f3c02292daf832450fdbd540ed1c124c78b088e019ef31c7c5f70b",
    ),
}


def pinned_pip(requirement: str, pip_args: list[str], what: str) -> None:
    """Run ``pip <pip_args> -r <requirement pinned by hash>`` (no dependencies); raise SlmopsError on failure."""
    hashes = PINNED.get(requirement)
    if not hashes:
        raise SlmopsError(f"{what}: {requirement} has no pinned sha256 in slmops; pinned: {', '.join(PINNED)}")
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(requirement + " " + " ".join(f"--hash=sha256:{h}" for h in hashes) + "\n")
        proc = subprocess.run([sys.executable, "-m", "pip", *pip_args, "--quiet", "--no-deps", "--require-hashes",
                               "-r", str(requirements)], capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    got = next((line.split()[-1] for line in lines if line.startswith("Got ")), None)
    if "DO NOT MATCH THE HASHES" in proc.stderr:
        raise SlmopsError(f"{what}: the file pip fetched for {requirement} has sha256 {got}, not a pinned one; "
                          "refusing to use it (a changed or tampered upload)")
    raise SlmopsError(f"{what}: pip could not fetch {requirement}: {lines[-1] if lines else 'no output'}")
