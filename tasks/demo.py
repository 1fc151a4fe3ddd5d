"""Demo assets made locally and deterministically from a seed: tokenizer, data, teacher, students.

Nothing comes from a hub. Configs refer to these assets as ``demo:<name>`` (``demo:teacher``,
``demo:student-qwen2``, ``demo:data/train``…); ``resolve_ref`` makes them on first use.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field

from tasks.config import TrainLoopConfig
from tasks.data.demo_families import as_chat, make_examples
from tasks.data.prepare import encode_split
from tasks.errors import ModelError
from tasks.modeling import count_parameters, load_tokenizer
from tasks.settings import get_settings
from tasks.train.loop import train_loop

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class ModelShape(BaseModel, extra="forbid"):
    """Dimensions of a tiny causal LM."""

    architecture: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = Field(192, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(512, gt=0)
    max_positions: int = Field(256, gt=0)


class DemoSpec(BaseModel, extra="forbid"):
    """Everything that determines the demo assets; a change makes a new asset folder."""

    seed: int = 0
    vocab_size: int = 400
    other_vocab_size: int = 320
    teacher: ModelShape = Field(default_factory=lambda: ModelShape(
        architecture="llama", hidden_size=256, layers=2, heads=4, kv_heads=2, intermediate_size=768))
    student: ModelShape = Field(default_factory=lambda: ModelShape(
        architecture="qwen2", hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=192))
    teacher_training: TrainLoopConfig = Field(default_factory=lambda: TrainLoopConfig(
        steps=1000, batch_size=32, learning_rate=3e-3, warmup_steps=30, eval_every=100))
    max_length: int = 96

    def key(self) -> str:
        """Short content key for the asset folder."""
        import hashlib

        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def make_dataset(out: Path, seed: int) -> dict[str, Path]:
    """Write train/validation/test chat JSONL files; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in make_examples(seed).items():
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(as_chat(p, a, system=i % 10 == 0)) + "\n"
                                        for i, (_, p, a) in enumerate(rows)))
    return paths


def make_tokenizer(train_file: Path, out: Path, vocab_size: int) -> Path:
    """Train a byte-level BPE tokenizer on the rendered training conversations; save it with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for line in train_file.read_text().splitlines():
        msgs = json.loads(line)["messages"]
        texts.append("".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return out


def make_model(shape: ModelShape, tokenizer_dir: Path, out: Path, seed: int) -> Path:
    """Save a randomly initialised Llama or Qwen2 model (with its tokenizer) under ``out``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tok = load_tokenizer(str(tokenizer_dir))
    common = dict(vocab_size=len(tok), hidden_size=shape.hidden_size, num_hidden_layers=shape.layers,
                  num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                  intermediate_size=shape.intermediate_size, max_position_embeddings=shape.max_positions,
                  tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                  bos_token_id=None)
    config = LlamaConfig(**common) if shape.architecture == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_lora_adapter(model_dir: Path, out: Path, targets: list[str], rank: int, seed: int,
                      scale: float = 0.5) -> Path:
    """Save a random peft LoRA adapter for ``model_dir`` under ``out`` (tests and benchmarks of multi-LoRA
    serving): A random, B random times ``scale``, so each adapter answers differently from the base and the rest."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.mul_(scale)
    model.save_pretrained(out)
    return out


def train_teacher(model_dir: Path, data: dict[str, Path], spec: DemoSpec) -> dict[str, float]:
    """Train the teacher in place on the train split (cross-entropy on answers)."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    train = encode_split(tok, str(data["train"]), spec.max_length)
    val = encode_split(tok, str(data["validation"]), spec.max_length)
    start = time.perf_counter()
    losses, val_losses = train_loop(model, train, val, spec.teacher_training, pad_id=tok.pad_token_id,
                                    device=torch.device("cpu"), seed=spec.seed, desc="demo teacher")
    model.save_pretrained(model_dir)
    return {"seconds": time.perf_counter() - start, "final_loss": losses[-1], "val_loss": val_losses[-1][1],
            "parameters": count_parameters(model)}


TINY_SPEC = DemoSpec(
    seed=1, vocab_size=320, other_vocab_size=300,
    teacher=ModelShape(architecture="llama", hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128,
                       max_positions=128),
    # hidden 64: k_quant int4 with the demo's block size 32 needs an even number of blocks per input dimension
    student=ModelShape(architecture="qwen2", hidden_size=64, layers=1, heads=2, kv_heads=1, intermediate_size=128,
                       max_positions=128),
    teacher_training=TrainLoopConfig(steps=40, batch_size=16, learning_rate=5e-3, warmup_steps=5, eval_every=20),
)
"""Seconds-sized demo assets (``SLMOPS_DEMO_SIZE=tiny``): for trying the platform and for tests, not for quality."""


def default_spec() -> DemoSpec:
    """The demo spec ``SLMOPS_DEMO_SIZE`` asks for: ``full`` (default) or ``tiny``."""
    return TINY_SPEC if get_settings().demo_size == "tiny" else DemoSpec()


def ensure_demo_assets(root: Path, spec: DemoSpec | None = None) -> Path:
    """Make the demo assets under ``root/demo/<key>`` unless they already exist; return that folder."""
    spec = spec or default_spec()
    folder = Path(root) / "demo" / spec.key()
    marker = folder / "assets.json"
    if marker.is_file():
        return folder
    log.info("making demo assets in %s (once; a few minutes on 2 CPU cores)", folder)
    data = make_dataset(folder / "data", spec.seed)
    tokenizer = make_tokenizer(data["train"], folder / "tokenizer", spec.vocab_size)
    other = make_tokenizer(data["train"], folder / "tokenizer-other", spec.other_vocab_size)
    teacher = make_model(spec.teacher, tokenizer, folder / "teacher", spec.seed)
    stats = train_teacher(teacher, data, spec)
    for arch in ("qwen2", "llama"):
        shape = spec.student.model_copy(update={"architecture": arch})
        make_model(shape, tokenizer, folder / f"student-{arch}", spec.seed + 1)
    make_model(spec.student, other, folder / "student-qwen2-othertok", spec.seed + 1)
    marker.write_text(json.dumps({"spec": spec.model_dump(), "teacher": stats}, indent=2))
    return folder


DEMO_NAMES = ("teacher", "student-qwen2", "student-llama", "student-qwen2-othertok", "tokenizer",
              "data/train", "data/validation", "data/test")


def resolve_ref(ref: str, root: Path, spec: DemoSpec | None = None) -> str:
    """Map ``demo:<name>`` to a local path (making the assets if absent); other refs pass through."""
    if not ref.startswith("demo:"):
        return ref
    name = ref[len("demo:"):]
    if name not in DEMO_NAMES:
        raise ModelError(f"unknown demo asset {ref!r}; known: {', '.join('demo:' + n for n in DEMO_NAMES)}")
    folder = ensure_demo_assets(root, spec)
    return str(folder / (f"{name}.jsonl" if name.startswith("data/") else name))
