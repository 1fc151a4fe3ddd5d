"""Multi-LoRA builds: one int4 base with LoRA inputs answers like the single-adapter build of each adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import QuantizeConfig
from tasks.engine.sampling import Sampling
from tasks.engine.static_batch import OgModel, next_tokens, start_batch
from tasks.errors import QuantizeError
from tasks.inputs import describe_model
from tasks.quantize.adapters import (
    add_adapter,
    lora_inputs,
    peft_lora_weights,
    with_adapter_options,
)
from tasks.quantize.onnx import build_onnx, quantized_matmuls
from tasks.served_folder import adapter_files

CFG = QuantizeConfig(int4_block_size=16)
PROMPTS = [[5, 40, 41, 42, 43, 44], [7, 8, 9, 60, 61], [100, 101, 102, 103, 104, 105, 106, 107]]


def greedy(model: OgModel, adapter: str | None = None, steps: int = 12) -> list[list[int]]:
    """Every prompt's first ``steps`` greedy tokens (end-of-sequence included: this is about the numbers)."""
    generator = start_batch(model, PROMPTS, steps, Sampling(), adapter)
    rows: list[list[int]] = [[] for _ in PROMPTS]
    for tokens in next_tokens(generator):
        for row, token in zip(rows, tokens, strict=True):
            row.append(int(token))
    return rows


def test_each_adapter_answers_as_its_own_single_adapter_build_and_the_base_as_the_plain_build(
        multi_lora: dict[str, Path], tmp_path: Path) -> None:
    served = OgModel(multi_lora["served"], threads=2)
    assert sorted(adapter_files(multi_lora["served"])) == ["alpha", "beta"]
    inputs = lora_inputs(multi_lora["served"])
    # q/v/o/down of 2 layers, A and B each; the rank is free so beta's r=4 fits alpha's r=8 branches
    assert len(inputs) == 16 and all("lora_r" in shape for shape in inputs.values())
    # the base weights are int4, the LoRA branch stays float
    assert quantized_matmuls(multi_lora["served"]) and not [
        m for m in quantized_matmuls(multi_lora["served"]) if "lora" in m["name"]]

    base = describe_model(str(multi_lora["base"]))
    plain = OgModel(build_onnx(base, "int4", CFG, tmp_path / "plain").path, threads=2)
    assert greedy(served) == greedy(plain), "no adapter: exactly the base model"
    answers = {None: greedy(served)}
    for name in ("alpha", "beta"):
        # the reference: the adapter's own build, its LoRA branch baked in as constants
        baked = build_onnx(base, "int4", CFG, tmp_path / name,
                           with_adapter_options(base, describe_model(str(multi_lora[name]))))
        answers[name] = greedy(served, name)
        assert answers[name] == greedy(OgModel(baked.path, threads=2)), f"{name}: as its own build"
    assert len({str(a) for a in answers.values()}) == 3, "base, alpha and beta each answer differently"
    assert greedy(served) == answers[None], "activating adapters leaves the base untouched"


def test_an_unknown_adapter_name_says_which_exist(multi_lora: dict[str, Path]) -> None:
    with pytest.raises(KeyError, match=r"unknown adapter 'gamma'.*\['alpha', 'beta'\]"):
        start_batch(OgModel(multi_lora["served"], threads=2), PROMPTS, 4, Sampling(), "gamma")


def test_an_adapter_of_projections_the_base_lacks_is_refused_and_nothing_is_added(
        multi_lora: dict[str, Path]) -> None:
    before = sorted(p.name for p in (multi_lora["served"] / "adapters").iterdir())
    base = describe_model(str(multi_lora["base"]))
    with pytest.raises(QuantizeError, match=r"adapter 'wide' .* adapts projections .*mlp\.gate_proj"):
        add_adapter(multi_lora["served"], base, "wide", describe_model(str(multi_lora["wide"])), "int4", CFG)
    with pytest.raises(QuantizeError, match="adapter name '../x'"):
        add_adapter(multi_lora["served"], base, "../x", describe_model(str(multi_lora["beta"])), "int4", CFG)
    assert sorted(p.name for p in (multi_lora["served"] / "adapters").iterdir()) == before
    assert not [p for p in multi_lora["served"].parent.iterdir() if p.name.startswith("adapter-")], "no leftovers"


def test_weights_read_from_the_peft_file_are_the_builders_bit_for_bit(multi_lora: dict[str, Path]) -> None:
    import numpy as np
    import onnxruntime as ort

    # alpha's file came from the builder and Olive's ExtractAdapters (it made the base); further adapters are
    # read straight from their peft files, which must give exactly the same tensors under the same names
    read = ort.AdapterFormat.read_adapter(str(multi_lora["served"] / "adapters" / "alpha.onnx_adapter"))
    built = {k: v.numpy().copy() for k, v in read.get_parameters().items()}  # views into ``read``: keep it alive
    direct = peft_lora_weights(describe_model(str(multi_lora["alpha"])), lora_inputs(multi_lora["served"]))
    assert direct is not None and sorted(direct) == sorted(built)
    assert all(np.array_equal(direct[k], built[k]) for k in built)
