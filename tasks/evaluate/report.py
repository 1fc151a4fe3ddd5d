"""Evaluation report for people: a Prefect table + markdown artifact and a PNG plot."""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import task

from tasks.evaluate.score import EvalReport

log = logging.getLogger(__name__)

COLUMNS = ["exact_match", "perplexity", "perplexity_heldout", "perplexity_text", "perplexity_increase", "ttft_ms",
           "decode_tokens_per_s", "latency_p50_ms", "latency_p95_ms", "size_mb"]


def rows(report: EvalReport) -> list[dict[str, str | float]]:
    """One row per scored model, metrics rounded for display."""
    return [{"artifact": s.name, **{c: round(s.metrics[c], 4) for c in COLUMNS if c in s.metrics}}
            for s in report.scores]


def markdown(report: EvalReport) -> str:
    """The report as a markdown table."""
    table = rows(report)
    head = ["artifact", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in head) + " |" for r in table]
    return "\n".join(lines)


def plot(report: EvalReport, out: Path) -> Path:
    """Bar charts of accuracy, perplexity, decode speed and size per artifact, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in report.scores]
    panels = [("exact_match", "exact match"), ("perplexity", "perplexity (test answers)"),
              ("decode_tokens_per_s", "decode tokens/s"), ("size_mb", "size on disk (MB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [s.metrics[key] for s in report.scores]
        bars = ax.bar(names, values, color=["#dd8452" if n == "champion" else "#4c72b0" for n in names])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=7)
        if key == "perplexity" and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")  # a bad candidate next to a good champion spans orders of magnitude
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def publish_report(report: EvalReport, out: Path) -> Path:
    """Create the Prefect table and markdown artifacts (inside a run) and write the PNG plot; return its path."""
    png = plot(report, out)
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        create_table_artifact(table=rows(report), key="evaluation", description="Evaluation of every artifact")
        create_markdown_artifact(markdown=markdown(report), key="evaluation-report",
                                 description="Evaluation report")
    except Exception as exc:  # outside a Prefect run there is nowhere to publish; the PNG still exists
        log.debug("no Prefect artifacts: %s", exc)
    return png


publish_report_task = task(publish_report, name="publish-report")
