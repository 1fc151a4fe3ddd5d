"""/openapi.json tells the truth: schemathesis, every check, against the backend app in-process."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from infra.serving import tools
from infra.serving.app import create_app
from infra.serving.schemas import ChatRequest, CompletionRequest
from infra.serving.settings import ServerSettings
from tasks.data.chat import render_ids
from tasks.engine.engine import Engine, EngineConfig

# hypothesis keeps caches in ./.hypothesis unless told otherwise: keep them in the session's throwaway home
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(os.environ["SLMOPS_HOME"]) / "hypothesis"))
schemathesis = pytest.importorskip("schemathesis")
KEY = "k3y"
ALL_CHECKS = {"not_a_server_error", "status_code_conformance", "content_type_conformance",
              "response_headers_conformance", "response_schema_conformance", "positive_data_acceptance",
              "negative_data_rejection", "missing_required_header", "unsupported_method", "ignored_auth",
              "use_after_free", "ensure_resource_availability"}


@pytest.fixture(scope="module")
def engine(tiny_onnx: Path) -> Iterator[Engine]:
    engine = Engine(tiny_onnx, EngineConfig(max_queue=512))
    yield engine
    engine.close()


@schemathesis.serializer("application/jsonlines")
def _json_lines(_: Any, value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


def test_schemathesis_finds_nothing_undocumented(engine: Engine) -> None:
    """Every operation, every check (all phases, positive and negative data), with the API key configured.

    Two semantic limits cannot be written in JSON Schema, so ``positive_data_acceptance`` is narrowed for
    exactly those requests and no other: a prompt whose rendered tokens leave no room in the context window
    (400 ``context_length_exceeded``: token counts depend on the tokenizer, and cutting the prompt would
    silently answer a different question), and ``max_tokens`` differing from its alias ``max_completion_tokens``
    (JSON Schema cannot compare two properties). The hook re-derives each claim from the request itself, so any
    other rejected valid request still fails. A JSON Lines body is text in which every line gets its own answer,
    errors included, so no body is invalid there: negative cases of that media type are not generated.
    """
    app = create_app(engine, ServerSettings(name="tiny-slm", version="7", api_key=KEY, default_max_tokens=16))
    config = schemathesis.Config.from_dict({
        "seed": 20261122, "auth": {"openapi": {"bearer": {"bearer": KEY}}},
        "generation": {"mode": "all", "max-examples": 60, "database": "none"}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)

    @schema.hook
    def filter_case(_: Any, case: Any) -> bool:
        return not (case.media_type == "application/jsonlines" and case.meta.generation.mode.is_negative)

    @schema.hook
    def filter_failure(_: Any, failure: Any, case: Any, response: Any) -> bool:
        return not (type(failure).__name__ == "RejectedPositiveData" and response.status_code == 400
                    and _semantic_limit(engine, case.body))

    statistic, checks = _run(schema)
    failures = [(label, f.title, f.message) for label, groups in statistic.failures.items()
                for group in groups.values() for f in group.failures]
    print(f"\nschemathesis: {len(statistic.tested_operations)} operations, {statistic.total_cases} test cases, "
          f"{len(failures)} failures, {statistic.filtered_failures} narrowed (semantic limits), "
          f"{statistic.errored_cases} errors")
    assert failures == [] and statistic.errored_cases == 0
    assert len(statistic.tested_operations) == 7
    assert {name for name, _ in checks} >= ALL_CHECKS, "every check ran"
    assert checks[("positive_data_acceptance", "success")] > 100 and checks[("negative_data_rejection", "success")]


def _run(schema: Any) -> tuple[Any, Counter]:
    from schemathesis.engine import events, from_schema
    from schemathesis.engine.statistic import Statistic

    statistic, checks = Statistic(), Counter()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            statistic.on_scenario_finished(event.recorder)
            checks.update((c.name, c.status.value) for nodes in event.recorder.checks.values() for c in nodes)
        elif isinstance(event, events.FatalError | events.NonFatalError):
            raise AssertionError(f"schemathesis could not run: {event}")
    return statistic, checks


def _semantic_limit(engine: Engine, body: Any) -> bool:
    """Whether ``body`` is valid JSON Schema-wise but over a limit only the server can know."""
    if not isinstance(body, dict):
        return False
    if "messages" in body:
        try:
            request = ChatRequest.model_validate(body)
        except ValidationError:  # a rule across fields (a tool turn's tool_call_id, tool_choice among tools…)
            return True
        if tools.mode(request) or (request.response_format and request.response_format.structured):
            return True  # a generated JSON schema the grammar compiler refuses (the 400 names it)
        if None not in (request.max_tokens, request.max_completion_tokens):
            return request.max_tokens != request.max_completion_tokens
        ids = render_ids(engine.tokenizer, [m.as_template_input() for m in request.messages], True)
    else:
        ids = engine.tokenizer(CompletionRequest.model_validate(body).text, add_special_tokens=False)["input_ids"]
    return len(ids) >= engine.context_length
