"""``slmops fleet …``: status, halt, resume, rollback, enrollment tokens, devices, the controller, a device agent,
and the simulator."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from tasks.errors import ConfigError
from tasks.settings import get_settings

RUNTIMES = ("local", "ollama", "foundry")


def add_parser(sub: argparse._SubParsersAction, port_type) -> None:
    fleet = sub.add_parser("fleet", help="Edge fleets: rollouts in health-gated waves to enrolled devices.")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="SUBCOMMAND")
    status = fsub.add_parser("status", help="Each fleet's rollout: state, wave, per hardware class counts, "
                             "versions and variants run, failures with reasons.")
    status.add_argument("fleet", nargs="?", help="Only this fleet.")
    status.add_argument("--json", action="store_true", help="Machine-readable output.")
    for verb, text in (("halt", "Stop granting updates (devices keep what they run)."),
                       ("resume", "Continue a held rollout, or approve the next wave of a paused one."),
                       ("rollback", "Send every device the rollout updated back to the previous version.")):
        cmd = fsub.add_parser(verb, help=text)
        cmd.add_argument("fleet", help="Fleet name (configs/bindings.yaml fleets[].name).")
    free = fsub.add_parser("release", help="Let a device out of the penalty box.")
    free.add_argument("device", help="Device id.")
    token = fsub.add_parser("token", help="Create an enrollment token (printed once).")
    token.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="Label every device "
                       "enrolling with it gets (repeatable), e.g. ring=prod.")
    token.add_argument("--uses", type=int, default=1, help="Devices that may enroll with it (default 1).")
    token.add_argument("--ttl-s", type=float, default=86400, help="Seconds it stays valid (default 86400).")
    devices = fsub.add_parser("devices", help="Enrolled devices: labels, class, runtime, what they run.")
    devices.add_argument("--json", action="store_true", help="Machine-readable output.")
    ctl = fsub.add_parser("controller", help="Serve the controller API (enroll, poll, report, artifacts).")
    ctl.add_argument("--host", default="127.0.0.1", help="Bind address (default 127.0.0.1).")
    ctl.add_argument("--port", type=port_type, default=8790, help="Port (default 8790).")
    ctl.add_argument("--egress-mb-s", type=float, help="Cap on all downloads together, MB/s (default: none).")
    agent = fsub.add_parser("agent", help="Run this machine as a fleet device: enroll once, then poll and apply.")
    agent.add_argument("--controller", required=True, metavar="URL", help="e.g. http://controller:8790")
    agent.add_argument("--home", type=Path, required=True, help="The device's folder (models, its identity).")
    agent.add_argument("--token", help="Enrollment token (first start only).")
    agent.add_argument("--runtime", choices=RUNTIMES, default="local", help="What serves here (default local: "
                       "our serving runtime).")
    agent.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="Labels (repeatable).")
    agent.add_argument("--disk-mb", type=int, default=4096, help="Disk models may use (default 4096).")
    sim = fsub.add_parser("simulate", help="Simulated device agents (asyncio) against the real controller code, "
                          "on a virtual clock; --real adds real devices (real local servers).")
    sim.add_argument("--devices", type=int, default=200, help="Simulated devices (default 200).")
    sim.add_argument("--seed", type=int, default=0, help="Seed (the same seed gives the same event log).")
    from infra.fleet.simulate import SCENARIOS

    sim.add_argument("--scenario", choices=SCENARIOS, default="healthy", help="What goes wrong (default healthy).")
    sim.add_argument("--real", type=int, default=0, metavar="K", help="Real devices to add (real server "
                     "processes driven by the same agent code; the clock is then wall time × --scale).")
    sim.add_argument("--real-model", type=Path, metavar="DIR", help="Served onnxruntime-genai folder the real "
                     "devices load (both versions are packed from it).")
    sim.add_argument("--scale", type=float, default=20.0, help="With --real: simulated seconds per wall second.")
    sim.add_argument("--budget", type=int, help="max_concurrent (default devices/20, at least 5).")
    sim.add_argument("--json", action="store_true", help="Print the JSON summary.")
    sim.add_argument("--events", type=Path, metavar="FILE", help="Write the event log (JSON lines).")


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label takes KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def cmd_fleet(args: argparse.Namespace) -> int:
    return {"status": cmd_status, "halt": cmd_verb, "resume": cmd_verb, "rollback": cmd_verb,
            "release": cmd_release, "token": cmd_token, "devices": cmd_devices, "controller": cmd_controller,
            "agent": cmd_agent, "simulate": cmd_simulate}[args.fleet_command](args)


def _controller():
    from infra.fleet.controller import Controller
    from infra.targets.store import state_database

    return Controller(state_database(get_settings().root))


def cmd_status(args: argparse.Namespace) -> int:
    from infra.fleet.report import status_markdown

    found = _controller().status(args.fleet)
    if args.json:
        print(json.dumps(found, indent=2))
    elif not found:
        print("no fleet has a rollout yet (fleets: configs/bindings.yaml, fleets:)")
    else:
        print("\n\n".join(status_markdown(s) for s in found))
    return 0


def cmd_verb(args: argparse.Namespace) -> int:
    r = getattr(_controller(), args.fleet_command)(args.fleet)
    print(f"fleet {args.fleet}: rollout {r.id} of version {r.release.version} is {r.state}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    _controller().release_penalty(args.device)
    print(f"device {args.device} is out of the penalty box")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    print(_controller().create_token(_labels(args.label), args.uses, args.ttl_s))
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    found = _controller().devices()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for d in found:
        running = (d["heartbeat"] or {}).get("running") or {}
        labels = ",".join(f"{k}={v}" for k, v in sorted(d["labels"].items()))
        print(f"{d['id']:<16} {d['hw_class']:<11} {d['runtime']:<8} {labels:<30} "
              f"v{running.get('version') or '-'} {running.get('kind') or ''}{'  PENALTY' if d['penalty'] else ''}")
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    from infra.platform.fleet_service import serve

    serve(get_settings().root, args.host, args.port, args.egress_mb_s * 1e6 if args.egress_mb_s else None)
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    import httpx

    from infra.fleet.agent import Agent, enroll
    from infra.fleet.models import DeviceSpec
    from infra.fleet.runtimes import LocalServerRuntime, free_memory_mb, hardware_class

    if args.runtime != "local":
        raise ConfigError(f"this agent drives the local runtime; {args.runtime} devices are simulated for now")
    identity = args.home / "identity.json"

    async def run() -> None:
        async with httpx.AsyncClient(base_url=args.controller, timeout=300) as client:
            if not identity.is_file():
                if not args.token:
                    raise ConfigError(f"{args.home} has no identity yet: give --token (slmops fleet token)")
                spec = DeviceSpec(labels=_labels(args.label), hw_class=hardware_class(), runtime=args.runtime,
                                  memory_mb=free_memory_mb(), disk_mb=args.disk_mb)
                device_id, token = await enroll(client, args.token, spec)
                args.home.mkdir(parents=True, exist_ok=True)
                identity.write_text(json.dumps({"device_id": device_id, "device_token": token}))
                identity.chmod(0o600)
                print(f"enrolled as {device_id}", file=sys.stderr)
            token = json.loads(identity.read_text())["device_token"]
            # the model server outlives the agent (an agent restart or upgrade does not stop serving): the next
            # agent adopts it, or serves the version the device ran from its disk
            await Agent(client, token, LocalServerRuntime(args.home), args.home, args.disk_mb).run(lambda: False)

    asyncio.run(run())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from infra.fleet.simulate import Simulation

    if args.devices < 1:
        raise ConfigError("--devices must be at least 1")
    if args.real and not args.real_model:
        raise ConfigError("--real needs --real-model DIR (a served onnxruntime-genai folder, e.g. a version "
                          "downloaded by slmops deploy)")
    policy = None
    if args.budget:
        from infra.fleet.simulate import default_policy

        policy = default_policy(args.devices).model_copy(update={"max_concurrent": args.budget})
    result = Simulation(args.devices, args.seed, args.scenario, args.real, args.real_model, args.scale,
                        policy=policy).run()
    log = result.pop("_log")
    if args.events:
        args.events.write_text("".join(json.dumps(e) + "\n" for e in log))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['scenario']}: {result['devices']} devices ({result['real']} real), rollout "
              f"{result['state']} in {result['rollout_s']:.0f} simulated s ({result['clock']})")
        print(f"  updated {result['updated']}, halted classes {result['halted_classes'] or 'none'}, blast radius "
              f"{result['blast_radius']}, rolled back {result['rolled_back']}, max concurrent "
              f"{result['max_concurrent']}/{result['budget']}")
        print(f"  converged p50 {result['converged_p50_s']} s, p95 {result['converged_p95_s']} s; "
              f"{result['wall_s']} s wall, {result['peak_rss_mb']} MB peak memory")
    return 0
