"""Secrets ``slmops up`` generates once and keeps private (0600): the webhook HMAC secret, MLflow's Fernet key.

They are read from their files by the processes that need them; never logged, never a flow parameter.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path


def _secret_file(path: Path, make: callable) -> Path:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
    return path


def webhook_secret_file(folder: Path) -> Path:
    """File holding the HMAC secret MLflow signs webhook deliveries with (made on first use)."""
    return _secret_file(folder / "webhook-secret", lambda: secrets.token_urlsafe(32))


def fernet_key_file(folder: Path) -> Path:
    """File holding the key MLflow encrypts stored webhook secrets with (``MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY``)."""
    return _secret_file(folder / "mlflow-fernet-key", lambda: base64.urlsafe_b64encode(os.urandom(32)).decode())


def read_secret(path: Path) -> str:
    """The secret in ``path`` (stripped)."""
    return Path(path).read_text().strip()
