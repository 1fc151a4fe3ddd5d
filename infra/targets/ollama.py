"""ollama: the pipeline's GGUF plus a Modelfile derived from the model's chat template, created through
Ollama's REST API (blob upload by sha256, ``POST /api/create`` with ``files``), verified with ``/api/generate``;
the previous version is removed only after the new one answers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx

from infra.targets.base import DeployError, Deployment, RecordedTarget, check_answer, now
from infra.targets.config import OllamaTargetConfig
from tasks.records import ModelRelease, digest_file

MARK = "\x00"


def go_template(model_dir: Path) -> tuple[str, list[str]]:
    """An Ollama (Go) TEMPLATE equivalent to the tokenizer's chat template, and the stop strings."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def render(messages: list[dict[str, str]], generation: bool = False) -> str:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    branches = []
    for role in ("system", "user", "assistant"):
        try:
            prefix, suffix = render([{"role": role, "content": MARK}]).split(MARK)
        except Exception:  # a template may refuse a lone turn of this role
            continue
        branches.append(f'eq .Role "{role}" }}}}{prefix}{{{{ .Content }}}}{suffix}')
    user_only = render([{"role": "user", "content": "x"}])
    generation = render([{"role": "user", "content": "x"}], generation=True)[len(user_only):]
    body = "{{ if " + "{{ else if ".join(branches) + "{{ end }}"
    stops = [t for t in (tok.eos_token, *getattr(tok, "additional_special_tokens", [])) if t]
    return "{{ range .Messages }}" + body + "{{ end }}" + generation, list(dict.fromkeys(stops))


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

    def _call(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise DeployError(f"Ollama at {self.cfg.host} unreachable: {exc}") from None
        if response.status_code >= 400:
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
        if self.http.head(f"/api/blobs/{digest}").status_code != 200:
            with open(path, "rb") as fh:
                self._call("POST", f"/api/blobs/{digest}", content=fh)
        return digest

    def deploy(self, release: ModelRelease) -> Deployment:
        """Create ``name:v<version>``, verify it answers, then delete the previous version."""
        name = self.cfg.name or release.name
        current = self.store.load(name)
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
            answer = self._call("POST", "/api/generate", json={
                "model": model, "prompt": self.cfg.golden_prompt, "stream": False,
                "options": {"num_predict": self.cfg.golden_max_tokens, "temperature": 0}}).json()["response"]
            check_answer(answer, self.cfg.golden_expect, f"ollama {model}")
        except DeployError as exc:
            if not current or current.details["model"] != model:
                self.http.request("DELETE", "/api/delete", json={"model": model})
            raise DeployError(f"{model} failed its golden prompt; the previous version is untouched: {exc}") \
                from None
        if current and current.details["model"] != model:
            self.http.request("DELETE", "/api/delete", json={"model": current.details["model"]})
        folder = self.root / "deployments" / "ollama" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Modelfile").write_text(modelfile(gguf.name, template, parameters))
        deployment = Deployment(name=name, target="ollama", release=release, endpoint=f"{self.cfg.host}/api",
                                since=now(), previous=current.release if current else None,
                                details={"model": model, "gguf": kind, "digest": digest,
                                         "modelfile": str(folder / "Modelfile"), "golden_answer": answer})
        self.store.save(deployment)
        return deployment

    def status(self, name: str | None = None) -> Deployment | None:
        """The record, with ``details.present`` checked against ``/api/tags`` now."""
        record = self.store.load(name or self.cfg.name or "")
        if record is not None:
            try:
                tags = self.http.get("/api/tags").json()["models"]
                record.details["present"] = any(m["name"] == record.details["model"] for m in tags)
            except (httpx.HTTPError, KeyError, ValueError):
                record.details["present"] = False
        return record

    def _teardown(self, record: Deployment) -> None:
        """Delete the model from Ollama."""
        self._call("DELETE", "/api/delete", json={"model": record.details["model"]})
