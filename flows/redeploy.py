"""Bound targets serve what their alias names: ``redeploy`` (on an alias move) and ``reconcile`` (on a schedule).

``redeploy`` runs from the deployment trigger on the ``slmops.alias.set`` event the webhook receiver emits. Both
flows serve the version the alias names *now*, read under the deployment's lock (so an event that arrives late
or twice, or runs on another worker at the same time, cannot move a target backwards or redeploy what serves),
skip a target that already serves it, and deploy through the target's normal blue/green path.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field

from infra.platform.bindings import Binding, bindings_for, load_bindings
from infra.targets import DeployError, make_target
from registry.history import aliases, record_approval
from registry.releases import resolve_release
from registry.tracking import registry_client
from tasks.errors import SlmopsError
from tasks.settings import get_settings


class ServeOutcome(BaseModel):
    """What one binding's target did."""

    binding: str
    alias_version: str | None = Field(description="Version the alias names now.")
    served_before: str | None = Field(description="Version the target served before (None: nothing).")
    action: str = Field(description="deployed, already serving, rejected, no answer, needs approval, no alias, "
                        "failed.")
    detail: str = ""


class Approval(RunInput):
    """A person's decision on one redeploy."""

    approve: bool = Field(description="Deploy this version to the target?")
    comment: str = Field("", description="Why (kept in the model's promotion history).")


def served_version(binding: Binding) -> tuple[str | None, bool]:
    """The version ``binding``'s target serves now and whether it is up (probed, not read from the record)."""
    status = make_target(binding.target, get_settings().root).status(binding.deployment_name)
    return (status.served_version, status.state == "up") if status else (None, False)


@task(name="serve-binding")
def serve_binding(binding: Binding, version: str, follow_alias: bool = True) -> ServeOutcome:
    """Make ``binding``'s target serve its alias's version (``follow_alias``: read again under the deployment's
    lock, so concurrent runs on any worker agree and none redeploys what serves), or exactly ``version`` (an
    approved one); nothing to do when it serves already."""
    root = get_settings().root
    client = registry_client(root)

    def wanted() -> str | None:
        return aliases(client, binding.model).get(binding.alias) if follow_alias else version

    try:
        done = make_target(binding.target, root).converge(
            binding.deployment_name, wanted, lambda v: resolve_release(root, f"{binding.model}/{v}"))
    except SlmopsError as exc:
        before, _ = served_version(binding)
        return ServeOutcome(binding=binding.key, alias_version=version, served_before=before, action="failed",
                            detail=str(exc))
    if done.deployment is None:
        return ServeOutcome(binding=binding.key, alias_version=done.version, served_before=done.served_before,
                            action="already serving" if done.version else "no alias")
    return ServeOutcome(binding=binding.key, alias_version=done.version, served_before=done.served_before,
                        action="deployed", detail=done.deployment.endpoint)


def ask_approval(binding: Binding, version: str) -> bool | None:
    """Pause for a person's decision in the Prefect UI; True/False, or None when nobody answered in time."""
    get_run_logger().info("waiting up to %ss for approval to deploy version %s: %s", binding.approval_timeout_s,
                          version, binding.key)
    description = (f"Deploy **{binding.model}** version **{version}** (now `{binding.model}@{binding.alias}`) "
                   f"to **{binding.target.target}** deployment `{binding.deployment_name}`?")
    try:
        answer = pause_flow_run(wait_for_input=Approval.with_initial_data(description=description, approve=False),
                                timeout=binding.approval_timeout_s, poll_interval=2)
    except FlowPauseTimeout:
        answer = None
    decision = answer.approve if answer else None
    record_approval(registry_client(get_settings().root), binding.model, binding.alias, version, decision,
                    answer.comment if answer else "", binding.key)
    return decision


def publish(outcomes: list[ServeOutcome], key: str, title: str) -> list[ServeOutcome]:
    """A table artifact of the outcomes; a failed binding fails the flow after every other binding was served."""
    if outcomes:
        create_table_artifact(table=[o.model_dump() for o in outcomes], key=key, description=title)
    failed = [o for o in outcomes if o.action == "failed"]
    if failed:
        raise DeployError("; ".join(f"{o.binding}: {o.detail}" for o in failed))
    return outcomes


@flow(name="redeploy")
def redeploy(model: Annotated[str, Field(description="Registered model name whose alias moved.")],
             alias: Annotated[str, Field(description="The alias that moved, e.g. champion.")],
             version: Annotated[str, Field(description="Version the alias was set to (the alias is read again "
                                                       "when the run starts).")]) -> list[ServeOutcome]:
    """Serve ``model@alias`` on every target bound to it (run by the ``slmops.alias.set`` event trigger)."""
    logger = get_run_logger()
    current = aliases(registry_client(get_settings().root), model).get(alias)
    if current != version:
        logger.info("%s@%s names version %s now (the event said %s): serving %s", model, alias, current, version,
                    current)
    outcomes = []
    for binding in bindings_for(get_settings().bindings, model, alias):
        if current is None:
            outcomes.append(ServeOutcome(binding=binding.key, alias_version=None, served_before=None,
                                         action="no alias"))
            continue
        if binding.approval == "required":
            approved = ask_approval(binding, current)
            if not approved:
                outcomes.append(ServeOutcome(binding=binding.key, alias_version=current, served_before=None,
                                             action="rejected" if approved is False else "no answer"))
                continue
        outcomes.append(serve_binding(binding, current, follow_alias=binding.approval != "required"))
    for o in outcomes:
        logger.info("%s: %s %s", o.binding, o.action, o.detail)
    return publish(outcomes, "redeploy", f"Redeploy of {model}@{alias} (version {current})")


@flow(name="reconcile")
def reconcile() -> list[ServeOutcome]:
    """Compare every binding's alias with what its target serves and repair drift with a normal deploy.

    Bindings that need approval are reported, never deployed without it.
    """
    client = registry_client(get_settings().root)
    outcomes = []
    for binding in load_bindings(get_settings().bindings):
        try:
            version = aliases(client, binding.model).get(binding.alias)
        except SlmopsError:
            version = None
        if version is None:
            outcomes.append(ServeOutcome(binding=binding.key, alias_version=None, served_before=None,
                                         action="no alias"))
        elif binding.approval == "required" and served_version(binding) != (version, True):
            outcomes.append(ServeOutcome(binding=binding.key, alias_version=version,
                                         served_before=served_version(binding)[0], action="needs approval"))
        else:
            outcomes.append(serve_binding(binding, version, follow_alias=binding.approval != "required"))
    return publish(outcomes, "reconcile", "Bindings: alias version vs served version")
