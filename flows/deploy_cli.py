"""``slmops deploy``, ``status``, ``undeploy``, ``deploy-rollback`` and ``invoke``: the deployment targets."""

from __future__ import annotations

import argparse
import sys

from tasks.errors import ConfigError
from tasks.settings import get_settings

TARGET_NAMES = ("local", "foundry", "ollama", "sagemaker")


def target_config(args: argparse.Namespace, **fields: object):
    from pydantic import TypeAdapter, ValidationError

    from infra.targets import DeployConfig
    from tasks.config import format_validation_error, parse_overrides

    raw = {"target": args.target, **{k: v for k, v in fields.items() if v is not None}}
    raw.update(dict(parse_overrides(args.overrides)))
    try:
        return TypeAdapter(DeployConfig).validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"--target {args.target} options")) from None


def cmd_deploy(args: argparse.Namespace) -> int:
    cfg = target_config(args, name=args.name, port=args.port)
    from flows.deploy import deploy_model

    deployment = deploy_model(args.model_ref, cfg)
    print(f"{deployment.release.name} version {deployment.release.version} serves on {deployment.target} at "
          f"{deployment.endpoint}")
    if deployment.details.get("smoke_test") == "skipped":
        print("  smoke test skipped (smoke_test=false): no golden prompt was sent")
    if deployment.details.get("cost_per_hour") is not None:
        print(f"  cost: ${deployment.details['cost_per_hour']:.4g}/hour at {deployment.details['instance_count']} x "
              f"{deployment.details['instance_type']} (price table in the target config)")
    if deployment.previous:
        print(f"  previous version: {deployment.previous.version} (slmops deploy-rollback {deployment.name} "
              f"--target {deployment.target})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Probe every recorded deployment; exit 1 when any of them does not serve its recorded version."""
    import json

    from infra.targets import TARGETS, probe_all

    rows = probe_all(get_settings().root, (args.target,) if args.target else TARGETS)
    if args.json:
        print(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
    elif not rows:
        print("nothing deployed")
    else:
        print(f"{'TARGET':8} {'NAME':20} {'STATE':5} {'RECORDED':8} {'SERVED':8} {'ENDPOINT':36} SINCE")
        for row in rows:
            print(f"{row.target:8} {row.name:20} {row.state:5} {row.recorded_version:8} "
                  f"{row.served_version or '-':8} {row.endpoint:36} {row.since}")
            for label, value in (("problem", row.problem), ("previous", row.previous_version), ("log", row.log),
                                 ("cost", row.cost_per_hour and f"${row.cost_per_hour:.4g}/hour")):
                if value:
                    print(f"{'':8} {label}: {value}")
    return 0 if all(row.state == "up" for row in rows) else 1


def cmd_undeploy(args: argparse.Namespace) -> int:
    from infra.targets import make_target

    make_target(target_config(args), get_settings().root).undeploy(args.name)
    print(f"undeployed {args.name} from {args.target}")
    return 0


def cmd_deploy_rollback(args: argparse.Namespace) -> int:
    from infra.targets import make_target

    d = make_target(target_config(args), get_settings().root).rollback(args.name)
    print(f"{d.name} on {d.target} serves version {d.release.version} again at {d.endpoint}")
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    """One chat request to a deployment's endpoint; the answer's text (or its raw body) on stdout."""
    from infra.targets import DeployError, make_target

    if args.target != "sagemaker":
        raise DeployError(f"slmops invoke speaks to sagemaker endpoints; a {args.target} deployment serves an "
                          "OpenAI-compatible URL (see slmops status)")
    from infra.sagemaker.invoke import answer_text, chat_body, invoke, invoke_async

    target = make_target(target_config(args), get_settings().root)
    details = target.details(target.record(args.name))
    clients = target.clients(details.region)
    body = chat_body(args.prompt, args.max_tokens)
    if args.use_async:
        if not details.async_output:
            raise DeployError(f"{details.endpoint_name} is not an asynchronous endpoint (deploy it with "
                              "--set async_output=s3://…)")
        raw, where = invoke_async(clients, details.endpoint_name, body, details.bucket, details.prefix, args.timeout)
        print(f"input {where['input']} → output {where['output']}", file=sys.stderr)
    else:
        raw = invoke(clients, details.endpoint_name, body)
    try:
        print(answer_text(raw))
    except (ValueError, KeyError, IndexError, TypeError):
        print(raw.decode(errors="replace"))
    return 0
