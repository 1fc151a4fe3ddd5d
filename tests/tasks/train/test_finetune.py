"""LoRA: adapters train while the base stays frozen; merging reloads with identical logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tasks.config import DataConfig, FinetuneConfig, RuntimeConfig
from tasks.data.prepare import encode_split, prepare_data
from tasks.errors import ConfigError, TrainingError
from tasks.inputs import describe_model
from tasks.modeling import load_model, load_tokenizer
from tasks.train.finetune import attach_lora, check_qlora, finetune, merge
from tasks.train.loop import train_loop

CFG = FinetuneConfig(r=4, alpha=8, steps=8, batch_size=8, learning_rate=1e-2, warmup_steps=0, eval_every=4)


def test_lora_trains_adapters_and_freezes_base(tiny_assets: Path) -> None:
    # given a student wrapped with LoRA
    tok = load_tokenizer(str(tiny_assets / "student-qwen2"))
    model = attach_lora(load_model(str(tiny_assets / "student-qwen2")), CFG)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # when trained for a few steps
    train = encode_split(tok, str(tiny_assets / "data" / "train.jsonl"), 96)[:64]
    train_loop(model, train, None, CFG, pad_id=tok.pad_token_id, device=torch.device("cpu"), seed=0, desc="t")
    # then every adapter matrix B moved and no base parameter did
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert {n for n in trainable if "lora_B" in n} <= changed
    assert changed <= trainable


def test_finetune_then_merge_reloads_with_identical_logits(tiny_assets: Path, tmp_path: Path) -> None:
    d = tiny_assets / "data"
    data = prepare_data(DataConfig(train=str(d / "train.jsonl"), validation=str(d / "validation.jsonl")),
                        tmp_path / "data")
    base = describe_model(str(tiny_assets / "student-llama"))
    adapter = finetune(base, data, CFG, 96, RuntimeConfig(), tmp_path / "adapter")
    assert adapter.trainable_parameters < adapter.model.parameters / 2
    merged = merge(base, adapter.model, tmp_path / "merged")
    # the merged folder is plain Hugging Face (no peft config) and matches base+adapter exactly
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    from peft import PeftModel

    ids = torch.tensor([[5, 17, 42, 9, 3, 28]])
    with torch.no_grad():
        reference = PeftModel.from_pretrained(load_model(base.path), adapter.model.path).eval()(ids).logits
        reloaded = load_model(merged.path).eval()(ids).logits
        again = load_model(merged.path).eval()(ids).logits
        base_logits = load_model(base.path).eval()(ids).logits
    torch.testing.assert_close(reloaded, reference, atol=1e-5, rtol=1e-4)
    assert torch.equal(reloaded, again)
    assert not torch.allclose(reloaded, base_logits, atol=1e-4)


def test_unknown_target_module_lists_the_real_ones(tiny_assets: Path) -> None:
    cfg = CFG.model_copy(update={"target_modules": ["query_key_value"]})
    with pytest.raises(ConfigError, match=r"finetune.target_modules .*linear modules: \[.*'q_proj'"):
        attach_lora(load_model(str(tiny_assets / "student-qwen2")), cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_qlora_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(TrainingError, match="finetune.qlora needs a CUDA device"):
        check_qlora(CFG.model_copy(update={"qlora": True}))
