"""A batch job: prepare it (read, encode, error budget, plan), then generate the parts not committed yet."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.batch.config import BatchConfig
from tasks.batch.executors import Part, output_row
from tasks.batch.inputs import BatchInput, BatchRecord, RowError, read_input
from tasks.batch.opening import make_executor
from tasks.batch.parts import (
    ERRORS,
    MANIFEST,
    PLAN,
    BatchError,
    BatchPlan,
    check_plan,
    committed_parts,
    encode_rows,
    now,
    pinned_ref,
    read_manifest,
    read_plan,
    split_parts,
)
from tasks.batch.store import LocalStore, open_store
from tasks.data.chat import render_ids
from tasks.data.prepare import read_text
from tasks.progress import Progress
from tasks.records import ModelRelease
from tasks.served_folder import ServedFolder

log = logging.getLogger(__name__)


@dataclass
class BatchJob:
    """A prepared job: the accepted records with their prompt ids, the rows refused, and the plan."""

    input: BatchInput
    output: str
    release: ModelRelease
    records: list[BatchRecord]
    prompt_ids: list[list[int]]
    errors: list[RowError]
    plan: BatchPlan
    parts: list[range] = field(default_factory=list)

    def planned_ids(self) -> list[list[str]]:
        """Ids of every part, in order."""
        return [[self.records[i].id for i in part] for part in self.parts]


def resolve_input(uri: str, root: Path) -> str:
    """``demo:data/test`` (and the other ``demo:`` data) to a local path, made if absent; others pass through."""
    if not uri.startswith("demo:"):
        return uri
    from tasks.demo import resolve_ref  # trains the demo assets on first use: imported only when asked

    return resolve_ref(uri, root)


def resume_ref(model_ref: str, output_uri: str) -> str:
    """``model_ref``, or for an output started before, the version its first attempt resolved (kept to the end)."""
    plan = read_plan(open_store(output_uri))
    ref = pinned_ref(model_ref, plan)
    if plan is not None:
        log.info("%s was started with %s/%s (%s); resuming with that version", output_uri, plan.model_name,
                 plan.model_version, model_ref)
    return ref


def completed_run(input_uri: str, output_uri: str, model_ref: str, config: BatchConfig) -> dict | None:
    """The manifest when ``output_uri`` holds this very run finished already, else None.

    A finished output of another input, model or settings is an error rather than silently "done".
    """
    manifest = read_manifest(open_store(output_uri))
    if manifest is None:
        return None
    digest = hashlib.sha256(read_text(input_uri).encode()).hexdigest()
    name = model_ref.partition("@")[0].partition("/")[0]
    if (manifest["input_sha256"], manifest["model_name"], manifest["settings"]) != (digest, name,
                                                                                   config.output_key()):
        raise BatchError(f"{open_store(output_uri).location(MANIFEST)} records a finished run of another input, "
                         "model or settings; use another --output")
    return manifest


def load_tokenizer(model_dir: str):
    """The served folder's tokenizer (lengths are checked against the context window here, not by it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.model_max_length = 1 << 30
    return tokenizer


def encode(release: ModelRelease, data: BatchInput) -> tuple[list[BatchRecord], list[list[int]], list[RowError]]:
    """Prompt ids of every record; records whose prompt leaves no room for an answer become errors."""
    tokenizer = load_tokenizer(release.onnx_dir)
    context = ServedFolder.read(release.onnx_dir).context_length
    kept, ids, refused = [], [], []
    for record in data.records:
        prompt = render_ids(tokenizer, record.as_messages(), add_generation_prompt=True)
        if len(prompt) >= context:
            refused.append(RowError(record.line, f"{data.uri}:{record.line}", f"the prompt has {len(prompt)} "
                                    f"tokens; {release.ref}'s context window of {context} leaves no room for an "
                                    "answer", record.id))
            continue
        kept.append(record)
        ids.append(prompt)
    return kept, ids, refused


def check_budget(data: BatchInput, errors: list[RowError], max_error_rate: float, errors_at: str) -> None:
    """Raise BatchError when more rows failed than ``max_error_rate`` allows, or when none is left."""
    rate = len(errors) / max(data.rows, 1)
    if errors and rate > max_error_rate:
        raise BatchError(f"{len(errors)} of {data.rows} rows ({rate:.1%}) of {data.uri} cannot be processed, over "
                         f"max_error_rate {max_error_rate:.1%}; nothing was generated. Every bad row is in "
                         f"{errors_at}; the first: {errors[0].where}: {errors[0].error}")
    if len(errors) == data.rows:
        raise BatchError(f"{data.uri} has no row to process ({data.rows} rows, {len(errors)} refused; see "
                         f"{errors_at})")


def prepare_job(input_uri: str, output_uri: str, release: ModelRelease, config: BatchConfig) -> BatchJob:
    """Read and validate the input, check it against an earlier attempt's plan, write its errors file, check the
    error budget, write the plan."""
    data = read_input(input_uri)
    records, prompt_ids, refused = encode(release, data)
    parts = split_parts(records, config.part_size)
    plan = BatchPlan(input_uri=input_uri, input_sha256=data.digest, model_name=release.name,
                     model_version=release.version, settings=config.output_key(), records=len(records),
                     parts=len(parts))
    store = open_store(output_uri)
    existing = read_plan(store)
    if existing is not None:  # before writing anything: another run's output is left as it is
        check_plan(existing, plan, store.uri)
    errors = sorted([*data.errors, *refused], key=lambda e: e.line)
    store.write(ERRORS, encode_rows([e.as_json() for e in errors]))
    check_budget(data, errors, config.max_error_rate, store.location(ERRORS))
    if existing is None:
        store.write(PLAN, plan.model_dump_json(indent=2).encode())
    return BatchJob(input=data, output=output_uri, release=release, records=records, prompt_ids=prompt_ids,
                    errors=errors, plan=existing or plan, parts=parts)


class RunStats(BaseModel):
    """What one attempt generated."""

    parts_generated: int
    parts_kept: int
    records_generated: int
    generate_s: float
    started_at: str
    usage: dict[str, float] = {}  # what a remote executor billed (jobs, instance_hours, cost_usd)


def run_parts(job: BatchJob, config: BatchConfig) -> RunStats:
    """Generate and commit every part not committed yet (holding the output's lock while writing)."""
    started_at = now()
    store = open_store(job.output)
    if isinstance(store, LocalStore):
        store.lock()
        store.remove_temp_files()
    try:
        done = committed_parts(store, job.planned_ids())  # read under the lock: another run may have added some
        todo = [i for i in range(len(job.parts)) if i not in done]
        if done:
            log.info("resuming %s: %d of %d parts committed already, %d to go", store.uri, len(done), len(job.parts),
                     len(todo))
        total = sum(len(job.parts[i]) for i in todo)
        start, usage = time.perf_counter(), {}
        if todo:
            executor = make_executor(job.release, config)
            try:
                with Progress(total, "batch", unit="record") as progress:
                    for index in todo:
                        _commit(store, job, index, executor, progress.update)
            finally:
                executor.close()
            usage = dict(getattr(executor, "usage", {}))
        return RunStats(parts_generated=len(todo), parts_kept=len(done), records_generated=total,
                        generate_s=round(time.perf_counter() - start, 3), started_at=started_at, usage=usage)
    finally:
        if isinstance(store, LocalStore):
            store.unlock()


def _commit(store, job: BatchJob, index: int, executor, on_batch) -> None:
    span = job.parts[index]
    part = Part(index, [job.records[i] for i in span], [job.prompt_ids[i] for i in span])
    answered = executor.run(part, on_batch)
    answers = {a.id: a for a in answered}
    expected = [r.id for r in part.records]
    if sorted(answers) != sorted(expected) or len(answered) != len(expected):
        raise BatchError(f"the executor returned {len(answered)} answers for the {len(expected)} records of "
                         f"{part.name}, not one each")
    store.write(part.name, encode_rows([output_row(answers[i], job.release) for i in expected]))


resolve_input_task = task(resolve_input, name="resolve-input", cache_policy=NO_CACHE)
resume_ref_task = task(resume_ref, name="resume-ref", cache_policy=NO_CACHE)
completed_run_task = task(completed_run, name="completed-run", cache_policy=NO_CACHE)
prepare_job_task = task(prepare_job, name="prepare-batch", cache_policy=NO_CACHE)
run_parts_task = task(run_parts, name="generate-parts", cache_policy=NO_CACHE)
