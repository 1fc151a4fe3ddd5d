"""``slmops train``, ``run`` and ``demo``: the pipeline from the command line (and the demo's try-it deploy)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.errors import ConfigError
from tasks.settings import get_settings

if TYPE_CHECKING:
    from tasks.config import TryItConfig


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
