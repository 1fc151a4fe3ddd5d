"""``slmops up`` / ``down`` / ``platform status``: the local platform, and pointing every command at it."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tasks.errors import ConfigError, SlmopsError
from tasks.settings import get_settings


def repo_path(given: str | None) -> Path:
    """The checkout holding prefect.yaml: ``--repo``, else the working directory, else the source tree."""
    for base in ([Path(given)] if given else [Path.cwd(), Path(__file__).resolve().parents[1]]):
        if (base / "prefect.yaml").is_file():
            return base.resolve()
    raise ConfigError("prefect.yaml not found; run from the slmops checkout or pass --repo")


def use_platform(home: Path) -> None:
    """Point this process at the running platform's Prefect and MLflow servers (the user's settings win).

    A platform on record that does not answer is an error naming the way out, not a silent fallback.
    """
    from infra.platform.state import load_state, platform_environment, probe

    state = load_state(home)
    if state is None:
        return
    if probe(state.services["prefect"], timeout_s=2) != "up":
        raise SlmopsError(f"the platform on record ({home / 'platform.json'}) is not running: start it with "
                          "`slmops up`, or forget it with `slmops down`")
    for key, value in platform_environment(home).items():
        os.environ.setdefault(key, value)


def cmd_up(args: argparse.Namespace) -> int:
    from infra import process
    from infra.platform.bindings import load_bindings
    from infra.platform.results import parse_results_uri
    from infra.platform.services import UpOptions, platform_health, start_platform
    from infra.platform.state import load_state, save_state

    if args.results:
        parse_results_uri(args.results)  # a bad URI is an error before anything starts
    home = get_settings().root
    current = load_state(home)
    keep = {}
    if current is not None:
        health = platform_health(current)
        if set(health.values()) == {"up"}:
            print("the platform is already up:")
            _print_urls(current, health)
            return 0
        if args.database and args.database != current.database_url:
            raise ConfigError(f"the platform on record uses {current.database}; `slmops down` before changing "
                              "--database")
        if args.artifacts_destination and args.artifacts_destination != current.artifacts_destination:
            kept = current.artifacts_destination or "mlartifacts/"
            raise ConfigError(f"the platform on record keeps artifacts in {kept}; `slmops down` before changing "
                              "--artifacts-destination")
        if args.results and args.results != current.results:
            raise ConfigError(f"the platform on record keeps results in {current.results or 'its runs'}; "
                              "`slmops down` before changing --results")
        print("the platform on record is not whole (" + ", ".join(f"{k}: {v}" for k, v in health.items())
              + "); starting what is missing")
        keep = {name: s for name, s in current.services.items() if health.get(name) == "up"}
        for name, service in current.services.items():
            if name not in keep:
                process.stop_group(service.process)
    bindings = Path(args.bindings or (current.bindings if current else get_settings().bindings)).resolve()
    load_bindings(bindings)  # a bad bindings file is an error before anything starts
    repo = repo_path(args.repo or (current.repo if current else None))
    state = start_platform(UpOptions(home=home, repo=repo, bindings=bindings,
                                     database=args.database or (current.database_url if current else None),
                                     artifacts_destination=args.artifacts_destination
                                     or (current.artifacts_destination if current else None),
                                     results=args.results or (current.results if current else None),
                                     prefect_port=args.prefect_port, mlflow_port=args.mlflow_port,
                                     receiver_port=args.receiver_port, fleet_port=args.fleet_port), keep)
    save_state(state)
    print("the platform is up:")
    _print_urls(state, platform_health(state))
    print("stop it with: slmops down")
    return 0


def _print_urls(state, health: dict[str, str]) -> None:
    ui = state.prefect_api_url.removesuffix("/api")
    rows = [("prefect", f"{ui}  (UI and API {state.prefect_api_url})"), ("mlflow", state.mlflow_uri),
            ("receiver", state.receiver_url), ("fleet", state.fleet_url or "-"),
            ("starter", state.services["starter"].health if "starter" in state.services else "-"),
            ("worker", "pool slmops-process")]
    for name, where in rows:
        print(f"  {name:9} {health.get(name, '?'):9} {where}")
    print(f"  database  {state.database}; bindings {state.bindings}")


def cmd_down(args: argparse.Namespace) -> int:
    from infra.platform.services import stop_platform
    from infra.platform.state import forget_state, load_state

    home = get_settings().root
    state = load_state(home)
    if state is None:
        print("the platform is not up (nothing on record)")
        return 0
    outcome = stop_platform(state)
    forget_state(home)
    for name, was in outcome.items():
        print(f"  {name:9} " + {"running": "stopped", "gone": "was not running",
                                "stranger": "left alone: its PID now belongs to another process"}[was])
    print("the platform is down (deployed models keep serving: slmops status, slmops undeploy)")
    return 0


def cmd_platform_status(args: argparse.Namespace) -> int:
    from infra.platform.services import platform_health
    from infra.platform.state import load_state

    state = load_state(get_settings().root)
    if state is None:
        if args.json:
            print(json.dumps({"up": False, "services": {}}))
        else:
            print("the platform is not up (slmops up starts it)")
        return 1
    health = platform_health(state)
    whole = set(health.values()) == {"up"}
    if args.json:
        print(json.dumps({"up": whole, "database": state.database, "services": {
            name: {"state": health[name], "url": s.url, "pid": s.process.pid, "log": s.log}
            for name, s in state.services.items()}}, indent=2))
    else:
        _print_urls(state, health)
    return 0 if whole else 1


def cmd_platform(args: argparse.Namespace) -> int:
    return {"status": cmd_platform_status, "configure": cmd_platform_configure}[args.platform_command](args)


def cmd_platform_configure(args: argparse.Namespace) -> int:
    from infra.platform.secrets import read_secret
    from infra.platform.services import configure

    env = {**os.environ, "PREFECT_API_URL": args.prefect_api, "MLFLOW_TRACKING_URI": args.mlflow,
           **({"SLMOPS_STATE_DATABASE": args.state_database} if args.state_database else {})}
    repo = repo_path(args.repo)
    variables = json.loads(args.job_variables.read_text()) if args.job_variables else None
    configure(repo, env, args.receiver_url, read_secret(args.secret_file), args.pool, args.pool_type, variables,
              args.results)
    print(f"deployments of {repo / 'prefect.yaml'} applied to {args.prefect_api} (pool {args.pool}); "
          f"MLflow at {args.mlflow} posts alias moves to {args.receiver_url}")
    return 0


def add_parsers(sub: argparse._SubParsersAction, port_type) -> None:
    """``up``, ``down`` and ``platform status``."""
    up = sub.add_parser("up", help="Start the local platform on 127.0.0.1: Prefect server (UI), MLflow server, "
                        "webhook receiver, a worker with every deployment of prefect.yaml, promotion → redeploy.")
    up.add_argument("--database", metavar="URL", help="postgresql://user@host:port/NAME puts Prefect and MLflow on "
                    "PostgreSQL (databases NAME_prefect and NAME_mlflow, made if absent); default: sqlite files "
                    "under SLMOPS_HOME.")
    up.add_argument("--artifacts-destination", metavar="URI", help="Where the MLflow server keeps models and other "
                    "artifacts, e.g. s3://bucket/slmops (AWS credentials from the usual environment variables or "
                    "profile; MLFLOW_S3_ENDPOINT_URL for an S3-compatible store). Clients upload and download "
                    "through the server. Default: mlartifacts/ under SLMOPS_HOME.")
    up.add_argument("--results", metavar="S3_URI", help="s3://bucket/prefix where every flow run persists its "
                    "Prefect results (the slmops-s3-results block), so a retry or another worker finds them; "
                    "the workers' AWS environment reaches the bucket (AWS_ENDPOINT_URL for an S3-compatible store).")
    up.add_argument("--bindings", metavar="FILE", help="Which targets follow which alias (default: "
                    "SLMOPS_BINDINGS or configs/bindings.yaml).")
    up.add_argument("--repo", metavar="DIR", help="Checkout with prefect.yaml (default: here, else the source).")
    for name in ("prefect", "mlflow", "receiver", "fleet"):
        up.add_argument(f"--{name}-port", type=port_type, help=f"Port of the {name} (default: a free one, the "
                        "previous one when free).")
    sub.add_parser("down", help="Stop exactly what `slmops up` started (identity-checked), and forget it.")
    platform = sub.add_parser("platform", help="The local platform.")
    platform_sub = platform.add_subparsers(dest="platform_command", required=True, metavar="SUBCOMMAND")
    status = platform_sub.add_parser("status", help="Probe each service of the platform (exit 1 unless all are "
                                     "up).")
    status.add_argument("--json", action="store_true", help="Machine-readable output.")
    configure = platform_sub.add_parser("configure", help="Apply prefect.yaml's deployments and MLflow's alias "
                                        "webhook to servers run elsewhere (compose, Kubernetes): what `up` does "
                                        "after starting its own.")
    configure.add_argument("--prefect-api", required=True, metavar="URL", help="e.g. http://prefect:4200/api")
    configure.add_argument("--mlflow", required=True, metavar="URL", help="MLflow server, e.g. http://mlflow:5000")
    configure.add_argument("--receiver-url", required=True, metavar="URL",
                           help="Where MLflow posts deliveries, e.g. http://receiver:8787/webhooks/mlflow")
    configure.add_argument("--secret-file", required=True, type=Path, help="File holding the webhook secret "
                           "(the receiver reads the same file).")
    configure.add_argument("--state-database", metavar="URL", help="slmops' state database (deployment records "
                           "and locks), e.g. postgresql://user@db:5432/slmops_slmops: published as the Prefect "
                           "variable slmops_state_database (without a password) for commands that know only the "
                           "Prefect API; workers get it as SLMOPS_STATE_DATABASE.")
    configure.add_argument("--results", metavar="S3_URI", help="s3://bucket/prefix for flow runs' Prefect results "
                           "(saves the slmops-s3-results block slmops-results; give the workers PREFECT_RESULTS_"
                           "PERSIST_BY_DEFAULT=true and PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=slmops-s3-results/"
                           "slmops-results).")
    configure.add_argument("--pool", default="slmops-process", help="Work pool the deployments run in.")
    configure.add_argument("--pool-type", default="process", choices=("process", "kubernetes", "docker", "ecs"),
                           help="Type of that work pool (created if absent).")
    configure.add_argument("--repo", metavar="DIR", help="Checkout with prefect.yaml.")
    configure.add_argument("--job-variables", type=Path, metavar="FILE", help="JSON job variables (image, env, …) "
                           "for every deployment, e.g. infra/platform/deploy/k8s/work-pool-job-variables.json.")
