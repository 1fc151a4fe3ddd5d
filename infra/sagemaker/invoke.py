"""Calling an endpoint: a chat request through ``invoke_endpoint``, or through S3 and ``invoke_endpoint_async``."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from infra.sagemaker.aws import AwsError, Clients, is_missing


def chat_body(prompt: str, max_tokens: int) -> bytes:
    """A greedy chat request as our serving runtime's /invocations takes it."""
    return json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0}).encode()


def answer_text(body: bytes) -> str:
    """The assistant's text from a chat (or completion) answer; raises ValueError for anything else."""
    payload = json.loads(body)
    choice = payload["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def invoke(clients: Clients, endpoint: str, body: bytes, attributes: str | None = None) -> bytes:
    """POST ``body`` to the endpoint's /invocations (JSON) and return the answer's bytes."""
    extra = {"CustomAttributes": attributes} if attributes else {}
    try:
        reply = clients.runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/json",
                                                Accept="application/json", Body=body, **extra)
    except Exception as exc:
        raise AwsError(f"invoke_endpoint {endpoint}: {exc}") from None
    return reply["Body"].read()


def split_s3(uri: str) -> tuple[str, str]:
    """('bucket', 'key') of ``s3://bucket/key``."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def invoke_async(clients: Clients, endpoint: str, body: bytes, bucket: str, prefix: str, timeout_s: float,
                 poll_s: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> tuple[bytes, dict[str, Any]]:
    """Write ``body`` to S3, queue it with ``invoke_endpoint_async`` and wait for its result object; return the
    result's bytes and the call's locations. A failure object, or no result within ``timeout_s``, is an error."""
    key = "/".join(p for p in (prefix.strip("/"), "async-input", f"{uuid.uuid4().hex}.json") if p)
    clients.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    try:
        reply = clients.runtime.invoke_endpoint_async(EndpointName=endpoint, ContentType="application/json",
                                                      Accept="application/json", InputLocation=f"s3://{bucket}/{key}")
    except Exception as exc:
        raise AwsError(f"invoke_endpoint_async {endpoint}: {exc}") from None
    locations = {"input": f"s3://{bucket}/{key}", "output": reply["OutputLocation"],
                 "failure": reply.get("FailureLocation"), "inference_id": reply.get("InferenceId")}
    deadline = time.monotonic() + timeout_s
    while True:
        for kind in ("output", "failure"):
            if locations[kind] and (found := _get(clients, locations[kind])) is not None:
                if kind == "failure":
                    raise AwsError(f"async inference {locations['inference_id']} failed: "
                                   f"{found.decode(errors='replace')[:500]} ({locations['failure']})")
                return found, locations
        if time.monotonic() >= deadline:
            raise AwsError(f"no async result at {locations['output']} after {timeout_s:.0f}s (input "
                           f"{locations['input']}); it may still come: read it from S3 later")
        sleep(poll_s)


def _get(clients: Clients, uri: str) -> bytes | None:
    bucket, key = split_s3(uri)
    try:
        return clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        if is_missing(exc):
            return None
        raise AwsError(f"reading {uri}: {exc}") from None
