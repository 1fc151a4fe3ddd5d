"""The stable-port proxy's admin API: authenticated, validated, and in-flight counts that do not pile up."""

from __future__ import annotations

from fastapi.testclient import TestClient

from infra.process import free_port
from infra.serving.proxy import ADMIN, create_proxy


def test_admin_api_checks_token_and_body_and_forgets_finished_upstreams() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = TestClient(create_proxy(dead, "tok"))
    admin = {"X-Slmops-Token": "tok"}
    assert client.get(ADMIN).status_code == 403
    assert client.put(ADMIN, json={"upstream": "http://x"}, headers={"X-Slmops-Token": "nope"}).status_code == 403
    for body in ({"upstream": 5}, {"other": "http://x"}, ["http://x"]):
        assert client.put(ADMIN, json=body, headers=admin).status_code == 400
    assert client.put(ADMIN, content=b"not json", headers=admin).status_code == 400
    assert client.get(ADMIN, headers=admin).json() == {"upstream": dead, "inflight": {}}

    unavailable = client.get("/health")  # nothing listens upstream
    assert unavailable.status_code == 502 and unavailable.headers["Retry-After"] == "1"
    assert client.get(ADMIN, headers=admin).json()["inflight"] == {}, "a finished request leaves no count behind"

    assert client.put(ADMIN, json={"upstream": "http://127.0.0.1:9/"}, headers=admin).json() == \
        {"upstream": "http://127.0.0.1:9"}
