"""Webhook deliveries already accepted, persisted (sqlite) so a replay is refused even after a restart."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

KEEP_S = 7 * 24 * 3600  # far beyond the timestamp window: older deliveries are refused as stale anyway


class DeliveryLog:
    """Claims delivery ids once; a second claim of the same id fails."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, received REAL, summary TEXT)")
        self._lock = threading.Lock()

    def claim(self, delivery_id: str, summary: str) -> bool:
        """Record ``delivery_id``; False when it was already recorded (a replay)."""
        with self._lock:
            self._db.execute("DELETE FROM deliveries WHERE received < ?", (time.time() - KEEP_S,))
            try:
                self._db.execute("INSERT INTO deliveries VALUES (?, ?, ?)", (delivery_id, time.time(), summary))
            except sqlite3.IntegrityError:
                return False
            return True

    def release(self, delivery_id: str) -> None:
        """Forget a claim whose processing failed, so MLflow's retry of it is accepted."""
        with self._lock:
            self._db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))

    def count(self) -> int:
        """Deliveries on record."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
