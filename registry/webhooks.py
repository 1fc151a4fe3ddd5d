"""The MLflow webhook that tells the platform's receiver about every alias move (server-side, SQL backend)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

NAME = "slmops-alias-redeploy"
EVENTS = ["model_version_alias.created"]


def ensure_alias_webhook(client: MlflowClient, url: str, secret: str) -> str:
    """Create or update the webhook posting alias moves to ``url``, signed with ``secret``; return its id."""
    existing = [w for w in client.list_webhooks(max_results=1000) if w.name == NAME]
    description = "slmops: alias moves → receiver → Prefect event → redeploy of the bound targets"
    if existing:
        hook = client.update_webhook(existing[0].webhook_id, url=url, events=EVENTS, secret=secret,
                                     status="ACTIVE", description=description)
    else:
        hook = client.create_webhook(NAME, url=url, events=EVENTS, secret=secret, description=description)
    return hook.webhook_id
