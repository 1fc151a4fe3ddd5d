"""The local target's handle on its stable-port proxy: who it is, and its admin API (switch, in-flight, drain).

Every failure of the admin API — refused, unreachable, an answer that is not the proxy's JSON — is a
DeployError naming the proxy, never a traceback.
"""

from __future__ import annotations

import logging
import time

import httpx
from pydantic import BaseModel, Field

from infra.process import ProcessRef
from infra.serving.proxy import ADMIN
from infra.targets.store import DeployError

log = logging.getLogger(__name__)


class ProxyAdmin(BaseModel):
    """A proxy process on a stable port; its admin token is why deployment records are private (0600)."""

    process: ProcessRef
    port: int
    url: str
    token: str = Field(description="Admin token (X-Slmops-Token) the proxy was started with.")
    log: str

    def _call(self, method: str, body: dict | None = None) -> dict:
        where = f"proxy {self.url}{ADMIN}"
        try:
            response = httpx.request(method, f"{self.url}{ADMIN}", json=body, timeout=10,
                                     headers={"X-Slmops-Token": self.token})
        except httpx.HTTPError as exc:
            raise DeployError(f"{where} unreachable for {method}: {exc!r}") from None
        if response.status_code != 200:
            raise DeployError(f"{where} refused {method}: HTTP {response.status_code} {response.text[:200]!r}")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("upstream"), str):
            raise DeployError(f"{where} answered {method} with {response.text[:200]!r}, not the proxy's JSON")
        return answer

    def upstream(self) -> str:
        """The backend URL the proxy routes to now."""
        return self._call("GET")["upstream"]

    def switch(self, upstream: str) -> None:
        """Route new requests to ``upstream`` (requests in flight finish where they started)."""
        routed = self._call("PUT", {"upstream": upstream})["upstream"]
        if routed != upstream.rstrip("/"):
            raise DeployError(f"proxy {self.url} routes to {routed} after the switch, not {upstream}")

    def inflight(self, upstream: str) -> int:
        """Requests the proxy has in flight to ``upstream``."""
        counts = self._call("GET").get("inflight")
        if not isinstance(counts, dict):
            raise DeployError(f"proxy {self.url} reported no in-flight counts")
        return int(counts.get(upstream.rstrip("/"), 0))

    def drain(self, upstream: str, timeout_s: float) -> None:
        """Wait until ``upstream`` has no request in flight through this proxy (at most ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self.inflight(upstream) > 0:
            if time.monotonic() >= deadline:
                log.warning("%s still had requests in flight after %.0fs; stopping it", upstream, timeout_s)
                return
            time.sleep(0.1)
