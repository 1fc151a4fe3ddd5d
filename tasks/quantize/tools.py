"""What every quantization path shares: running an external tool with its log, and sizes on disk."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tasks.errors import QuantizeError


def disk_size(path: Path) -> int:
    """Bytes on disk of a file or folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_tool(cmd: list[str], what: str, log_file: Path, env: dict[str, str] | None = None) -> None:
    """Run a quantization tool, keeping its output in ``log_file``; fail with its last lines."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        raise QuantizeError(f"{what} failed (exit {proc.returncode}): {last_error(log_file)} (full log: {log_file})")


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def last_error(log_file: Path) -> str:
    """The last exception line a tool wrote (``ValueError: …``), else its last non-empty line."""
    lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if EXCEPTION_LINE.match(line)]
    return errors[-1] if errors else (lines[-1] if lines else "no output")
