"""The MLflow webhook receiver: a verified ``model_version_alias.created`` delivery becomes a Prefect event.

Checks, in order, each refusing with a 4xx and doing nothing else: headers present (401), timestamp within
±``window_s`` (401), HMAC ``v1`` signature over ``{delivery_id}.{timestamp}.{body}`` (401), a JSON envelope of
the subscribed event (400), a delivery id not seen before (409, persisted across restarts), a model version the
registry knows (422). Then it posts the event ``slmops.alias.set`` (resource: model, alias, version) to Prefect
and answers 202. The event id is derived from (model, alias, version, the alias event's time), so a repeated
emission of one alias move is one event for Prefect (which deduplicates by id); a failed emission answers 503
and forgets the claim, so MLflow's retry goes through.

``python -m infra.platform.receiver --port N --secret-file F --deliveries DB`` (Prefect and MLflow from
``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from infra.platform.deliveries import DeliveryLog
from infra.platform.secrets import read_secret

log = logging.getLogger("slmops.receiver")
EVENT = "slmops.alias.set"
NAMESPACE = uuid.UUID("9f0f8f0e-6a4b-4d1c-9b7a-5c1e2d3f4a5b")
PATH = "/webhooks/mlflow"


def signature(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """MLflow's ``X-MLflow-Signature``: ``v1,`` + base64 HMAC-SHA256 of ``{delivery_id}.{timestamp}.{body}``."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def alias_event(model: str, alias: str, version: str, at: str, delivery_id: str) -> dict[str, Any]:
    """The Prefect event for one alias move (its id is the idempotency key of that move)."""
    return {"id": str(uuid.uuid5(NAMESPACE, f"{model}|{alias}|{version}|{at}")), "event": EVENT,
            "occurred": datetime.now(UTC).isoformat(),
            "resource": {"prefect.resource.id": f"slmops.model.{model}", "prefect.resource.name": model,
                         "slmops.model": model, "slmops.alias": alias, "slmops.version": str(version)},
            "payload": {"alias_set_at": at, "mlflow_delivery_id": delivery_id}}


def _refuse(status: int, why: str) -> JSONResponse:
    log.warning("refused delivery: %s", why)
    return JSONResponse({"error": why}, status)


def create_receiver(secret: str, deliveries: DeliveryLog, prefect_api: str, mlflow_uri: str,
                    window_s: float = 300.0) -> FastAPI:
    """The receiver app (see the module docstring for what it checks)."""
    app = FastAPI(title="slmops webhook receiver", docs_url=None, redoc_url=None)
    http = httpx.AsyncClient(timeout=10)

    def known_version(model: str, version: str) -> bool | None:
        """True/False when the registry answers; None when it cannot be asked now."""
        try:
            MlflowClient(mlflow_uri).get_model_version(model, version)
        except MlflowException as exc:
            return False if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") else None
        return True

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "deliveries": deliveries.count()}

    @app.post(PATH)
    async def receive(request: Request) -> JSONResponse:
        delivery_id = request.headers.get("x-mlflow-delivery-id", "")
        timestamp = request.headers.get("x-mlflow-timestamp", "")
        given = request.headers.get("x-mlflow-signature", "")
        if not (delivery_id and timestamp and given):
            return _refuse(401, "unsigned delivery (X-MLflow-Signature, -Delivery-Id and -Timestamp are required)")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > window_s:
            return _refuse(401, f"stale or malformed timestamp {timestamp[:20]!r} (window ±{window_s:.0f}s)")
        body = (await request.body()).decode("utf-8", errors="replace")
        if not hmac.compare_digest(given.encode(), signature(secret, delivery_id, timestamp, body).encode()):
            return _refuse(401, "signature does not match")
        try:
            envelope = json.loads(body)
            data = envelope["data"]
            model, alias, version = str(data["name"]), str(data["alias"]), str(data["version"])
        except (ValueError, KeyError, TypeError):
            return _refuse(400, "not a model_version_alias envelope with data.name, data.alias, data.version")
        if (envelope.get("entity"), envelope.get("action")) != ("model_version_alias", "created"):
            return _refuse(400, f"unexpected event {envelope.get('entity')}.{envelope.get('action')}")
        if not deliveries.claim(delivery_id, f"{model}@{alias}={version}"):
            return _refuse(409, f"delivery {delivery_id} was already received (replay)")
        known = await asyncio.to_thread(known_version, model, version)
        if known is None:
            deliveries.release(delivery_id)
            return JSONResponse({"error": "the registry cannot be reached; retry"}, 503)
        if not known:
            return _refuse(422, f"unknown model version {model}/{version} in the registry")
        event = alias_event(model, alias, version, str(envelope.get("timestamp", timestamp)), delivery_id)
        try:
            posted = await http.post(f"{prefect_api.rstrip('/')}/events", json=[event])
            posted.raise_for_status()
        except httpx.HTTPError as exc:
            deliveries.release(delivery_id)
            log.error("could not emit %s to Prefect: %s", EVENT, exc)
            return JSONResponse({"error": "Prefect did not take the event; retry"}, 503)
        log.info("%s@%s → version %s: event %s emitted", model, alias, version, event["id"])
        return JSONResponse({"event_id": event["id"]}, 202)

    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the receiver on 127.0.0.1 until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m infra.platform.receiver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret-file", type=Path, required=True, help="File holding the webhook HMAC secret.")
    parser.add_argument("--deliveries", type=Path, required=True, help="sqlite file of received delivery ids.")
    parser.add_argument("--window-s", type=float, default=300.0, help="Accepted clock skew of deliveries.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_receiver(read_secret(args.secret_file), DeliveryLog(args.deliveries), os.environ["PREFECT_API_URL"],
                          os.environ["MLFLOW_TRACKING_URI"], args.window_s)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
