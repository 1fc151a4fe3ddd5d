"""``docs/configuration.md``, generated from the config models' field descriptions (``slmops config docs --write``)."""

from __future__ import annotations

import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from infra.platform.bindings import FleetBinding
from infra.targets.config import DeployConfig
from tasks.batch.config import BatchConfig
from tasks.config import PipelineConfig
from tasks.settings import Settings

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
REGENERATE = "slmops config docs --write"

INTRO = f"""\
# Configuration

<!-- Generated from the pydantic models by `{REGENERATE}`; edit the field descriptions, not this file. -->

Every setting below is a field of a pydantic model with a default and a description. The same models validate a
YAML file, `--set dotted.key=value` overrides (values are YAML scalars: `3`, `true`, `[a, b]`, `null`) and the
Prefect UI form of each deployment. A misspelt key or a bad value is an error that names the key, before any
work starts:

```console
$ slmops train --config configs/demo.yaml --set finetune.rank=4
error: invalid configuration in configs/demo.yaml:
  finetune.rank: unknown key (not a field of this section)
$ slmops config check --config configs/demo.yaml --set distill.steps=100   # print the resolved config
```

Model and data references may be local paths, hub ids (`from_pretrained`), `s3://bucket/key` URIs for data,
`gguf:PATH` (a GGUF file, or a path inside an installed package) and `ollama:NAME[:TAG]` for models (dequantized
once into a Hugging Face folder, cached by the GGUF's sha256), or `demo:<asset>` (`demo:teacher`,
`demo:student-qwen2`, `demo:student-llama`, `demo:student-qwen2-othertok`, `demo:data/train|validation|test`),
made locally on first use.

- [Pipeline](#pipeline): `slmops run`, `train` and `demo` (`--config FILE`, `--set`), the `slm_pipeline` and
  `train` flows.
- [Batch transform](#batch-transform): `slmops batch --set`, the `config` parameter of `batch_transform`.
- [Deploy targets](#deploy-targets): `slmops deploy --target T --set`, and `target:` of a binding in
  `configs/bindings.yaml`.
- [Fleets](#fleets): `fleets:` in `configs/bindings.yaml` (waves, thresholds, budget, variants per class).
- [Environment](#environment): `SLMOPS_*` variables and the others slmops reads.
"""

OTHER_ENVIRONMENT = (  # read by MLflow, Prefect, boto3 and the ollama: import, not by Settings
    ("`MLFLOW_TRACKING_URI`", "the platform's server when `slmops up` runs, else `sqlite:///$SLMOPS_HOME/mlflow.db`",
     "Use another MLflow server."),
    ("`PREFECT_API_URL`", "the platform's server when `slmops up` runs, else an ephemeral server",
     "Use another Prefect server."),
    ("`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_DEFAULT_REGION`", "boto3's",
     "S3 data, the sagemaker target and executor (boto3 reads them)."),
    ("`OLLAMA_MODELS`", "Ollama's store", "Where `ollama:NAME[:TAG]` references are looked up."),
)


@dataclass(frozen=True)
class Section:
    """One table: a heading (none for a group's top-level keys), the paragraph above it, its rows."""

    title: str
    text: str
    rows: list[tuple[str, FieldInfo]]
    key_name: str = "key"


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _union_models(annotation: Any) -> list[type[BaseModel]]:
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    members = list(get_args(annotation)) if get_origin(annotation) in (Union, types.UnionType) else []
    return members if members and all(_is_model(m) for m in members) else []


def _doc(model: type[BaseModel]) -> str:
    """The model's docstring on one line, and its class name for readers of the code."""
    return f"`{model.__name__}`: {' '.join((model.__doc__ or '').split())}"


def _tag(model: type[BaseModel]) -> tuple[str, Any]:
    """The one-value ``Literal`` field that picks ``model`` out of a discriminated union, and its value."""
    name = next(n for n, f in model.model_fields.items() if get_origin(f.annotation) is Literal)
    return name, model.model_fields[name].default


def model_sections(model: type[BaseModel], prefix: str = "", title: str | None = None,
                   text: str = "") -> Iterator[Section]:
    """``model``'s own keys under ``prefix``, then a section per nested model (or union member), depth first."""
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if _is_model(field.annotation):
            note = " Required section." if field.is_required() else ""
            nested.append(model_sections(field.annotation, key, text=_doc(field.annotation) + note))
        elif members := _union_models(field.annotation):
            for member in members:
                tag, value = _tag(member)
                nested.append(model_sections(member, key, f"{key}: {value}",
                                             f"{_doc(member)} Chosen by `{key}.{tag}: {value}`."))
        else:
            rows.append((key, field))
    yield Section(prefix if title is None else title, text or _doc(model), rows)
    for sub in nested:
        yield from sub


def target_sections() -> Iterator[Section]:
    """The options every target shares, then each target's own."""
    targets = _union_models(DeployConfig)
    shared = set.intersection(*(set(t.model_fields) for t in targets)) - {"target"}
    first = targets[0].model_fields
    yield Section("every target", "Options of every target.", [(n, f) for n, f in first.items() if n in shared])
    for target in targets:
        tag = str(_tag(target)[1])
        own = [(n, f) for n, f in target.model_fields.items() if n not in shared]
        yield Section(tag, _doc(target), [(n, f) for n, f in own if not _is_model(f.annotation)])
        for n, f in own:  # a nested model (the serving engine's settings) as its own table of dotted keys
            if _is_model(f.annotation):
                yield from model_sections(f.annotation, n, f"{tag}: {n}", _doc(f.annotation))


def environment_section() -> Section:
    """``Settings``' fields as the variables that set them."""
    prefix = Settings.model_config["env_prefix"]
    return Section("", f"{_doc(Settings)} Read from `{prefix}*` variables (pydantic-settings).",
                   [(f"{prefix}{n.upper()}", f) for n, f in Settings.model_fields.items()], "variable")


def type_text(annotation: Any) -> str:
    """A field's type as the YAML a user writes: ``int``, ``auto / cpu``, ``list of str``, ``float or null``."""
    if annotation is type(None):
        return "null"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_text(args[0])
    if origin is Literal:
        return " / ".join(_code(_value(a)) for a in args)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(type_text(a) for a in rest)
        return f"{text} or null" if len(rest) < len(args) else text
    if origin is list:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"map of {type_text(args[0])} to {type_text(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = ((at.Gt, "gt", "> {}"), (at.Ge, "ge", "≥ {}"), (at.Lt, "lt", "< {}"), (at.Le, "le", "≤ {}"),
           (at.MinLen, "min_length", "at least {} long"), (at.MaxLen, "max_length", "at most {} long"),
           (at.MultipleOf, "multiple_of", "multiple of {}"))


def constraints(field: FieldInfo) -> list[str]:
    """The field's bounds and pattern as markdown (``> 0``, ``≤ 1``, ``matches `^ml\\.` ``)."""
    out = []
    for item in field.metadata:
        for kind, attr, text in _BOUNDS:
            if isinstance(item, kind):
                out.append(_cell(text.format(getattr(item, attr))))
        if getattr(item, "pattern", None):
            out.append(f"matches {_code(item.pattern)}")
    return out


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path | str):
        return str(value) if str(value) else '""'
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    if isinstance(value, list | dict):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return str(value)


def default_text(field: FieldInfo) -> str:
    """The default as YAML, or *required*."""
    if field.default_factory is not None:
        return _code(_value(field.default_factory()))
    if field.default is PydanticUndefined:
        return "required"
    return _code(_value(field.default))


def _cell(prose: str) -> str:
    """Prose for a table cell: pipes, tags and emphasis characters escaped."""
    return prose.replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")


def _code(text: str) -> str:
    """A code span for a table cell: only pipes need escaping there (GFM splits cells before inline parsing)."""
    return f"`{text.replace('|', chr(92) + '|')}`"


def description_text(field: FieldInfo) -> str:
    """The field's description; a one-value ``Literal`` without one is the tag that picks its section."""
    if field.description:
        return _cell(field.description)
    if get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1:
        return "Selects this section."
    return ""


def row(key: str, field: FieldInfo) -> str:
    """One table row: key, type (with its bounds), default, description."""
    kind = ", ".join([type_text(field.annotation), *constraints(field)])
    return f"| {_code(key)} | {kind} | {default_text(field)} | {description_text(field)} |"


def section_text(section: Section) -> str:
    """A section as markdown: its heading, its paragraph and its table."""
    head = [f"### {section.title}", ""] if section.title else []
    rows = [row(key, field) for key, field in section.rows]
    header = f"| {section.key_name} | type | default | description |"
    return "\n".join([*head, section.text, "", header, "|---|---|---|---|", *rows])


def groups() -> list[tuple[str, list[Section]]]:
    """The page's parts, each a heading and its sections."""
    return [("Pipeline", list(model_sections(PipelineConfig))),
            ("Batch transform", list(model_sections(BatchConfig))),
            ("Deploy targets", list(target_sections())),
            ("Fleets", list(model_sections(FleetBinding, "fleets[]"))),
            ("Environment", [environment_section()])]


GROUP_TEXT = {"Deploy targets": "`--target` picks the table; every option is a `--set KEY=VALUE`.",
              "Fleets": "Each entry of `fleets:` in `configs/bindings.yaml` ([fleets](fleets.md))."}


def render() -> str:
    """The whole page: the intro, then every section's table."""
    parts = [INTRO]
    for title, found in groups():
        parts.append(f"## {title}\n")
        if title in GROUP_TEXT:
            parts.append(GROUP_TEXT[title] + "\n")
        parts.extend(section_text(s) + "\n" for s in found)
    parts.append("Read besides these:\n\n| variable | default | description |\n|---|---|---|\n"
                 + "".join(f"| {name} | {default} | {text} |\n" for name, default, text in OTHER_ENVIRONMENT))
    return "\n".join(parts).rstrip() + "\n"


def write(path: Path = DOC_PATH) -> Path:
    """Write the page to ``path`` (default: the checkout's docs/configuration.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    return path
