"""docs/configuration.md: generated from the config models, current, and naming every field of every section."""

from __future__ import annotations

import re
from typing import get_args

import pytest
from pydantic import BaseModel

from flows import config_docs
from flows.cli import main
from infra.targets.config import (
    DeployConfig,
    FoundryTargetConfig,
    LocalTargetConfig,
    OllamaTargetConfig,
    SageMakerConfig,
)
from tasks.batch.config import (
    BatchConfig,
    DriftConfig,
    GenerationSettings,
    LocalExecutorConfig,
    OutputChecks,
    SageMakerExecutorConfig,
)
from tasks.config import (
    DataConfig,
    DistillConfig,
    EvalConfig,
    FinetuneConfig,
    GateConfig,
    PipelineConfig,
    QuantizeConfig,
    RuntimeConfig,
    TryItConfig,
)
from tasks.settings import Settings

PIPELINE_SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataConfig, "distill": DistillConfig, "finetune": FinetuneConfig, "quantize": QuantizeConfig,
    "evaluate": EvalConfig, "gate": GateConfig, "runtime": RuntimeConfig, "try_it": TryItConfig,
}
BATCH_SECTIONS: dict[str, type[BaseModel]] = {
    "generation": GenerationSettings, "drift": DriftConfig, "checks": OutputChecks,
}
EXECUTORS = (LocalExecutorConfig, SageMakerExecutorConfig)
TARGETS = (LocalTargetConfig, FoundryTargetConfig, OllamaTargetConfig, SageMakerConfig)


def _is_model(kind: object) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _sections_of(model: type[BaseModel]) -> set[str]:
    """Fields holding a model, or a union of models, rather than a value."""
    return {name for name, field in model.model_fields.items()
            if any(_is_model(kind) for kind in (field.annotation, *get_args(field.annotation)))}


def _expected_rows() -> list[tuple[tuple[str, ...], str]]:
    """(headings the row may sit under, key) for every field of every documented model."""
    rows = [(("Pipeline",), k) for k in PipelineConfig.model_fields if k not in PIPELINE_SECTIONS]
    rows += [((section,), f"{section}.{field}") for section, model in PIPELINE_SECTIONS.items()
             for field in model.model_fields]
    rows += [(("Batch transform",), k) for k in BatchConfig.model_fields if k not in {*BATCH_SECTIONS, "executor"}]
    rows += [((section,), f"{section}.{field}") for section, model in BATCH_SECTIONS.items()
             for field in model.model_fields]
    rows += [((f"executor: {model.model_fields['type'].default}",), f"executor.{field}") for model in EXECUTORS
             for field in model.model_fields]
    for model in TARGETS:
        tag = model.model_fields["target"].default
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):  # its own table
                rows += [((f"{tag}: {name}",), f"{name}.{sub}") for sub in field.annotation.model_fields]
            else:
                rows.append(((tag, "every target"), name))
    rows += [(("Environment",), f"SLMOPS_{field.upper()}") for field in Settings.model_fields]
    return rows


def _rows_by_heading(page: str) -> dict[str, dict[str, str]]:
    """Each heading's table rows, by their key."""
    found: dict[str, dict[str, str]] = {}
    heading = ""
    for line in page.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif match := re.match(r"\| `([^`]+)` \|", line):
            found.setdefault(heading, {})[match.group(1)] = line
    return found


@pytest.fixture(scope="module")
def page() -> str:
    return config_docs.DOC_PATH.read_text()


def test_the_committed_page_is_what_the_generator_writes_now(page: str) -> None:
    # given the page in the checkout, when the generator renders the models as they are now
    rendered = config_docs.render()
    # then they are the same text
    assert page == rendered, (f"{config_docs.DOC_PATH} is out of date with the config models: regenerate it with "
                              f"`.venv/bin/{config_docs.REGENERATE}` and commit the result")


def test_the_section_lists_here_are_every_section_the_models_hold() -> None:
    # a section, executor or target added to the models must be added above, so the next test checks its fields
    assert _sections_of(PipelineConfig) == set(PIPELINE_SECTIONS)
    assert _sections_of(BatchConfig) == {*BATCH_SECTIONS, "executor"}
    assert set(get_args(BatchConfig.model_fields["executor"].annotation)) == set(EXECUTORS)
    assert set(get_args(get_args(DeployConfig)[0])) == set(TARGETS)


@pytest.mark.parametrize(("headings", "key"), _expected_rows(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_field_of_every_section_has_a_row(page: str, headings: tuple[str, ...], key: str) -> None:
    # given a field of a config model, then its section's table has a row for it: key, type, default, description
    rows = [r for h in headings for k, r in _rows_by_heading(page).get(h, {}).items() if k == key]
    assert rows, f"no row for {key} under {' or '.join(headings)} in {config_docs.DOC_PATH}"
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", rows[0])[1:-1]]
    assert len(cells) == 4 and all(cells[:3]), f"{key}: expected key, type, default, description in {rows[0]!r}"


def test_a_field_description_and_default_land_in_its_row(page: str) -> None:
    # given a field whose description and default are known, then both are in its row
    row = next(line for line in page.splitlines() if line.startswith("| `finetune.r` |"))
    assert row == "| `finetune.r` | int, > 0, ≤ 1024 | `8` | LoRA rank. |"


def test_cli_prints_the_page(capsys: pytest.CaptureFixture) -> None:
    # when asked without --write, then the CLI prints exactly the generated page
    assert main(["config", "docs"]) == 0
    assert capsys.readouterr().out == config_docs.render()
