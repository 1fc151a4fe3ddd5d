"""Run-time downloads from the package registry, pinned by version and verified by sha256 (pip --require-hashes).

One tool is fetched on first use rather than installed with the project: llama.cpp's GGUF converter (from the
llama-cpp-python sdist of the installed version). Hashes are those PyPI publishes for each file; a version
without pinned hashes is refused, never fetched unverified.
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
