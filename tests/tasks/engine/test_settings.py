"""One statement of the engine's settings (infra/serving/settings.py): the server's command line, the local
target's argv and the SageMaker container's environment all carry EngineConfig's fields, and read back the same."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from infra.serving.__main__ import add_options
from infra.targets.config import LocalTargetConfig, SageMakerConfig
from tasks.engine.settings import EngineConfig, engine_argv, engine_env, engine_from_env

CHANGED = EngineConfig(scheduler="batches", max_batch_size=3, max_queue=7, batch_window_ms=1.5, threads=1,
                       int8_steps="off", max_running_batches=2)


def test_the_argv_parses_back_through_the_server_s_own_options() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, EngineConfig)
    assert EngineConfig(**vars(parser.parse_args(engine_argv(CHANGED)))) == CHANGED
    assert EngineConfig(**vars(parser.parse_args([]))) == EngineConfig()


def test_the_environment_reads_back_and_absent_variables_keep_defaults() -> None:
    assert engine_from_env(engine_env(CHANGED)) == CHANGED
    assert engine_from_env({"SLMOPS_ENGINE_MAX_QUEUE": "9", "OTHER": "x"}) == EngineConfig(max_queue=9)
    with pytest.raises(ValidationError, match="max_queue"):
        engine_from_env({"SLMOPS_ENGINE_MAX_QUEUE": "0"})


def test_targets_take_the_engine_s_own_model() -> None:
    assert LocalTargetConfig(engine={"max_batch_size": 3}).engine == EngineConfig(max_batch_size=3)
    assert SageMakerConfig(engine=CHANGED.model_dump()).engine == CHANGED
    legacy = LocalTargetConfig.model_validate({"scheduler": "batches", "max_queue": 5})  # configs before engine:
    assert legacy.engine == EngineConfig(scheduler="batches", max_queue=5)
    with pytest.raises(ValidationError, match="both at the top level and under engine"):
        LocalTargetConfig.model_validate({"max_queue": 5, "engine": {"max_queue": 6}})
    with pytest.raises(ValidationError, match="max_batch_size"):
        LocalTargetConfig(engine={"max_batch_size": 0})
