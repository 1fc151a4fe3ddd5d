"""Configuration: YAML + --set overrides validate into PipelineConfig; bad input names the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.cli import main
from tasks.config import load_config
from tasks.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text((REPO / "configs" / "demo.yaml").read_text())
    return path


def test_demo_config_loads_and_overrides_apply(config_file: Path) -> None:
    # given the shipped demo config, when overridden by dotted keys
    cfg = load_config(config_file, ["distill.steps=7", "finetune.target_modules=[q_proj, v_proj]",
                                    "runtime.threads=1"])
    # then values are typed and applied
    assert cfg.distill.steps == 7
    assert cfg.finetune.target_modules == ["q_proj", "v_proj"]
    assert cfg.runtime.threads == 1
    assert cfg.distill.teacher == "demo:teacher"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["distill.temprature=3"], "distill.temprature: unknown key"),
        (["trainer.steps=3"], "trainer: unknown key"),
        (["finetune.r=0"], "finetune.r: Input should be greater than 0"),
        (["finetune.r=abc"], "finetune.r: Input should be a valid integer"),
        (["distill.method=magic"], "distill.method: Input should be 'auto', 'logit' or 'sequence'"),
        (["distill.kl_weight=1.5"], "distill.kl_weight: Input should be less than or equal to 1"),
        (["finetune.dropout=-0.1"], "finetune.dropout: Input should be greater than or equal to 0"),
        (["runtime.device=tpu"], "runtime.device: Input should be 'auto', 'cpu' or 'cuda'"),
        (["name=bad name!"], "name: String should match pattern"),
        (["distill.enabled=false", "finetune.enabled=false"], "nothing to train"),
        (["distill.steps"], "--set expects dotted.key=value"),
        (["distill.steps.x=1"], "--set distill.steps.x: 'steps' is a value, not a section"),
        (["gate.min={exactmatch: 0.5}"], "gate.min: Value error, unknown metric(s) ['exactmatch']; known: perplexity"),
        (["gate.max={latency_ms: 5}"], "gate.max: Value error, unknown metric(s) ['latency_ms']"),
        (["gate.max_degradation={perplexity: 0.1}"],
         "gate.max_degradation: Value error, unknown degradation metric(s) ['perplexity']; known: "
         "perplexity_increase, exact_match_drop"),
        (["gate.vs_champion=[accuracy]"], "gate.vs_champion: Value error, unknown metric(s) ['accuracy']"),
        (["quantize.served=onnx-int8", "quantize.onnx=[int4]"],
         "quantize: Value error, served 'onnx-int8' is not an ONNX artifact this config builds; built and "
         "servable: ['onnx-int4', 'olive-gptq-int4']"),
        # the demo serves the Olive GPTQ build: switching Olive off without choosing another is refused
        (["quantize.olive_gptq=false"],
         "served 'olive-gptq-int4' is not an ONNX artifact this config builds; built and servable: "
         "['onnx-int4', 'onnx-int8', 'onnx-fp32']"),
        (["quantize.served=gguf-Q4_0", "quantize.gguf=[Q4_0]"], "served 'gguf-Q4_0' is not an ONNX artifact"),
        (["quantize.onnx=[]", "quantize.olive_gptq=false"], "built and servable: none (quantize.onnx is empty)"),
        (["quantize.adapter_only=true", "finetune.enabled=false"],
         "quantize.adapter_only registers the LoRA fine-tune alone as '<name>-lora': it needs finetune.enabled"),
    ],
)
def test_invalid_config_names_the_key(config_file: Path, overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(config_file, overrides)
    assert expected in str(err.value)


def test_missing_required_section_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"distill": {"teacher": "a", "student": "b"}}))
    with pytest.raises(ConfigError, match=r"data: Field required"):
        load_config(path)


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_rejects_bad_config_before_training(config_file: Path, capsys: pytest.CaptureFixture) -> None:
    # when the train command gets a misspelt key, it exits non-zero naming it, before any flow runs
    code = main(["train", "--config", str(config_file), "--set", "finetune.rank=4"])
    err = capsys.readouterr().err
    assert code == 2
    assert "finetune.rank: unknown key" in err
    assert "Traceback" not in err


def test_cli_config_check_prints_resolved(config_file: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "check", "--config", str(config_file), "--set", "finetune.alpha=64"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["finetune"]["alpha"] == 64
