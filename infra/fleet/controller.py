"""The fleet controller: device registry and enrollment, rollouts in waves, and the desired state each device
pulls. Everything lives in the state database (the platform's PostgreSQL, else sqlite); the controller never
pushes, and any number of controller processes can serve one fleet.

A rollout grants update slots as devices poll: a device gets the new release only when its hardware class is
open, its wave has started and fewer than ``max_concurrent`` devices are updating. ``step`` advances waves and
halts a hardware class (rolling back its updated devices) on failures.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field

from infra.fleet.models import (
    RETRIED,
    Desired,
    DeviceSpec,
    Heartbeat,
    Release,
    Report,
    RolloutPolicy,
    VariantPolicy,
    check_labels,
)
from infra.targets.store import lock_key, state_engine
from tasks.errors import SlmopsError

DEVICES = sa.table("fleet_devices", *(sa.column(c) for c in (
    "id", "spec", "token_hash", "hw_class", "enrolled_at", "last_seen", "due", "heartbeat", "failures",
    "penalty")))
TOKENS = sa.table("fleet_tokens", *(sa.column(c) for c in ("token_hash", "labels", "uses_left", "expires_at")))
ROLLOUTS = sa.table("fleet_rollouts", *(sa.column(c) for c in (
    "id", "fleet", "model", "alias", "release", "previous", "selector", "policy", "variants", "state", "wave",
    "wave_started", "halted_classes", "reason", "created_at", "updated_at")))
TARGETS = sa.table("fleet_targets", *(sa.column(c) for c in (
    "rollout_id", "device_id", "hw_class", "wave", "state", "attempts", "variant", "failure", "reason",
    "loaded_new", "assigned_at", "done_at")))

ACTIVE = ("running", "paused", "held")  # rollouts that still grant or may grant slots
UPDATING = "assigned"


class FleetError(SlmopsError):
    """A fleet request that cannot be served (unknown device or fleet, bad token, ...)."""


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A group is a label selector: every key must be present with that value."""
    return all(labels.get(k) == v for k, v in selector.items())


class Rollout(BaseModel):
    """A rollout's row, typed."""

    id: int
    fleet: str
    model: str
    alias: str
    release: Release
    previous: Release | None
    selector: dict[str, str]
    policy: RolloutPolicy
    variants: VariantPolicy
    state: str = Field(description="running, paused (waiting for approval), held (by hand), halted (by its "
                       "policy), rolled-back (by hand), done, superseded.")
    wave: int
    wave_started: float
    halted_classes: dict[str, str] = Field(description="Hardware class → why it halted.")
    reason: str
    created_at: float

    @classmethod
    def of(cls, row: Any) -> Rollout:
        m = row._mapping
        return cls(id=m["id"], fleet=m["fleet"], model=m["model"], alias=m["alias"],
                   release=Release.model_validate_json(m["release"]),
                   previous=Release.model_validate_json(m["previous"]) if m["previous"] else None,
                   selector=json.loads(m["selector"]), policy=RolloutPolicy.model_validate_json(m["policy"]),
                   variants=VariantPolicy.model_validate_json(m["variants"]), state=m["state"], wave=m["wave"],
                   wave_started=m["wave_started"], halted_classes=json.loads(m["halted_classes"]),
                   reason=m["reason"], created_at=m["created_at"])

    @property
    def waves(self) -> int:
        return 1 + len(self.policy.waves)

    def closed(self, hw_class: str) -> bool:
        """No new updates for ``hw_class``: its class or the whole rollout halted, or it was rolled back."""
        return self.state in ("halted", "rolled-back", "superseded") or hw_class in self.halted_classes


class Plan(BaseModel):
    """Which wave each member device of a rollout is in (by a stable hash order within its hardware class)."""

    computed_at: float
    waves: dict[str, int]
    classes: dict[str, str]


class Controller:
    """The fleet's state of record and its rules. ``clock`` gives seconds (the simulator passes its own)."""

    def __init__(self, url: str, clock: Callable[[], float] = time.time,
                 idle_poll_s: float | Callable[[dict[str, str]], float] = 60.0):
        self.engine = state_engine(url)
        self.clock = clock
        self.idle_poll_s = idle_poll_s if callable(idle_poll_s) else lambda labels: idle_poll_s
        self._plans: dict[int, Plan] = {}
        self._guard = threading.Lock()
        self.requests = 0

    # -- enrollment ----------------------------------------------------------------------------------------
    def create_token(self, labels: dict[str, str], uses: int = 1, ttl_s: float = 86400.0) -> str:
        """An enrollment token: ``uses`` devices may enroll with it within ``ttl_s``; they get ``labels``."""
        try:
            check_labels(labels)
        except ValueError as exc:  # a user's typo: one line on the terminal
            raise FleetError(str(exc)) from None
        token = "enr_" + secrets.token_urlsafe(24)
        with self.engine.begin() as conn:
            conn.execute(sa.insert(TOKENS).values(token_hash=digest(token), labels=json.dumps(labels),
                                                  uses_left=uses, expires_at=self.clock() + ttl_s))
        return token

    def enroll(self, token: str, spec: DeviceSpec, device_id: str | None = None) -> tuple[str, str]:
        """Register a device with an enrollment token; its id and the device token it authenticates with."""
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(TOKENS).where(TOKENS.c.token_hash == digest(token))).first()
            if row is None or row.uses_left < 1 or row.expires_at < self.clock():
                raise FleetError("enrollment token is unknown, used up or expired")
            conn.execute(sa.update(TOKENS).where(TOKENS.c.token_hash == row.token_hash)
                         .values(uses_left=TOKENS.c.uses_left - 1))
            spec = spec.model_copy(update={"labels": {**spec.labels, **json.loads(row.labels)}})
            device_id = device_id or "dev-" + secrets.token_hex(6)
            if conn.execute(sa.select(DEVICES.c.id).where(DEVICES.c.id == device_id)).first():
                raise FleetError(f"device {device_id!r} is enrolled already")
            device_token = "dev_" + secrets.token_urlsafe(24)
            now = self.clock()
            conn.execute(sa.insert(DEVICES).values(id=device_id, spec=spec.model_dump_json(),
                                                   token_hash=digest(device_token), hw_class=spec.hw_class,
                                                   enrolled_at=now, last_seen=now, due=now + 90, failures=0,
                                                   penalty=False))
        self._plans.clear()
        return device_id, device_token

    def authenticate(self, device_token: str) -> str:
        """The device id a device token belongs to."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(DEVICES.c.id).where(DEVICES.c.token_hash == digest(device_token))).first()
        if found is None:
            raise FleetError("unknown device token")
        return found[0]

    def devices(self) -> list[dict[str, Any]]:
        """Every device with its spec, last heartbeat and penalty state."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(DEVICES).order_by(DEVICES.c.id)).all()
        return [{"id": r.id, **json.loads(r.spec), "last_seen": r.last_seen, "failures": r.failures,
                 "penalty": bool(r.penalty), "heartbeat": json.loads(r.heartbeat) if r.heartbeat else None}
                for r in rows]

    # -- rollouts -------------------------------------------------------------------------------------------
    def start_rollout(self, fleet: str, model: str, alias: str, release: Release, selector: dict[str, str],
                      policy: RolloutPolicy, variants: VariantPolicy | None = None,
                      previous: Release | None = None) -> int:
        """Start rolling ``release`` out to the devices ``selector`` matches; an active rollout of the same
        fleet is superseded (its updated devices keep what they run until this one reaches them)."""
        now = self.clock()
        with self.engine.begin() as conn:
            self._lock(conn, f"fleet:{fleet}")
            current = conn.execute(sa.select(ROLLOUTS).where(ROLLOUTS.c.fleet == fleet)
                                   .order_by(ROLLOUTS.c.id.desc())).first()
            if previous is None and current is not None:
                last = Rollout.of(current)
                previous = last.release if last.state == "done" else last.previous
            conn.execute(sa.update(ROLLOUTS).where(ROLLOUTS.c.fleet == fleet, ROLLOUTS.c.state.in_(ACTIVE))
                         .values(state="superseded", updated_at=now))
            rid = conn.execute(sa.insert(ROLLOUTS).values(
                fleet=fleet, model=model, alias=alias, release=release.model_dump_json(),
                previous=previous.model_dump_json() if previous else None, selector=json.dumps(selector),
                policy=policy.model_dump_json(), variants=(variants or VariantPolicy()).model_dump_json(),
                state="running", wave=0, wave_started=now, halted_classes="{}", reason="", created_at=now,
                updated_at=now).returning(ROLLOUTS.c.id)).scalar_one()
        return rid

    def rollout(self, rollout_id: int) -> Rollout:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(ROLLOUTS).where(ROLLOUTS.c.id == rollout_id)).first()
        if row is None:
            raise FleetError(f"no rollout {rollout_id}")
        return Rollout.of(row)

    def current(self, fleet: str) -> Rollout:
        """The latest rollout of ``fleet``."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(ROLLOUTS).where(ROLLOUTS.c.fleet == fleet)
                               .order_by(ROLLOUTS.c.id.desc())).first()
            if row is None:
                known = sorted({r[0] for r in conn.execute(sa.select(ROLLOUTS.c.fleet)).all()})
                raise FleetError(f"no rollout of fleet {fleet!r}; fleets with rollouts: {known or 'none'}")
        return Rollout.of(row)

    def latest(self) -> list[Rollout]:
        """The latest rollout of every fleet."""
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(sa.select(sa.func.max(ROLLOUTS.c.id)).group_by(ROLLOUTS.c.fleet))]
            rows = conn.execute(sa.select(ROLLOUTS).where(ROLLOUTS.c.id.in_(ids)).order_by(ROLLOUTS.c.fleet)).all()
        return [Rollout.of(r) for r in rows]

    def _set(self, conn: Any, rollout: Rollout, **values: Any) -> None:
        conn.execute(sa.update(ROLLOUTS).where(ROLLOUTS.c.id == rollout.id).values(**values,
                                                                                    updated_at=self.clock()))

    def halt(self, fleet: str, reason: str = "held by hand") -> Rollout:
        """Stop granting updates (devices keep what they run); ``resume`` continues."""
        r = self.current(fleet)
        if r.state not in ("running", "paused"):
            raise FleetError(f"fleet {fleet!r}: rollout {r.id} is {r.state}, not running")
        with self.engine.begin() as conn:
            self._set(conn, r, state="held", reason=reason)
        return self.current(fleet)

    def resume(self, fleet: str) -> Rollout:
        """Continue a held rollout, or approve the next wave of a paused one."""
        r = self.current(fleet)
        with self.engine.begin() as conn:
            if r.state == "paused":
                self._set(conn, r, state="running", wave=r.wave + 1, wave_started=self.clock(), reason="")
            elif r.state == "held":
                self._set(conn, r, state="running", reason="")
            else:
                raise FleetError(f"fleet {fleet!r}: rollout {r.id} is {r.state}; only held or paused ones resume")
        return self.current(fleet)

    def rollback(self, fleet: str, reason: str = "rolled back by hand") -> Rollout:
        """Every device this rollout updated goes back to the previous release (kept on its disk)."""
        r = self.current(fleet)
        if r.previous is None:
            raise FleetError(f"fleet {fleet!r}: rollout {r.id} has no previous release to roll back to")
        with self.engine.begin() as conn:
            self._set(conn, r, state="rolled-back", reason=reason)
            conn.execute(sa.update(TARGETS).where(TARGETS.c.rollout_id == r.id,
                                                  TARGETS.c.state.in_(("ok", UPDATING)))
                         .values(state="rollback"))
        return self.current(fleet)

    def release_penalty(self, device_id: str) -> None:
        """Let a device out of the penalty box."""
        with self.engine.begin() as conn:
            if not conn.execute(sa.update(DEVICES).where(DEVICES.c.id == device_id)
                                .values(penalty=False, failures=0)).rowcount:
                raise FleetError(f"no device {device_id!r}")

    # -- what devices pull ----------------------------------------------------------------------------------
    def _lock(self, conn: Any, key: str) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(key)})

    def _device(self, conn: Any, device_id: str) -> Any:
        row = conn.execute(sa.select(DEVICES).where(DEVICES.c.id == device_id)).first()
        if row is None:
            raise FleetError(f"no device {device_id!r}")
        return row

    def _rollout_for(self, conn: Any, labels: dict[str, str]) -> Rollout | None:
        """The latest non-superseded rollout whose group the device is in (fleets' groups should not overlap;
        where they do, the newest rollout wins)."""
        for row in conn.execute(sa.select(ROLLOUTS).where(ROLLOUTS.c.state != "superseded")
                                .order_by(ROLLOUTS.c.id.desc())).all():
            if matches(json.loads(row.selector), labels):
                return Rollout.of(row)
        return None

    def plan(self, conn: Any, r: Rollout, device_id: str | None = None) -> Plan:
        """The rollout's wave plan, recomputed when a new member appears or after 10 s (membership is dynamic)."""
        plan = self._plans.get(r.id)
        if plan is not None and self.clock() - plan.computed_at < 10 and (device_id is None or
                                                                          device_id in plan.waves):
            return plan
        members: dict[str, list[str]] = {}
        for row in conn.execute(sa.select(DEVICES.c.id, DEVICES.c.spec, DEVICES.c.hw_class)).all():
            if matches(r.selector, json.loads(row.spec)["labels"]):
                members.setdefault(row.hw_class, []).append(row.id)
        waves, classes = {}, {}
        for hw_class, ids in sorted(members.items()):
            ids.sort(key=lambda d: digest(f"{r.id}:{d}"))
            cuts = [min(r.policy.canary, len(ids))] + [max(min(r.policy.canary, len(ids)),
                                                           math.ceil(p * len(ids) / 100)) for p in r.policy.waves]
            for rank, d in enumerate(ids):
                waves[d] = next(w for w, cut in enumerate(cuts) if rank < cut)
                classes[d] = hw_class
        plan = Plan(computed_at=self.clock(), waves=waves, classes=classes)
        self._plans[r.id] = plan
        return plan

    def poll(self, device_id: str, beat: Heartbeat) -> Desired:
        """Record the heartbeat and answer what the device should run."""
        self.requests += 1
        with self._guard, self.engine.begin() as conn:
            desired = self._desired(conn, device_id, beat.running.digest)
            self._seen(conn, device_id, desired, heartbeat=beat.model_dump_json())
            return desired

    def _seen(self, conn: Any, device_id: str, desired: Desired, **values: Any) -> None:
        """The device was heard from now, and was told to poll again within 1.5 × next_poll_s (the jitter)."""
        now = self.clock()
        conn.execute(sa.update(DEVICES).where(DEVICES.c.id == device_id)
                     .values(last_seen=now, due=now + 1.5 * desired.next_poll_s, **values))

    def report(self, device_id: str, report: Report) -> Desired:
        """Record what a device did with its desired state; answer what it should run now."""
        self.requests += 1
        with self._guard, self.engine.begin() as conn:
            device = self._device(conn, device_id)
            r = self.rollout_in(conn, report.rollout_id)
            where = (TARGETS.c.rollout_id == r.id, TARGETS.c.device_id == device_id)
            row = conn.execute(sa.select(TARGETS).where(*where)).first()
            now = self.clock()
            if row is not None:
                values: dict[str, Any] = {"done_at": now}
                if report.loaded_new:
                    values["loaded_new"] = True
                if report.outcome == "ok" and report.running.version == r.release.version:
                    values["state"] = "rollback" if r.closed(row.hw_class) else "ok"
                elif report.outcome == "rolled-back" or (r.previous and report.outcome == "ok" and
                                                         report.running.version == r.previous.version):
                    values["state"] = "rolled-back"
                elif report.outcome == "failed":
                    failures = device.failures + 1
                    penalty = failures >= r.policy.penalty_after
                    retry = report.failure in RETRIED and row.attempts <= r.policy.retries and not penalty
                    values |= {"state": "pending" if retry else "failed", "failure": report.failure,
                               "reason": ("penalty box: " if penalty else "") + report.reason[:500]}
                    conn.execute(sa.update(DEVICES).where(DEVICES.c.id == device_id)
                                 .values(failures=failures, penalty=penalty))
                conn.execute(sa.update(TARGETS).where(*where).values(**values))
            desired = self._desired(conn, device_id, report.running.digest)
            self._seen(conn, device_id, desired)
            return desired

    def rollout_in(self, conn: Any, rollout_id: int) -> Rollout:
        row = conn.execute(sa.select(ROLLOUTS).where(ROLLOUTS.c.id == rollout_id)).first()
        if row is None:
            raise FleetError(f"no rollout {rollout_id}")
        return Rollout.of(row)

    def _desired(self, conn: Any, device_id: str, runs: str | None) -> Desired:
        """What ``device_id``, which runs the artifact ``runs``, should run now (granting an update slot)."""
        device = self._device(conn, device_id)
        spec = DeviceSpec.model_validate_json(device.spec)
        r = self._rollout_for(conn, spec.labels)
        if r is None:
            return Desired(next_poll_s=self.idle_poll_s(spec.labels))
        pick = lambda release: r.variants.pick(spec.hw_class, spec.runtime, release)  # noqa: E731
        stay = Desired(rollout_id=r.id, release=r.previous, variant=pick(r.previous) if r.previous else None,
                       next_poll_s=r.policy.poll_s)
        go = Desired(rollout_id=r.id, release=r.release, variant=pick(r.release), next_poll_s=r.policy.poll_s,
                     max_ttft_regression=r.policy.max_ttft_regression,
                     max_tps_regression=r.policy.max_tps_regression, apply_timeout_s=r.policy.apply_timeout_s,
                     latency_slack_ms=r.policy.latency_slack_ms)
        back = stay.model_copy(update={"rollback": True})
        where = (TARGETS.c.rollout_id == r.id, TARGETS.c.device_id == device_id)
        row = conn.execute(sa.select(TARGETS).where(*where)).first()
        state = row.state if row is not None else "pending"
        if state in ("ok", UPDATING):
            if r.closed(spec.hw_class):
                conn.execute(sa.update(TARGETS).where(*where).values(state="rollback"))
                return back
            if state == UPDATING and go.variant is not None and runs == go.variant.digest:
                conn.execute(sa.update(TARGETS).where(*where).values(state="ok", done_at=self.clock()))
            return go
        if state == "rollback":
            if stay.variant is not None and runs == stay.variant.digest:  # back already (e.g. never switched)
                conn.execute(sa.update(TARGETS).where(*where).values(state="rolled-back", done_at=self.clock()))
            return back
        if state in ("failed", "rolled-back") or device.penalty or r.closed(spec.hw_class):
            return stay
        if go.variant is None:  # no variant this runtime loads: a failure the status shows, never a download
            self._fail_unservable(conn, r, device_id, spec, row)
            return stay
        if r.state not in ("running", "done"):
            return stay
        if row is not None and row.done_at is not None and self.clock() - row.done_at < r.policy.poll_s:
            return stay  # a retry waits one poll interval (a failing device does not spin)
        wave = self.plan(conn, r, device_id).waves.get(device_id)
        if wave is None or (r.state == "running" and wave > r.wave):
            return stay
        if runs == go.variant.digest:  # it runs this release already (e.g. from a superseded rollout): done
            values = {"state": "ok", "variant": go.variant.model_dump_json(), "done_at": self.clock()}
            if row is None:
                conn.execute(sa.insert(TARGETS).values(rollout_id=r.id, device_id=device_id, hw_class=spec.hw_class,
                                                       wave=wave, attempts=0, reason="", loaded_new=False, **values))
            else:
                conn.execute(sa.update(TARGETS).where(*where).values(**values))
            return go
        self._lock(conn, f"rollout:{r.id}")
        busy = conn.execute(sa.select(sa.func.count()).select_from(TARGETS).where(
            TARGETS.c.rollout_id == r.id, TARGETS.c.state == UPDATING)).scalar()
        if busy >= r.policy.max_concurrent:
            return stay.model_copy(update={"next_poll_s": r.policy.poll_s / 2})
        values = {"state": UPDATING, "assigned_at": self.clock(), "variant": go.variant.model_dump_json()}
        if row is None:
            conn.execute(sa.insert(TARGETS).values(rollout_id=r.id, device_id=device_id, hw_class=spec.hw_class,
                                                   wave=wave, attempts=1, reason="", loaded_new=False, **values))
        else:
            conn.execute(sa.update(TARGETS).where(*where).values(attempts=TARGETS.c.attempts + 1, **values))
        return go

    def _fail_unservable(self, conn: Any, r: Rollout, device_id: str, spec: DeviceSpec, row: Any) -> None:
        reason = f"release {r.release.version} has no variant a {spec.hw_class} device with {spec.runtime} loads"
        if row is None:
            conn.execute(sa.insert(TARGETS).values(rollout_id=r.id, device_id=device_id, hw_class=spec.hw_class,
                                                   wave=0, state="failed", attempts=0, failure="unfit",
                                                   reason=reason, loaded_new=False, done_at=self.clock()))

    # -- the rollout's progress -----------------------------------------------------------------------------
    def step(self, rollout_id: int) -> Rollout:
        """Free the slots of devices gone offline, halt hardware classes that fail, and advance waves."""
        with self._guard, self.engine.begin() as conn:
            self._lock(conn, f"rollout:{rollout_id}")
            r = self.rollout_in(conn, rollout_id)
            if r.state != "running":
                return r
            now, p = self.clock(), r.policy
            plan = self.plan(conn, r)
            seen = {row.id: (row.due, bool(row.penalty)) for row in conn.execute(
                sa.select(DEVICES.c.id, DEVICES.c.due, DEVICES.c.penalty)).all()}
            offline = {d for d, (due, _) in seen.items() if now - due > p.offline_after_s}
            rows = conn.execute(sa.select(TARGETS).where(TARGETS.c.rollout_id == r.id)).all()
            silent = p.apply_timeout_s + p.offline_after_s
            stale = [t.device_id for t in rows if t.state == UPDATING and now - seen[t.device_id][0] > silent]
            # (an updating device does not poll until it reports: it may be silent for apply_timeout_s)
            if stale:  # an offline device holds no slot and is no failure; it updates when it comes back
                conn.execute(sa.update(TARGETS).where(TARGETS.c.rollout_id == r.id,
                                                      TARGETS.c.device_id.in_(stale))
                             .values(state="pending", attempts=TARGETS.c.attempts - 1))
                rows = conn.execute(sa.select(TARGETS).where(TARGETS.c.rollout_id == r.id)).all()
            by_device = {t.device_id: t for t in rows}
            halted = dict(r.halted_classes)
            for hw_class in sorted(set(plan.classes.values())):
                if hw_class in halted:
                    continue
                done = [t for t in rows if t.hw_class == hw_class and t.state in ("ok", "failed")]
                failed = sum(t.state == "failed" for t in done)
                if failed >= p.halt_failures or (len(done) >= p.min_devices and
                                                 100 * failed / len(done) >= p.halt_percent):
                    reasons = sorted({t.failure or "?" for t in done if t.state == "failed"})
                    halted[hw_class] = f"{failed} of {len(done)} devices failed ({', '.join(reasons)})"
            in_wave = [d for d, w in plan.waves.items() if w <= r.wave and plan.classes[d] not in halted
                       and not seen.get(d, (0, False))[1]]

            def settled(d: str) -> bool:
                t = by_device.get(d)
                return (t is not None and t.state in ("ok", "failed", "rolled-back")) or \
                    (d in offline and (t is None or t.state != UPDATING))

            timed_out = now - r.wave_started > p.wave_timeout_s
            wave_done = timed_out or all(settled(d) for d in in_wave)
            if wave_done:  # each class passes its wave on its own: one bad class halts alone
                for hw_class in sorted({plan.classes[d] for d in in_wave}):
                    finished = [by_device[d] for d in in_wave if plan.classes[d] == hw_class and d in by_device
                                and by_device[d].state in ("ok", "failed")]
                    ok = sum(t.state == "ok" for t in finished)
                    if finished and ok / len(finished) < p.success_threshold:
                        halted[hw_class] = (f"wave {r.wave}: {ok} of {len(finished)} devices succeeded, below the "
                                            f"success threshold {p.success_threshold:.0%}")
            if halted != r.halted_classes:
                conn.execute(sa.update(TARGETS).where(TARGETS.c.rollout_id == r.id,
                                                      TARGETS.c.hw_class.in_(sorted(halted)),
                                                      TARGETS.c.state.in_(("ok", UPDATING)))
                             .values(state="rollback"))
                self._set(conn, r, halted_classes=json.dumps(halted))
                r = r.model_copy(update={"halted_classes": halted})
            if not set(plan.classes.values()) - set(halted):
                self._set(conn, r, state="halted", reason="every hardware class halted")
            elif not wave_done:
                return r
            elif r.wave + 1 >= r.waves:
                self._set(conn, r, state="done", reason="timed out waiting for offline devices" if timed_out
                          else "")
            elif p.approval:
                self._set(conn, r, state="paused", reason=f"wave {r.wave} done: waiting for approval")
            else:
                self._set(conn, r, wave=r.wave + 1, wave_started=now)
            return self.rollout_in(conn, r.id)

    # -- what people look at --------------------------------------------------------------------------------
    def status(self, fleet: str | None = None) -> list[dict[str, Any]]:
        """Each fleet's latest rollout: state, wave, per hardware class counts and versions run, failures."""
        rollouts = [self.current(fleet)] if fleet else self.latest()
        out = []
        now = self.clock()
        with self.engine.connect() as conn:
            devices = conn.execute(sa.select(DEVICES)).all()
            for r in rollouts:
                rows = {t.device_id: t for t in conn.execute(sa.select(TARGETS).where(
                    TARGETS.c.rollout_id == r.id)).all()}
                classes: dict[str, dict[str, Any]] = {}
                failures = []
                for d in devices:
                    spec = json.loads(d.spec)
                    if not matches(r.selector, spec["labels"]):
                        continue
                    c = classes.setdefault(d.hw_class, {"devices": 0, "updated": 0, "updating": 0, "failed": 0,
                                                        "rolled_back": 0, "offline": 0, "penalty": 0,
                                                        "versions": {}, "variants": {},
                                                        "halted": r.halted_classes.get(d.hw_class)})
                    c["devices"] += 1
                    t = rows.get(d.id)
                    state = t.state if t else "pending"
                    c["updated"] += state == "ok"
                    c["updating"] += state == UPDATING
                    c["failed"] += state == "failed"
                    c["rolled_back"] += state == "rolled-back"
                    c["offline"] += now - d.due > r.policy.offline_after_s
                    c["penalty"] += bool(d.penalty)
                    running = json.loads(d.heartbeat)["running"] if d.heartbeat else {}
                    version = running.get("version") or "none"
                    c["versions"][version] = c["versions"].get(version, 0) + 1
                    if running.get("kind"):
                        c["variants"][running["kind"]] = c["variants"].get(running["kind"], 0) + 1
                    if state == "failed":
                        failures.append({"device": d.id, "hw_class": d.hw_class, "failure": t.failure,
                                         "reason": t.reason})
                out.append({"fleet": r.fleet, "rollout": r.id, "model": r.model, "alias": r.alias,
                            "version": r.release.version,
                            "previous_version": r.previous.version if r.previous else None,
                            "selector": r.selector, "state": r.state, "wave": r.wave, "waves": r.waves,
                            "reason": r.reason, "halted_classes": sorted(r.halted_classes),
                            "classes": dict(sorted(classes.items())), "failures": failures[:50],
                            "failure_count": len(failures)})
        return out
