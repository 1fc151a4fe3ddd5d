"""ollama: the pipeline's GGUF plus a Modelfile derived from the model's chat template, created through
Ollama's REST API (blob upload by sha256, ``POST /api/create`` with ``files``), verified with ``/api/generate``;
the previous version is removed only after the new one answers."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import httpx

from infra.targets.base import DeployError, Deployment, DeploymentStatus, RecordedTarget, check_answer, now
from infra.targets.chat_turns import chat_turns
from infra.targets.config import OllamaTargetConfig
from tasks.records import ModelRelease, digest_file

log = logging.getLogger(__name__)


def go_template(model_dir: Path) -> tuple[str, list[str]]:
    """An Ollama (Go) TEMPLATE equivalent to the tokenizer's chat template, and the stop strings.

    The Go template picks each message's turn by role, and by index between the first-message form (where
    templates put a BOS or a default system prompt, e.g. SmolLM2's) and the form after an earlier exchange.
    """
    turns = chat_turns(model_dir)

    def chain(branches: dict[str, tuple[str, str]]) -> str:
        return "{{ if " + "{{ else if ".join(f'eq .Role "{role}" }}}}{pre}{{{{ .Content }}}}{post}'
                                              for role, (pre, post) in branches.items()) + "{{ end }}"

    body = "{{ if eq $i 0 }}" + chain(turns.first) + "{{ else }}" + chain(turns.later) + "{{ end }}"
    return "{{ range $i, $m := .Messages }}" + body + "{{ end }}" + turns.generation, turns.stops


def modelfile(gguf_name: str, template: str, parameters: dict) -> str:
    """The Modelfile text (kept beside the deployment record for use with ``ollama create -f``)."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    for key, value in parameters.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f'PARAMETER {key} "{v}"' if isinstance(v, str) else f"PARAMETER {key} {v}")
    return "\n".join(lines) + "\n"


class OllamaTarget(RecordedTarget):
    """Deploy to an Ollama server through its REST API."""

    kind = "ollama"

    def __init__(self, cfg: OllamaTargetConfig, root: Path):
        super().__init__(cfg, root)
        self.http = httpx.Client(base_url=cfg.host.rstrip("/"), timeout=httpx.Timeout(300.0, connect=10.0))

    def _call(self, method: str, path: str, ok: tuple[int, ...] = (), **kw) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise DeployError(f"Ollama at {self.cfg.host} unreachable: {exc!r}") from None
        if response.status_code >= 400 and response.status_code not in ok:
            raise DeployError(f"Ollama {method} {path} → HTTP {response.status_code}: {response.text[:300]}")
        return response

    def pick_gguf(self, release: ModelRelease) -> tuple[str, Path]:
        """The first configured GGUF type the release has."""
        for kind in self.cfg.gguf:
            if kind in release.gguf:
                return kind, Path(release.gguf[kind])
        raise DeployError(f"{release.ref} has no GGUF of types {self.cfg.gguf}; it has "
                          f"{sorted(release.gguf) or 'none'} — build one with quantize.gguf (gguf extra)")

    def upload(self, path: Path) -> str:
        """Push the GGUF as a blob unless the server has it; return ``sha256:<hex>``."""
        digest = f"sha256:{digest_file(path, hashlib.sha256())}"
        if self._call("HEAD", f"/api/blobs/{digest}", ok=(404,)).status_code != 200:
            with open(path, "rb") as fh:
                self._call("POST", f"/api/blobs/{digest}", content=fh)
        return digest

    def _delete(self, model: str) -> None:
        """Delete a model, warning (not failing) when that does not work: nothing serves it anymore."""
        try:
            self._call("DELETE", "/api/delete", ok=(404,), json={"model": model})
        except DeployError as exc:
            log.warning("could not delete %s: %s", model, exc)

    def _deploy(self, release: ModelRelease, name: str, current: Deployment | None) -> Deployment:
        """Create ``name:v<version>``, verify it answers, then delete the previous version."""
        kind, gguf = self.pick_gguf(release)
        template, stops = go_template(Path(release.onnx_dir))
        parameters: dict = {"stop": stops, "temperature": self.cfg.temperature}
        if self.cfg.num_ctx:
            parameters["num_ctx"] = self.cfg.num_ctx
        model = f"{name}:v{release.version}"
        digest = self.upload(gguf)
        self._call("POST", "/api/create", json={"model": model, "files": {gguf.name: digest}, "template": template,
                                                "parameters": parameters, "stream": False})
        try:
            reply = self._call("POST", "/api/generate", json={
                "model": model, "prompt": self.cfg.golden_prompt, "stream": False,
                "options": {"num_predict": self.cfg.golden_max_tokens, "temperature": 0}})
            try:
                answer = reply.json()["response"]
            except (ValueError, KeyError, TypeError):
                raise DeployError(f"/api/generate answered {reply.text[:200]!r}") from None
            check_answer(answer, self.cfg.golden_expect, f"ollama {model}")
        except DeployError as exc:
            if not current or current.details["model"] != model:
                self._delete(model)
            raise DeployError(f"{model} failed its golden prompt; the previous version is untouched: {exc}") \
                from None
        if current and current.details["model"] != model:
            self._delete(current.details["model"])
        folder = self.root / "deployments" / "ollama" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Modelfile").write_text(modelfile(gguf.name, template, parameters))
        deployment = Deployment(name=name, target="ollama", release=release, endpoint=f"{self.cfg.host}/api",
                                since=now(), previous=current.release if current else None,
                                details={"model": model, "host": self.cfg.host, "gguf": kind, "digest": digest,
                                         "modelfile": str(folder / "Modelfile"), "golden_answer": answer})
        self.store.save(deployment)
        return deployment

    def probe(self, record: Deployment) -> DeploymentStatus:
        """The recorded model is listed by the record's Ollama server (``/api/tags``)."""
        host = record.details.get("host") or record.endpoint.removesuffix("/api")
        try:
            response = httpx.get(f"{host.rstrip('/')}/api/tags", timeout=10)
            names = {m["name"] for m in response.json()["models"]}
        except httpx.HTTPError as exc:
            return DeploymentStatus.probed(record, None, f"Ollama at {host} unreachable ({type(exc).__name__})")
        except (ValueError, KeyError, TypeError):
            return DeploymentStatus.probed(record, None, f"{host}/api/tags answered {response.text[:100]!r}")
        model = record.details["model"]
        if model not in names:
            return DeploymentStatus.probed(record, None, f"{model} is not on the Ollama server at {host}")
        return DeploymentStatus.probed(record, record.release.version, None)

    def _teardown(self, record: Deployment) -> None:
        """Delete the model from Ollama."""
        self._call("DELETE", "/api/delete", ok=(404,), json={"model": record.details["model"]})
