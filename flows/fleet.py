"""Fleets follow their alias: ``fleet-rollout`` starts a wave rollout on every fleet bound to ``model@alias``
(run by the same ``slmops.alias.set`` event as ``redeploy``) and watches it, publishing its progress as a Prefect
artifact; ``fleet-step`` (scheduled) advances every active rollout, so progress never depends on one run."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from infra.fleet.controller import Controller
from infra.fleet.releases import artifacts_dir, fleet_release
from infra.fleet.report import status_markdown
from infra.platform.bindings import FleetBinding, fleet_bindings
from infra.targets.store import state_database
from registry.history import aliases
from registry.releases import resolve_release
from registry.tracking import registry_client
from tasks.settings import get_settings

TERMINAL = ("done", "halted", "rolled-back", "superseded")


class WaveApproval(RunInput):
    """A person's decision between two waves."""

    approve: bool = Field(description="Start the next wave? (No rolls the updated devices back.)")
    comment: str = Field("", description="Why.")


def controller() -> Controller:
    return Controller(state_database(get_settings().root))


@task(name="start-fleet-rollout")
def start_rollout(fleet: FleetBinding, version: str) -> int:
    """Package ``version``'s variants into the controller's artifact store and start the fleet's rollout."""
    root = get_settings().root
    release = fleet_release(resolve_release(root, f"{fleet.model}/{version}"), fleet.golden, artifacts_dir(root))
    rid = controller().start_rollout(fleet.name, fleet.model, fleet.alias, release, fleet.group, fleet.policy,
                                     fleet.variants)
    get_run_logger().info("%s: rollout %s of version %s (%s)", fleet.key, rid, version,
                          ", ".join(v.kind for v in release.variants))
    return rid


def publish(fleet: str) -> dict[str, Any]:
    status = controller().status(fleet)[0]
    create_markdown_artifact(markdown=status_markdown(status), key="fleet-" + re.sub(r"[^a-z0-9-]", "-", fleet.lower()),
                             description=f"Fleet {fleet}: rollout {status['rollout']}")
    return status


def ask_wave_approval(fleet: FleetBinding, status: dict[str, Any]) -> bool | None:
    """Pause for a person's decision in the Prefect UI; True/False, or None when nobody answered in time."""
    description = (f"Fleet **{fleet.name}** finished wave {status['wave'] + 1} of {status['waves']} of "
                   f"{fleet.model} version **{status['version']}**. Start the next wave?\n\n"
                   + status_markdown(status))
    try:
        answer = pause_flow_run(wait_for_input=WaveApproval.with_initial_data(description=description,
                                                                              approve=False),
                                timeout=fleet.approval_timeout_s, poll_interval=2)
    except FlowPauseTimeout:
        return None
    return answer.approve


@flow(name="fleet-rollout")
def fleet_rollout(model: Annotated[str, Field(description="Registered model name whose alias moved.")],
                  alias: Annotated[str, Field(description="The alias that moved, e.g. champion.")],
                  version: Annotated[str, Field(description="Version the alias was set to (read again when "
                                                            "the run starts).")],
                  step_s: Annotated[float, Field(gt=0, description="Seconds between progress checks.")] = 10.0,
                  ) -> list[dict[str, Any]]:
    """Roll ``model@alias`` out to every fleet bound to it, wave by wave, until each rollout ends."""
    logger = get_run_logger()
    fleets = fleet_bindings(get_settings().bindings, model, alias)
    if not fleets:
        logger.info("no fleet follows %s@%s", model, alias)
        return []
    current = aliases(registry_client(get_settings().root), model).get(alias)
    if current is None:
        logger.info("%s@%s names no version now: nothing to roll out", model, alias)
        return []
    rollouts = {f.name: (f, start_rollout(f, current)) for f in fleets}
    ctl, last = controller(), {}
    while rollouts:
        for name, (fleet, rid) in list(rollouts.items()):
            r = ctl.step(rid)
            if r.id != ctl.current(name).id:
                r = r.model_copy(update={"state": "superseded"})
            seen = (r.state, r.wave, tuple(sorted(r.halted_classes)))
            if seen != last.get(name):
                last[name] = seen
                status = publish(name)
                logger.info("fleet %s: rollout %s %s, wave %s/%s, halted classes %s", name, rid, r.state,
                            r.wave + 1, r.waves, sorted(r.halted_classes) or "none")
                if r.state == "paused":
                    decision = ask_wave_approval(fleet, status)
                    if decision is True:
                        ctl.resume(name)
                    elif decision is False:
                        ctl.rollback(name, "the next wave was refused in the Prefect UI")
                    else:
                        logger.info("fleet %s: no answer; the rollout stays paused (slmops fleet resume %s)",
                                    name, name)
                        rollouts.pop(name)
                        continue
            if r.state in TERMINAL:
                rollouts.pop(name)
        if rollouts:
            time.sleep(step_s)
    return [publish(f.name) for f in fleets]


@flow(name="fleet-step")
def fleet_step() -> list[dict[str, Any]]:
    """Advance every active rollout once (a safety net beside the rollout flows: a run that died loses nothing)."""
    ctl = controller()
    for r in ctl.latest():
        if r.state == "running":
            ctl.step(r.id)
    return [{"fleet": s["fleet"], "state": s["state"], "wave": s["wave"]} for s in ctl.status()]
