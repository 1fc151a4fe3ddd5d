"""Data capture: off by default; when on, a sampled share of request and response bodies lands as JSONL that is
a valid batch input — and never a header or a key."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from openai import OpenAI

from infra import process
from tests.infra.serving.conftest import NAME, start_server

KEY = "capture-test-secret-key"


def _captured(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("capture-*.jsonl")) for line in f.read_text().splitlines()]


def test_capture_keeps_bodies_of_every_sampled_request_and_no_secret(tiny_onnx: Path, tmp_path: Path) -> None:
    folder = tmp_path / "captured"
    url, ref = start_server(tiny_onnx, tmp_path / "s.log", "--capture-percent", "100", "--capture-destination",
                            str(folder), api_key=KEY)
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse: a b c"}]
        whole = client.chat.completions.create(model=NAME, messages=user, max_tokens=6, temperature=0)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "Uppercase: d"}], max_tokens=5, stream=True))
        text = client.completions.create(model=NAME, prompt="a b c", max_tokens=4).choices[0].text
        refused = httpx.post(f"{url}/v1/chat/completions", json={"messages": user})  # no key: never captured
        assert refused.status_code == 401
    finally:
        process.stop(ref)  # SIGTERM: the writer finishes before the process exits
    rows = _captured(folder)
    assert [r.get("messages", r.get("prompt")) for r in rows] == [user, [{"role": "user", "content": "Uppercase: d"}],
                                                                  "a b c"]
    assert [r["response"]["text"] for r in rows] == [whole.choices[0].message.content, streamed, text]
    assert {r["metadata"]["model"] for r in rows} == {NAME} and {r["metadata"]["version"] for r in rows} == {"7"}
    assert rows[0]["metadata"]["max_tokens"] == 6 and len({r["id"] for r in rows}) == 3
    raw = "".join(f.read_text() for f in folder.glob("*.jsonl"))
    assert KEY not in raw and "authorization" not in raw.lower()


def test_capture_is_off_by_default_and_samples_a_share(tiny_onnx: Path, tmp_path: Path) -> None:
    off, half = tmp_path / "off", tmp_path / "half"
    url, ref = start_server(tiny_onnx, tmp_path / "a.log", "--capture-destination", str(off))
    url2, ref2 = start_server(tiny_onnx, tmp_path / "b.log", "--capture-percent", "50", "--capture-destination",
                              str(half))
    try:
        body = {"messages": [{"role": "user", "content": "Reverse: a b"}], "max_tokens": 2}
        for _ in range(40):
            assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 200
            assert httpx.post(f"{url2}/v1/chat/completions", json=body).status_code == 200
    finally:
        process.stop(ref)
        process.stop(ref2)
    assert not off.exists() or _captured(off) == []
    assert 5 <= len(_captured(half)) <= 35  # 50% of 40; p(outside) < 1e-5
