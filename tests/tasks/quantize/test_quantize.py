"""Quantization: ORT GenAI builder precisions, the Olive GPTQ path, and GGUF through llama.cpp."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from tasks.config import QuantizeConfig, load_config
from tasks.data.chat import prompt_ids
from tasks.data.prepare import encode_split, read_prepared
from tasks.errors import ConfigError, QuantizeError
from tasks.evaluate.runners import HfRunner, OnnxRunner
from tasks.inputs import describe_model
from tasks.modeling import load_tokenizer
from tasks.quantize.onnx import build_onnx, quantized_matmuls

CFG = QuantizeConfig(int4_block_size=16, olive_calibration_samples=16)


@pytest.fixture(scope="module")
def teacher(tiny_assets: Path):
    return describe_model(str(tiny_assets / "teacher"))


@pytest.fixture(scope="module")
def examples(tiny_assets: Path):
    tok = load_tokenizer(str(tiny_assets / "teacher"))
    return tok, encode_split(tok, str(tiny_assets / "data" / "test.jsonl"), 96)[:12]


def _ppl(runner, examples) -> float:
    total = count = 0
    for ids, labels in examples:
        nll, n = runner.nll(ids, labels)
        total, count = total + nll, count + n
    return math.exp(total / count)


@pytest.fixture(scope="module")
def onnx_models(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return {p: build_onnx(teacher, p, CFG, out / p) for p in ("fp32", "int8", "int4")}


def test_onnx_fp32_matches_transformers_and_int_precisions_stay_close(onnx_models, teacher, examples) -> None:
    _, data = examples
    hf = _ppl(HfRunner(teacher.path), data)
    ppl = {p: _ppl(OnnxRunner(a.path), data) for p, a in onnx_models.items()}
    assert ppl["fp32"] == pytest.approx(hf, rel=1e-4)
    assert ppl["int8"] == pytest.approx(hf, rel=0.05)
    assert ppl["int4"] == pytest.approx(hf, rel=0.25)
    sizes = {p: a.size_bytes for p, a in onnx_models.items()}
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"]


def test_int4_settings_take_effect_in_the_built_model(onnx_models, teacher, tmp_path: Path) -> None:
    # the builder silently ignores option names it does not know: read what it really wrote
    assert {(m["bits"], m["block_size"]) for m in quantized_matmuls(onnx_models["int4"].path)} == {(4, 16)}
    wide = build_onnx(teacher, "int4", QuantizeConfig(int4_block_size=128, int4_algorithm="rtn"), tmp_path / "b128")
    assert {m["block_size"] for m in quantized_matmuls(wide.path)} == {128}
    last = build_onnx(teacher, "int4", QuantizeConfig(int4_block_size=16, int4_algorithm="k_quant_last"),
                      tmp_path / "last")
    int8 = [m["name"] for m in quantized_matmuls(last.path) if m["bits"] == 8]
    assert len(int8) == 1 and "lm_head" in int8[0], int8
    assert {m["accuracy_level"] for m in quantized_matmuls(onnx_models["int4"].path)} == {4}, "int8 activations"
    fp32_compute = build_onnx(teacher, "int4", QuantizeConfig(int4_block_size=16, int4_accuracy_level=1),
                              tmp_path / "acc1")
    assert {m["accuracy_level"] for m in quantized_matmuls(fp32_compute.path)} == {1}
    assert quantized_matmuls(onnx_models["int8"].path) == [] or all(
        m["bits"] == 8 for m in quantized_matmuls(onnx_models["int8"].path))


def test_a_k_quant_block_size_the_runtime_cannot_pack_is_refused_before_building(teacher, tmp_path: Path) -> None:
    # one block of 256 covers the tiny teacher's hidden size: an odd count, which onnxruntime's k_quant cannot pack
    with pytest.raises(QuantizeError, match=r"even number of blocks.*hidden_size=\d+ → 1 block"):
        build_onnx(teacher, "int4", QuantizeConfig(int4_block_size=256), tmp_path / "odd")
    assert not (tmp_path / "odd.log").exists(), "refused before the builder ran"


def test_bad_quantize_settings_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: {train: x}\ndistill: {teacher: a, student: b}\n")
    with pytest.raises(ConfigError, match="quantize.int4_block_size: Input should be 16, 32, 64, 128 or 256"):
        load_config(path, ["quantize.int4_block_size=48"])
    with pytest.raises(ConfigError, match="quantize.onnx.0: Input should be 'int4', 'int8' or 'fp32'"):
        load_config(path, ["quantize.onnx=[int3]"])


def test_olive_gptq_yields_a_model_that_loads_and_generates(teacher, tiny_assets: Path, tmp_path: Path,
                                                            examples) -> None:
    from tasks.quantize.olive import build_olive_gptq

    artifact = build_olive_gptq(teacher, str(tiny_assets / "data" / "train.jsonl"), CFG, 96, tmp_path / "olive")
    # the GPTQ group size reached the built model: every MatMul is int4 in blocks of 16 (read back)
    assert {(m["bits"], m["block_size"]) for m in quantized_matmuls(Path(artifact.path))} == {(4, 16)}
    runner = OnnxRunner(artifact.path)
    tok, data = examples
    conv = read_prepared(str(tiny_assets / "data" / "test.jsonl"))[0]
    gen = runner.generate(prompt_ids(tok, conv), 6, min_new_tokens=6)
    assert len(gen.tokens) == 6
    assert math.isfinite(_ppl(runner, data))


def test_olive_gptq_with_general_text_keeps_the_sensitive_down_projections_in_int8(teacher, tiny_assets: Path,
                                                                                  tmp_path: Path) -> None:
    from tasks.quantize.olive import build_olive_gptq

    # given GPTQ calibrated on train rows mixed with Python's reference text, with llama.cpp's choice of sensitive
    # layers kept in int8 (of the tiny teacher's 2 layers, layer 0: the first eighth)
    cfg = CFG.model_copy(update={"olive_calibration_text": "python-docs", "olive_mixed_precision": "k_quant_down"})
    artifact = build_olive_gptq(teacher, str(tiny_assets / "data" / "train.jsonl"), cfg, 96, tmp_path / "olive")
    workflow = (tmp_path / "olive-workflow.json").read_text()
    assert '"text": "python-docs"' in workflow and '"text_samples": 8' in workflow
    # then the built model has that layer's down projection in 8 bits and every other MatMul in 4 (read back)
    bits = {m["name"]: m["bits"] for m in quantized_matmuls(Path(artifact.path))}
    assert bits.pop("/model/layers.0/mlp/down_proj/MatMulNBits") == 8
    assert "/model/layers.1/mlp/down_proj/MatMulNBits" in bits and set(bits.values()) == {4}
    tok = load_tokenizer(teacher.path)
    conv = read_prepared(str(tiny_assets / "data" / "test.jsonl"))[0]
    assert len(OnnxRunner(artifact.path).generate(prompt_ids(tok, conv), 4, min_new_tokens=4).tokens) == 4


def test_calibration_rows_are_never_cut_a_too_long_row_fails_the_olive_run(teacher, tiny_assets: Path,
                                                                          tmp_path: Path) -> None:
    from tasks.errors import QuantizeError
    from tasks.quantize.olive import build_olive_gptq

    # given calibration rows longer than data.max_length (8 tokens), Olive's run fails with its log tail naming
    # the row, instead of calibrating on rows cut short
    with pytest.raises(QuantizeError, match=r"Olive GPTQ workflow failed \(exit 1\): "
                       r"ValueError: \S+train.jsonl:1: \d+ tokens > data.max_length 8 \(full log: "):
        build_olive_gptq(teacher, str(tiny_assets / "data" / "train.jsonl"), CFG, 8, tmp_path / "olive")


needs_llama_cpp = pytest.mark.skipif(
    not os.environ.get("CI") and __import__("importlib").util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python (the gguf extra) is not installed here; CI installs it")


@needs_llama_cpp
def test_gguf_f16_greedy_tokens_match_transformers(teacher, tiny_assets: Path, tmp_path: Path, examples) -> None:
    from tasks.evaluate.runners import GgufRunner
    from tasks.quantize.gguf import build_gguf

    artifacts = {a.name: a for a in build_gguf(teacher, ["f16", "q8_0", "Q4_0", "Q4_K_M"], tmp_path)}
    assert set(artifacts) == {"gguf-f16", "gguf-q8_0", "gguf-Q4_0", "gguf-Q4_K_M"}
    tok, data = examples
    hf, f16 = HfRunner(teacher.path), GgufRunner(artifacts["gguf-f16"].path)
    for conv in read_prepared(str(tiny_assets / "data" / "test.jsonl"))[:6]:
        prompt = prompt_ids(tok, conv)
        assert f16.generate(prompt, 10).tokens == hf.generate(prompt, 10).tokens
    hf_ppl = _ppl(hf, data)
    assert _ppl(f16, data) == pytest.approx(hf_ppl, rel=0.01)
    for name in ("gguf-q8_0", "gguf-Q4_0", "gguf-Q4_K_M"):
        assert _ppl(GgufRunner(artifacts[name].path), data) == pytest.approx(hf_ppl, rel=0.5)
