"""prefect.yaml stays in step with the flows: every entrypoint imports and its parameters validate."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from prefect.exceptions import ParameterTypeError

DEPLOYMENTS = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_parameters_validate_against_the_flow(deployment: dict) -> None:
    module, _, attr = deployment["entrypoint"].partition(":")
    flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
    validated = flow.validate_parameters(deployment["parameters"])
    assert set(validated) == set(deployment["parameters"])


def test_a_bad_parameter_is_rejected_by_the_same_validation() -> None:
    pipeline = next(d for d in DEPLOYMENTS if d["name"] == "demo-pipeline")
    flow = importlib.import_module("flows.pipeline").slm_pipeline
    bad = {"config": {**pipeline["parameters"]["config"], "gate": {"min": {"exact_match": "high"}}}}
    with pytest.raises(ParameterTypeError, match="exact_match"):
        flow.validate_parameters(bad)
