"""Handlers of the ``slmops`` commands: each loads and validates its input, then runs a flow or a registry call."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.errors import ConfigError
from tasks.served_folder import adapter_files, is_served_folder
from tasks.settings import get_settings

if TYPE_CHECKING:
    from tasks.config import TryItConfig

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


def cmd_train(args: argparse.Namespace) -> int:
    from tasks.config import load_config

    config = load_config(args.config, args.overrides)  # rejected here, before any training minute
    from flows.train import train

    summary = train(config)
    print(f"\nmodel: {summary.model.path}")
    print(f"MLflow run: {summary.run_id}")
    for name, score in summary.exact_match.items():
        print(f"  exact match ({name}): {score:.1%}")
    print("  seconds: " + ", ".join(f"{k}={v:.1f}" for k, v in summary.seconds.items()))
    return 0


def demo_config_path() -> Path:
    """configs/demo.yaml of the working directory, else of the source checkout."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / "configs" / "demo.yaml").is_file():
            return base / "configs" / "demo.yaml"
    raise ConfigError("configs/demo.yaml not found; run from the slmops checkout or use slmops run --config")


def _run_pipeline(config_path: Path, overrides: list[str], deploy_port: int | None = None) -> int:
    from tasks.config import load_config

    config = load_config(config_path, overrides)
    from flows.pipeline import slm_pipeline

    state = slm_pipeline(config, return_state=True)
    if state.name == "GateFailed":
        print(f"\n{state.message}", file=sys.stderr)
        return 3
    summary = state.result()  # re-raises the flow's error on any other failure
    served = summary.report.metrics(config.quantize.served)
    reg = summary.registered
    if reg.reused:
        print(f"\n{reg.name} version {reg.version} already holds this exact model: reused, nothing new registered "
              f"(aliases: {', '.join(reg.aliases)})")
    else:
        print(f"\nregistered {reg.name} version {reg.version} (aliases: {', '.join(reg.aliases)})")
    for version in summary.adapter_versions:  # quantize.adapter_only: the base, then the adapter alone over it
        what = "multi-LoRA base" if version is summary.adapter_versions[0] else "the LoRA adapter alone"
        print(f"{'reused' if version.reused else 'registered'} {version.name} version {version.version} ({what})")
    print(f"  {config.quantize.served}: exact match {served['exact_match']:.1%}, perplexity "
          f"{served['perplexity']:.3f} (+{served['perplexity_increase']:.1%} vs fp32), "
          f"{served['decode_tokens_per_s']:.0f} tokens/s, {served['size_mb']:.2f} MB")
    print("  seconds: " + ", ".join(f"{k}={v:.1f}" for k, v in summary.seconds.items()))
    home = get_settings().root
    if (deploy_port is not None or config.try_it.deploy_local) and "champion" in reg.aliases:
        _deploy_and_chat(f"{reg.name}@champion", config.try_it, deploy_port)
    print("\nopen the UIs:")
    print(f"  mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}      # http://127.0.0.1:5000")
    print(f"  PREFECT_HOME={home / 'prefect'} prefect server start           # http://127.0.0.1:4200")
    return 0


def _deploy_and_chat(model_ref: str, try_it: TryItConfig, port: int | None = None) -> None:
    """Deploy ``model_ref`` on the local target and print its answer to ``try_it.question`` (openai client)."""
    from openai import OpenAI

    from flows.deploy import deploy_model
    from infra.process import free_port, port_free
    from infra.targets.config import LocalTargetConfig
    from infra.targets.store import DeploymentStore

    name = model_ref.split("@")[0]
    port = port or try_it.port
    if DeploymentStore(get_settings().root, "local").load(name) is not None:
        port = None  # blue/green on the deployment's current stable port
    elif not port_free(port):
        port = free_port()
    deployment = deploy_model(model_ref, LocalTargetConfig(port=port))
    client = OpenAI(base_url=deployment.endpoint, api_key="not-needed")
    question = try_it.question
    reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": question}],
                                           max_tokens=try_it.max_tokens, temperature=0)
    print(f"\n{model_ref} (version {deployment.release.version}) serves at {deployment.endpoint}")
    print(f"  openai client → {question!r}: {reply.choices[0].message.content!r}")
    print(f"  stop it with: slmops undeploy {name} --target local")


def cmd_run(args: argparse.Namespace) -> int:
    return _run_pipeline(Path(args.config), args.overrides)


def cmd_demo(args: argparse.Namespace) -> int:
    return _run_pipeline(Path(args.config) if args.config else demo_config_path(), [], deploy_port=args.port)


def _registry_client():
    from registry.tracking import registry_client

    return registry_client(get_settings().root)


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


def cmd_promote(args: argparse.Namespace) -> int:
    from registry.history import move_alias

    entry = move_alias(_registry_client(), args.name, args.alias, args.version, reason="slmops promote")
    print(f"{args.name}@{args.alias}: {entry['previous'] or '(unset)'} → {entry['version']}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from registry.history import rollback_alias

    entry = rollback_alias(_registry_client(), args.name, args.alias)
    print(f"{args.name}@{args.alias}: {entry['previous']} → {entry['version']} (rolled back)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from registry.history import aliases, history, registered_names, versions

    client = _registry_client()
    if not args.name:
        print("\n".join(registered_names(client)) or "no registered models")
        return 0
    current = aliases(client, args.name)
    print(f"{args.name}: versions {', '.join(versions(client, args.name))}")
    print("aliases: " + (", ".join(f"{a}={v}" for a, v in sorted(current.items())) or "none"))
    for e in history(client, args.name):
        print(f"  {e['at']} {e['action']:8} {e['alias']}: {e['previous'] or '-'} → {e['version']}  ({e['reason']})")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from tasks.batch.config import batch_config

    config = batch_config(args.overrides)  # rejected here, before any work
    from flows.batch import batch_transform

    result = batch_transform(args.model_ref, args.input, args.output, config)
    r = result.report
    if result.already_complete:
        print(f"{r.output_uri} is complete already ({r.records} records by {r.model_name} version "
              f"{r.model_version}): nothing to do")
        return 0
    t, c = r.timings, r.checks
    print(f"{r.model_ref} → {r.model_name} version {r.model_version}: {r.records} records in {len(r.parts)} parts "
          f"under {r.output_uri}")
    print(f"  generated now: {t['records_generated']} records ({t['records_per_s'] or '-'} records/s); parts kept "
          f"from an earlier attempt: {t['parts_resumed']}")
    print(f"  errors: {r.errors} ({r.errors_file}); empty answers: {c.empty}; cut by the length limit: {c.truncated}")
    if r.drift:
        worst = r.drift.worst()
        print(f"  drift: {r.drift.status} (largest PSI {worst.psi:.3g} on {worst.feature})")
    print(f"  manifest: {result.manifest}; MLflow run {r.mlflow_run_id}")
    return 0


def cmd_multi_lora(args: argparse.Namespace) -> int:
    from tasks.config import QuantizeConfig
    from tasks.inputs import describe_model
    from tasks.quantize.adapters import add_adapter, build_multi_lora

    adapters = {}
    for spec in args.adapter:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not Path(folder, "adapter_config.json").is_file():
            raise ConfigError(f"--adapter {spec!r}: expected NAME=DIR where DIR is a peft adapter folder "
                              "(with adapter_config.json)")
        adapters[name] = describe_model(folder)
    if not Path(args.base, "config.json").is_file():
        raise ConfigError(f"BASE {args.base!r} is not a Hugging Face model folder (no config.json)")
    base, cfg = describe_model(args.base), QuantizeConfig(int4_block_size=args.int4_block_size)
    if args.add:
        if not is_served_folder(args.out):
            raise ConfigError(f"--add: {args.out} is not a multi-LoRA folder; build it first without --add")
        for name, adapter in adapters.items():
            add_adapter(args.out, base, name, adapter, args.precision, cfg)
    elif args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"{args.out} exists and is not empty; choose a new folder, or --add to add adapters to it")
    else:
        build_multi_lora(base, adapters, args.precision, cfg, args.out)
    print(f"{args.out}: serves adapters {sorted(adapter_files(args.out))} beside the base")
    if args.register:
        from registry.adapters import register_multi_lora

        for version in register_multi_lora(get_settings().root, args.register, args.out):
            print(f"registered {version.name}/{version.version}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from tasks.data.prepare import load_rows
    from tasks.errors import DatasetError

    failed = 0
    for uri in args.files:
        try:
            rows = load_rows(uri)
        except DatasetError as exc:
            failed += 1
            print(exc, file=sys.stderr)
        else:
            print(f"{uri}: {len(rows)} valid rows")
    return 1 if failed else 0


def cmd_config(args: argparse.Namespace) -> int:
    return {"check": cmd_config_check, "docs": cmd_config_docs}[args.config_command](args)


def cmd_config_docs(args: argparse.Namespace) -> int:
    from flows import config_docs

    if args.write:
        print(f"wrote {config_docs.write()}")
    else:
        print(config_docs.render(), end="")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    import yaml

    from tasks.config import load_config

    config = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0
