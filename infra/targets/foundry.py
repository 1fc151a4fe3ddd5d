"""foundry: Foundry Local's model layout in its cache, registered, loaded and verified with foundry-local-sdk.

The layout is the onnxruntime-genai folder plus ``inference_model.json`` whose ``PromptTemplate`` is derived
from the model's own chat template. foundry-local-sdk 2.x runs in-process on Linux, offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from infra.targets.base import DeployError, Deployment, DeploymentStatus, RecordedTarget, check_answer, now
from infra.targets.chat_turns import chat_turns
from infra.targets.config import FoundryTargetConfig
from tasks.records import ModelRelease
from tasks.served_folder import adapter_files

PLACEHOLDER = "{Content}"


def prompt_template(model_dir: Path) -> dict[str, str]:
    """Foundry's PromptTemplate (system/user/assistant/prompt) from the tokenizer's chat template.

    Foundry repeats a role's template for every such message, so user and assistant turns are read after an
    earlier exchange: a default system prompt that a template puts before the first message (SmolLM2's) is not
    repeated before every user turn.
    """
    turns = chat_turns(model_dir)

    def fill(turn: tuple[str, str]) -> str:
        return turn[0] + PLACEHOLDER + turn[1]

    template = {role: fill(turns.later[role]) for role in ("user", "assistant") if role in turns.later}
    template["prompt"] = template["user"] + turns.generation
    system = turns.first.get("system") or turns.later.get("system")
    if system:  # some templates refuse a system turn: no system template then
        template["system"] = fill(system)
    return template


def layout_folder(release: ModelRelease, cache_dir: Path) -> Path:
    """Where a version's layout lives in the cache: ``<cache>/slmops/<name>-<version>``."""
    return cache_dir / "slmops" / f"{release.name}-{release.version}"


def write_layout(release: ModelRelease, folder: Path, model_id: str) -> None:
    """Copy the ONNX folder to ``folder`` (replacing a leftover) with ``inference_model.json`` naming ``model_id``."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(release.onnx_dir, folder)
    (folder / "inference_model.json").write_text(json.dumps(
        {"Name": model_id, "PromptTemplate": prompt_template(folder)}, indent=2))


class FoundryTarget(RecordedTarget):
    """Deploy into a Foundry Local cache on this machine."""

    kind = "foundry"

    def __init__(self, cfg: FoundryTargetConfig, root: Path):
        super().__init__(cfg, root)
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.root / "foundry" / "cache"

    def manager(self) -> Any:
        """The process's FoundryLocalManager (a singleton), configured for this cache."""
        from foundry_local_sdk import Configuration, FoundryLocalManager

        current = FoundryLocalManager.instance
        if current is not None and Path(current.config.model_cache_dir or "") == self.cache_dir:
            return current
        if current is not None:
            current.close()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        FoundryLocalManager.initialize(Configuration(
            app_name="slmops", app_data_dir=str(self.root / "foundry" / "app"), model_cache_dir=str(self.cache_dir),
            logs_dir=str(self.root / "foundry" / "logs"), disable_nonessential_telemetry=True))
        return FoundryLocalManager.instance

    def catalog(self) -> Any:
        """The local catalog (where bring-your-own models are registered)."""
        from foundry_local_sdk.catalog import CatalogType

        return self.manager().get_catalog(CatalogType.LOCAL)

    def chat(self, model: Any, prompt: str) -> str:
        """One greedy chat completion through the SDK."""
        client = model.get_chat_client()
        client.settings.max_tokens = self.cfg.golden_max_tokens
        client.settings.temperature = 0.0
        return client.complete_chat([{"role": "user", "content": prompt}]).choices[0].message.content

    def _serve(self, folder: Path, model_id: str) -> str:
        """Register ``folder`` as ``model_id``, load it and pass the golden prompt; return the answer."""
        from foundry_local_sdk.model_info import ModelInfoBuilder

        model = self.catalog().register_model(str(folder), model_id,
                                              ModelInfoBuilder().set_string_property("task", "chat-completion"))
        model.load()
        answer = self.chat(model, self.cfg.golden_prompt)
        check_answer(answer, self.cfg.golden_expect, f"foundry {model_id}")
        return answer

    def _deploy(self, release: ModelRelease, name: str, current: Deployment | None) -> Deployment:
        """Write the layout, register and load it, pass the golden prompt, then retire the previous version.

        When ``<name>:<version>`` is registered already (a redeploy of the same version), the new copy is
        checked under a trial id first; the registered one is replaced only after that passed.
        """
        from foundry_local_sdk.exception import FoundryLocalException

        if release.name in adapter_files(Path(release.onnx_dir)):
            raise DeployError(f"{release.ref} is a LoRA adapter served over its base, and Foundry Local cannot "
                              "activate an adapter: deploy it to the local or sagemaker target")
        model_id, folder = f"{release.name}:{release.version}", layout_folder(release, self.cache_dir)
        taken = self.catalog().get_model_variant(model_id) is not None
        trial_id, trial = (f"{release.name}-next:{release.version}", folder.with_name(f"{folder.name}.next")) \
            if taken else (model_id, folder)
        try:
            if taken:
                self._forget(trial_id, trial)  # a trial left by an interrupted deploy
            write_layout(release, trial, model_id)
            answer = self._serve(trial, trial_id)
        except (FoundryLocalException, DeployError, OSError) as exc:
            self._forget(trial_id, trial)
            raise DeployError(f"Foundry Local could not serve {model_id}; what served before is untouched: "
                              f"{exc}") from None
        if taken:
            answer = self._swap_in(trial, trial_id, folder, model_id)
        if current and current.details["model_id"] != model_id:
            self._forget(current.details["model_id"], Path(current.details["folder"]))
        deployment = Deployment(name=name, target="foundry", release=release, endpoint=f"foundry-local://{model_id}",
                                since=now(), previous=current.release if current else None,
                                details={"model_id": model_id, "folder": str(folder), "cache_dir": str(self.cache_dir),
                                         "golden_answer": answer})
        self.store.save(deployment)
        return deployment

    def _swap_in(self, trial: Path, trial_id: str, folder: Path, model_id: str) -> str:
        """Replace registered ``model_id`` by the trial copy that passed its check; return the golden answer."""
        from foundry_local_sdk.exception import FoundryLocalException

        self._forget(trial_id, None)
        self._forget(model_id, None)
        retired = folder.with_name(f"{folder.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        if folder.exists():
            folder.rename(retired)
        trial.rename(folder)
        try:
            return self._serve(folder, model_id)
        except (FoundryLocalException, DeployError) as exc:
            raise DeployError(f"the new copy of {model_id} passed its check as {trial_id} but failed once swapped "
                              f"in: {exc}; {model_id} is not registered now, deploy again") from None
        finally:
            shutil.rmtree(retired, ignore_errors=True)

    def _forget(self, model_id: str, folder: Path | None) -> None:
        """Unload and unregister one version (list_models shows one entry per alias, so look up the variant)."""
        catalog = self.catalog()
        model = catalog.get_model_variant(model_id)
        if model is not None:
            if model.is_loaded:
                model.unload()
            catalog.unregister_model(model_id)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def probe(self, record: Deployment) -> DeploymentStatus:
        """The recorded version is registered in the record's catalog and its layout folder exists."""
        from foundry_local_sdk.exception import FoundryLocalException

        cache_dir = Path(record.details["cache_dir"])
        if cache_dir != self.cache_dir:
            return FoundryTarget(self.cfg.model_copy(update={"cache_dir": str(cache_dir)}), self.root).probe(record)
        model_id, logs = record.details["model_id"], str(self.root / "foundry" / "logs")
        try:
            registered = self.catalog().get_model_variant(model_id) is not None
        except FoundryLocalException as exc:
            return DeploymentStatus.probed(record, None, f"Foundry Local catalog unreadable: {exc}", logs)
        if not registered:
            return DeploymentStatus.probed(record, None, f"{model_id} is not registered in {cache_dir}", logs)
        if not Path(record.details["folder"]).is_dir():
            return DeploymentStatus.probed(record, None, f"layout folder {record.details['folder']} is missing", logs)
        return DeploymentStatus.probed(record, model_id.rsplit(":", 1)[1], None, logs)

    def _teardown(self, record: Deployment) -> None:
        """Unload, unregister and delete the layout."""
        self._forget(record.details["model_id"], Path(record.details["folder"]))
