"""The platform for real: `slmops up` (Prefect server, MLflow server with webhooks, receiver, flow-run starter,
worker), promotion →
automatic redeploy through MLflow's own webhook delivery, forged deliveries refused, reconcile, approval, down.

Nothing is stubbed: the servers, the worker and the served models are real processes on 127.0.0.1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from infra import process
from infra.platform.state import load_state
from tests.e2e.conftest import PORTS
from tests.e2e.platform_harness import alias_envelope, served_version, wait_for
from tests.fixtures.clients import ContinuousClient

DEPLOYMENTS = {"demo-pipeline", "demo-train", "deploy-champion-local", "promote", "rollback", "redeploy", "reconcile",
               "fleet-rollout", "fleet-step"}


def test_up_starts_every_service_and_every_flow_is_a_deployment_with_a_typed_form(platform) -> None:
    status = platform.cli("platform", "status", "--json")
    report = json.loads(status.stdout)
    assert report["up"] is True and set(report["services"]) == {"prefect", "mlflow", "receiver", "fleet",
                                                               "starter", "worker"}
    assert {s["state"] for s in report["services"].values()} == {"up"}
    deployments = {d["name"]: d for d in platform.prefect("POST", "/deployments/filter", json={}).json()}
    assert set(deployments) >= DEPLOYMENTS
    schema = deployments["demo-pipeline"]["parameter_openapi_schema"]
    distill = schema["definitions"]["DistillConfig"]["properties"]
    assert distill["steps"]["description"] == "Optimizer steps." and distill["steps"]["type"] == "integer"
    promote = deployments["promote"]["parameter_openapi_schema"]["definitions"]["PromoteRequest"]["properties"]
    assert promote["alias"]["description"] == "Alias to move."
    assert deployments["reconcile"]["schedules"][0]["schedule"]["interval"] == 300
    # the flows that must react fast are forked from the warm starter; the pipeline starts as Prefect starts it
    assert deployments["redeploy"]["job_variables"]["command"].endswith("starter_client.py")
    assert "command" not in deployments["demo-pipeline"]["job_variables"]
    triggers = platform.prefect("POST", "/automations/filter", json={}).json()
    assert any(a["trigger"]["expect"] == ["slmops.alias.set"] for a in triggers)
    hooks = [w for w in platform.mlflow().list_webhooks() if w.name == "slmops-alias-redeploy"]
    assert len(hooks) == 1 and hooks[0].url == platform.state.receiver_url
    assert (platform.home / "platform" / "webhook-secret").stat().st_mode & 0o777 == 0o600
    assert (platform.home / "platform.json").stat().st_mode & 0o777 == 0o600
    secret = platform.secret()
    for service in platform.state.services.values():
        assert secret not in Path(service.log).read_text(errors="replace"), f"the secret leaked into {service.log}"


def test_up_twice_is_a_noop_that_reports_what_runs(platform) -> None:
    before = {n: s.process.pid for n, s in platform.state.services.items()}
    again = platform.cli("up")
    assert "the platform is already up" in again.stdout and platform.state.prefect_api_url.removesuffix("/api") \
        in again.stdout
    assert {n: s.process.pid for n, s in load_state(platform.home).services.items()} == before


def test_alias_set_against_the_server_redeploys_with_zero_failed_requests(platform) -> None:
    client, port = platform.mlflow(), PORTS["plat-a"]
    # when an alias is set with a plain MlflowClient against the platform's server
    client.set_registered_model_alias("plat-a", "champion", "1")
    # then MLflow's webhook → receiver → Prefect event → redeploy flow serves it on the bound stable port
    wait_for(lambda: served_version(port) == "1", what="version 1 on the bound port")
    with ContinuousClient(f"http://127.0.0.1:{port}") as calls:
        time.sleep(1)
        client.set_registered_model_alias("plat-a", "champion", "2")
        wait_for(lambda: served_version(port) == "2", what="version 2 after the alias moved")
        time.sleep(1)
    assert calls.errors == [] and set(calls.codes) == {200} and set(calls.versions) == {"1", "2"}
    # the run that served it then finishes (its table artifact and final state follow the switch)
    wait_for(lambda: platform.flow_runs("redeploy")[0]["state_type"] == "COMPLETED", 60, "the redeploy run's end")
    runs = platform.flow_runs("redeploy")
    assert runs[0]["parameters"] == {"model": "plat-a", "alias": "champion", "version": "2"}
    worker_log = Path(platform.state.services["worker"].log).read_text(errors="replace")
    assert "Beginning flow run" in worker_log and "fresh interpreter" not in worker_log  # forked warm, not cold


@pytest.mark.parametrize("forgery", ["unsigned", "wrong secret", "tampered body", "stale timestamp",
                                     "replayed delivery id", "unknown model", "not an alias event"])
def test_a_bad_delivery_is_refused_and_deploys_nothing(platform, forgery: str) -> None:
    wait_for(lambda: served_version(PORTS["plat-a"]) is not None, what="plat-a serving (previous test)")
    served, runs, events = served_version(PORTS["plat-a"]), len(platform.flow_runs("redeploy")), \
        platform.event_count("slmops.alias.set")
    body = alias_envelope("plat-a", "champion", "3")
    if forgery == "unsigned":
        r = platform.deliver(body, signed=False)
    elif forgery == "wrong secret":
        r = platform.deliver(body, secret="not-the-secret")
    elif forgery == "tampered body":
        r = platform.deliver(body, sign_body=json.dumps(alias_envelope("plat-a", "champion", "1")))
    elif forgery == "stale timestamp":
        r = platform.deliver(body, timestamp=int(time.time()) - 3600)
    elif forgery == "replayed delivery id":
        first = platform.deliver(alias_envelope("ghost-model", "champion", "1"), delivery_id="replay-me")
        assert first.status_code == 422  # refused for its model, but its id is now on record
        r = platform.deliver(body, delivery_id="replay-me")
    elif forgery == "unknown model":
        r = platform.deliver(alias_envelope("ghost-model", "champion", "1"))
    else:
        r = platform.deliver({**body, "entity": "model_version", "action": "created"})
    assert 400 <= r.status_code < 500, r.text
    time.sleep(2)  # a wrongly accepted delivery would have emitted its event by now
    assert platform.event_count("slmops.alias.set") == events, "no event for a refused delivery"
    assert len(platform.flow_runs("redeploy")) == runs, "no redeploy for a refused delivery"
    assert served_version(PORTS["plat-a"]) == served


def test_reconcile_repairs_drift_made_while_the_receiver_was_down(platform) -> None:
    client, port = platform.mlflow(), PORTS["plat-r"]
    client.set_registered_model_alias("plat-r", "champion", "1")
    wait_for(lambda: served_version(port) == "1", what="plat-r version 1")
    # given the receiver is stopped, an alias move's webhook is lost
    receiver = platform.state.services["receiver"]
    process.stop_group(receiver.process)
    client.set_registered_model_alias("plat-r", "champion", "2")
    time.sleep(3)
    assert served_version(port) == "1", "nothing heard of the move"
    # when `slmops up` brings back what is missing and the reconcile deployment runs
    assert "starting what is missing" in platform.cli("up").stdout
    platform.state = load_state(platform.home)
    deployment = next(d for d in platform.prefect("POST", "/deployments/filter", json={}).json()
                      if d["name"] == "reconcile")
    created = platform.prefect("POST", f"/deployments/{deployment['id']}/create_flow_run", json={}).json()
    # then the target serves what the alias names, and the run published its table
    wait_for(lambda: served_version(port) == "2", what="reconcile to deploy version 2")
    wait_for(lambda: platform.prefect("GET", f"/flow_runs/{created['id']}").json()["state_type"] == "COMPLETED",
             what="the reconcile run to complete")
    artifacts = platform.prefect("POST", "/artifacts/filter", json={
        "artifacts": {"flow_run_id": {"any_": [created["id"]]}}}).json()
    table = next(a for a in artifacts if a["key"] == "reconcile")
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert {"binding": "plat-r@champion → local/plat-r", "action": "deployed"}.items() <= next(
        r for r in rows if r["binding"].startswith("plat-r")).items()


def test_promote_deployment_slmops_promote_and_rollback_all_redeploy(platform) -> None:
    port = PORTS["plat-r"]
    wait_for(lambda: served_version(port) == "2", what="plat-r serving version 2 (previous test)")
    # the promote deployment, as the UI's form runs it
    deployment = next(d for d in platform.prefect("POST", "/deployments/filter", json={}).json()
                      if d["name"] == "promote")
    created = platform.prefect("POST", f"/deployments/{deployment['id']}/create_flow_run", json={
        "parameters": {"request": {"model": "plat-r", "version": "3", "alias": "champion"}}})
    assert created.status_code == 201, f"create_flow_run answered {created.status_code}: {created.text[:500]}"
    wait_for(lambda: served_version(port) == "3", what="version 3 after the promote deployment ran")
    # the CLI against the platform: promote, then rollback to the version before
    assert "plat-r@champion: 3 → 1" in platform.cli("promote", "plat-r", "1").stdout
    wait_for(lambda: served_version(port) == "1", what="version 1 after slmops promote")
    assert "plat-r@champion: 1 → 3 (rolled back)" in platform.cli("rollback", "plat-r").stdout
    wait_for(lambda: served_version(port) == "3", what="version 3 after slmops rollback")
    history = platform.cli("models", "plat-r").stdout
    assert "promoted from the Prefect UI" in history and "rollback from version 1" in history


def _paused_run(platform, model: str) -> dict:
    found: list[dict] = []

    def paused() -> bool:
        found[:] = [r for r in platform.flow_runs("redeploy")
                    if r["parameters"].get("model") == model and r["state_type"] == "PAUSED"]
        return bool(found)

    wait_for(paused, what=f"a paused redeploy of {model}")
    return found[0]


def _resume(platform, run: dict, approve: bool, comment: str) -> None:
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: platform.state.prefect_api_url}):
        resume_flow_run(run["id"], run_input={"approve": approve, "comment": comment})


def test_approval_approve_deploys_and_reject_changes_nothing(platform) -> None:
    client, port = platform.mlflow(), PORTS["plat-ap"]
    client.set_registered_model_alias("plat-ap", "champion", "1")
    run = _paused_run(platform, "plat-ap")
    assert served_version(port) is None, "nothing deploys before approval"
    _resume(platform, run, approve=True, comment="looks good")
    wait_for(lambda: served_version(port) == "1", what="the approved version")
    # a second move, rejected: the target keeps serving version 1
    client.set_registered_model_alias("plat-ap", "champion", "2")
    run = _paused_run(platform, "plat-ap")
    _resume(platform, run, approve=False, comment="not today")
    wait_for(lambda: platform.prefect("GET", f"/flow_runs/{run['id']}").json()["state_type"] == "COMPLETED",
             what="the rejected run to finish")
    assert served_version(port) == "1"
    from registry.history import history

    decisions = [(e["version"], e["decision"], e["reason"]) for e in history(client, "plat-ap")
                 if e["action"] == "approval"]
    assert decisions == [("1", "approved", "approved for plat-ap@champion → local/plat-ap: looks good"),
                         ("2", "rejected", "rejected for plat-ap@champion → local/plat-ap: not today")]


def test_platform_configure_applies_deployments_and_the_webhook_to_given_servers(platform, tmp_path) -> None:
    # given servers run elsewhere (here: this platform's own), configured the way compose/Kubernetes do it
    variables = tmp_path / "job-variables.json"
    variables.write_text(json.dumps({"env": {"SLMOPS_CONFIGURED_BY": "platform configure"}}))
    secret = platform.home / "platform" / "webhook-secret"
    out = platform.cli("platform", "configure", "--prefect-api", platform.state.prefect_api_url, "--mlflow",
                       platform.state.mlflow_uri, "--receiver-url", platform.state.receiver_url, "--secret-file",
                       str(secret), "--job-variables", str(variables), "--state-database",
                       platform.state.state_database).stdout
    assert "deployments of" in out and platform.state.receiver_url in out
    # where the deployment records are is published for commands that know only the Prefect API
    published = platform.prefect("GET", "/variables/name/slmops_state_database").json()["value"]
    assert published == platform.state.state_database
    # then every deployment carries the job variables, and the webhook still reaches the receiver
    deployments = platform.prefect("POST", "/deployments/filter", json={}).json()
    assert all(d["job_variables"].get("env", {}).get("SLMOPS_CONFIGURED_BY") == "platform configure"
               for d in deployments if d["name"] in DEPLOYMENTS)
    hooks = [w for w in platform.mlflow().list_webhooks() if w.name == "slmops-alias-redeploy"]
    assert [w.url for w in hooks] == [platform.state.receiver_url]
