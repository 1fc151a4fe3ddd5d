"""A generated model card in markdown."""

from __future__ import annotations

from tasks.config import PipelineConfig
from tasks.evaluate.gate import GateDecision
from tasks.evaluate.report import markdown
from tasks.evaluate.score import EvalReport
from tasks.records import Artifact, PreparedData


def imported(lineage: dict[str, str]) -> str:
    """Card lines for models imported from GGUF (their file digest and quant type), empty otherwise."""
    lines = [f"- {role.replace('_', ' ')} imported from GGUF {lineage[role + '_gguf_quant']}, sha256 "
             f"`{lineage[role + '_gguf_sha256']}`\n" for role in ("teacher", "base_model")
             if role + "_gguf_sha256" in lineage]
    return "".join(lines)


def model_card(name: str, config: PipelineConfig, data: PreparedData, artifacts: list[Artifact],
               report: EvalReport, decision: GateDecision, lineage: dict[str, str]) -> str:
    """Data, training, quantization, evaluation, gate decision and limitations of one model version."""
    d, f, q = config.distill, config.finetune, config.quantize
    built = "\n".join(f"- `{a.name}` ({a.kind}, {a.size_bytes / 2**20:.2f} MB, sha256 `{a.digest[:12]}`)"
                      for a in artifacts)
    rows = ", ".join(f"{k}: {v}" for k, v in data.rows.items())
    return f"""# {name}

## Data
- splits: {rows}
- sources: {", ".join(f"{k}=`{v}`" for k, v in data.sources.items())}
- content digest: `{data.digest}`

## Training
- teacher: `{lineage.get("teacher", d.teacher)}`; student base: `{lineage.get("base_model", d.student)}`
{imported(lineage)}- distillation: {f"method {d.method}, T={d.temperature}, KL weight {d.kl_weight}, {d.steps} "
                                    "steps" if d.enabled else "off"}
- LoRA: {f"r={f.r}, alpha={f.alpha}, dropout={f.dropout}, modules {f.target_modules}, {f.steps} steps"
         if f.enabled else "off"}; merged into plain weights
- git commit: `{lineage.get("git_commit", "unknown")}`; parent version: {lineage.get("parent_version", "none")}

## Quantization
Served artifact: `{q.served}` (int4 block size {q.int4_block_size}, {q.int4_algorithm}).
{built}

## Evaluation
Scored in one run on the same data (test split: exact match and answer perplexity; held-out text perplexity;
latency on this machine's CPU).

{markdown(report)}

## Gate: {"PASSED" if decision.passed else "FAILED"}
{chr(10).join("- " + r for r in decision.reasons)}

## Limitations
- Trained and evaluated only on the data above; exact match measures these task families, nothing broader.
- Latency figures come from the machine that ran the pipeline and do not transfer to other hardware.
- Quantization can change rare answers even when aggregate metrics hold; see the degradation columns.
"""
