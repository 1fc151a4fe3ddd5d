"""foundry: Foundry Local's model layout in its cache, registered, loaded and verified with foundry-local-sdk.

The layout is the onnxruntime-genai folder plus ``inference_model.json`` whose ``PromptTemplate`` is derived
from the model's own chat template. foundry-local-sdk 2.x runs in-process on Linux, offline.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

from infra.targets.base import DeployError, Deployment, RecordedTarget, check_answer, now
from infra.targets.config import FoundryTargetConfig
from tasks.records import ModelRelease

PLACEHOLDER = "{Content}"


def prompt_template(model_dir: Path) -> dict[str, str]:
    """Foundry's PromptTemplate (system/user/assistant/prompt) rendered from the tokenizer's chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def render(role: str, generation: bool = False) -> str:
        return tok.apply_chat_template([{"role": role, "content": PLACEHOLDER}], tokenize=False,
                                       add_generation_prompt=generation)

    template = {"assistant": render("assistant"), "prompt": render("user", generation=True), "user": render("user")}
    with contextlib.suppress(Exception):  # some templates refuse a lone system turn: no system template then
        template["system"] = render("system")
    return template


def write_layout(release: ModelRelease, cache_dir: Path) -> tuple[Path, str]:
    """Copy the ONNX folder into the cache with ``inference_model.json``; return (folder, model id)."""
    model_id = f"{release.name}:{release.version}"
    folder = cache_dir / "slmops" / f"{release.name}-{release.version}"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(release.onnx_dir, folder)
    (folder / "inference_model.json").write_text(json.dumps(
        {"Name": model_id, "PromptTemplate": prompt_template(folder)}, indent=2))
    return folder, model_id


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

    def deploy(self, release: ModelRelease) -> Deployment:
        """Write the layout, register and load it, pass the golden prompt, then retire the previous version."""
        from foundry_local_sdk.exception import FoundryLocalException
        from foundry_local_sdk.model_info import ModelInfoBuilder

        name = self.cfg.name or release.name
        current = self.store.load(name)
        folder, model_id = write_layout(release, self.cache_dir)
        catalog = self.catalog()
        try:
            if catalog.get_model_variant(model_id) is not None:  # redeploying the same version
                self._forget(model_id, None)
            model = catalog.register_model(str(folder), model_id,
                                           ModelInfoBuilder().set_string_property("task", "chat-completion"))
            model.load()
            answer = self.chat(model, self.cfg.golden_prompt)
            check_answer(answer, self.cfg.golden_expect, f"foundry {model_id}")
        except (FoundryLocalException, DeployError) as exc:
            self._forget(model_id, folder)
            raise DeployError(f"Foundry Local could not serve {model_id}; the previous version is untouched: "
                              f"{exc}") from None
        if current and current.details["model_id"] != model_id:
            self._forget(current.details["model_id"], Path(current.details["folder"]))
        deployment = Deployment(name=name, target="foundry", release=release, endpoint=f"foundry-local://{model_id}",
                                since=now(), previous=current.release if current else None,
                                details={"model_id": model_id, "folder": str(folder), "cache_dir": str(self.cache_dir),
                                         "golden_answer": answer})
        self.store.save(deployment)
        return deployment

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

    def status(self, name: str | None = None) -> Deployment | None:
        """The record, with ``details.registered`` checked against the catalog now."""
        record = self.store.load(name or self.cfg.name or "")
        if record is not None:
            record.details["registered"] = self.catalog().get_model_variant(record.details["model_id"]) is not None
        return record

    def _teardown(self, record: Deployment) -> None:
        """Unload, unregister and delete the layout."""
        self._forget(record.details["model_id"], Path(record.details["folder"]))
