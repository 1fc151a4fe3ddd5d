"""``slmops promote``, ``rollback``, ``models`` and ``multi-lora``: versions and aliases of the model registry."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.errors import ConfigError
from tasks.served_folder import adapter_files, is_served_folder
from tasks.settings import get_settings


def _registry_client():
    from registry.tracking import registry_client

    return registry_client(get_settings().root)


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

    if args.upgrade and not args.name:
        raise ConfigError("--upgrade needs the registered model's NAME")
    client = _registry_client()
    if not args.name:
        print("\n".join(registered_names(client)) or "no registered models")
        return 0
    if args.upgrade:
        from registry.upgrade import upgrade_versions

        upgraded = upgrade_versions(get_settings().root, args.name)
        print(f"{args.name}: upgraded versions {', '.join(upgraded)} (they load with mlflow.pyfunc now)" if upgraded
              else f"{args.name}: every version is an MLflow Model already")
        return 0
    from registry.upgrade import UPGRADE_COMMAND, legacy_versions

    current = aliases(client, args.name)
    print(f"{args.name}: versions {', '.join(versions(client, args.name))}")
    if legacy := legacy_versions(client, args.name):
        print(f"versions {', '.join(legacy)} were registered before slmops logged MLflow Models: they deploy, but "
              f"load with mlflow.pyfunc only after `{UPGRADE_COMMAND.format(name=args.name)}`")
    print("aliases: " + (", ".join(f"{a}={v}" for a, v in sorted(current.items())) or "none"))
    for e in history(client, args.name):
        print(f"  {e['at']} {e['action']:8} {e['alias']}: {e['previous'] or '-'} → {e['version']}  ({e['reason']})")
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
