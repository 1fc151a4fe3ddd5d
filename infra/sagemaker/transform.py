"""``executor: sagemaker`` for the batch_transform flow: one SageMaker batch transform job per part.

Each part's rows go to S3 as JSON Lines (id, messages and the generation settings); the job splits them by line,
sends multi-record mini-batches to the image's /invocations (JSON Lines in, one answer line per input line out),
joins every answer to its input row (``JoinSource=Input``: the answer lands under ``SageMakerOutput`` beside the
row's id) and writes one output line per input line. Flow cancellation (or Ctrl-C) stops the running job.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from infra.sagemaker.aws import AwsError, Clients, aws_name, ensure_model, upload_model
from infra.sagemaker.invoke import split_s3
from infra.sagemaker.pricing import DEFAULT_PRICES, run_cost
from tasks.batch.config import BatchConfig, GenerationSettings, SageMakerExecutorConfig
from tasks.batch.executors import Answer, Part
from tasks.batch.parts import BatchError
from tasks.records import ModelRelease

log = logging.getLogger(__name__)
JSON_LINES = "application/jsonlines"
RUNNING = ("InProgress", "Stopping")


class SageMakerExecutor:
    """Runs each part as a transform job of one SageMaker model (made from the version unless configured)."""

    def __init__(self, release: ModelRelease, cfg: SageMakerExecutorConfig, generation: GenerationSettings,
                 clients: Clients | None = None):
        self.release, self.cfg, self.generation = release, cfg, generation
        self.clients = clients or Clients(cfg.region, cfg.endpoint_url)
        self.clock, self.sleep = time.monotonic, time.sleep  # tests substitute a fake clock
        self.run_id = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + uuid.uuid4().hex[:4]
        self.usage: dict[str, float] = {"jobs": 0, "instance_hours": 0.0}
        self.model = cfg.model_name
        self._made_model = False
        if self.model is None:
            try:
                model_data, digest = upload_model(self.clients, release, cfg.bucket, cfg.prefix)
                self.model = aws_name("slmops-batch", release.name, f"v{release.version}", digest[:8])
                self._made_model = ensure_model(self.clients, self.model, release, cfg.image_uri, model_data,
                                                cfg.role_arn, [{"Key": "slmops:batch", "Value": release.ref}])
            except AwsError as exc:
                raise BatchError(f"sagemaker executor: {exc}") from None

    def job_request(self, name: str, input_uri: str, output_uri: str) -> dict[str, Any]:
        """CreateTransformJob parameters for one part."""
        cfg = self.cfg
        return {
            "TransformJobName": name, "ModelName": self.model, "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB": cfg.max_payload_mb, "MaxConcurrentTransforms": cfg.max_concurrent_transforms,
            "ModelClientConfig": {"InvocationsTimeoutInSeconds": cfg.invocations_timeout_s,
                                  "InvocationsMaxRetries": cfg.invocations_max_retries},
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                               "ContentType": JSON_LINES, "SplitType": "Line"},
            "TransformOutput": {"S3OutputPath": output_uri, "Accept": JSON_LINES, "AssembleWith": "Line"},
            "TransformResources": {"InstanceType": cfg.instance_type, "InstanceCount": cfg.instance_count},
            "DataProcessing": {"JoinSource": "Input"},
            "Tags": [{"Key": "slmops:batch", "Value": self.release.ref}]}

    def input_lines(self, part: Part) -> bytes:
        """The part's rows with the generation settings each request carries."""
        g = self.generation
        settings: dict[str, Any] = {"max_tokens": g.max_new_tokens, "temperature": g.temperature}
        if g.temperature > 0:
            settings.update(top_p=g.top_p, seed=g.seed)
        rows = (json.loads(line) for line in part.input_jsonl().decode().splitlines())
        return "".join(json.dumps({**row, **settings}, ensure_ascii=False) + "\n" for row in rows).encode()

    def run(self, part: Part, on_batch: Callable[[int], None]) -> list[Answer]:
        """Upload the part, run its job to the end (stopping it if this process is interrupted), read the answers."""
        cfg, s3 = self.cfg, self.clients.s3
        base = "/".join(p for p in (cfg.prefix.strip("/"), "transform", self.run_id, f"part-{part.index:05d}") if p)
        s3.put_object(Bucket=cfg.bucket, Key=f"{base}/input/input.jsonl", Body=self.input_lines(part))
        name = aws_name("slmops", self.release.name, self.run_id, f"p{part.index}")
        request = self.job_request(name, f"s3://{cfg.bucket}/{base}/input/", f"s3://{cfg.bucket}/{base}/output/")
        try:
            self.clients.sagemaker.create_transform_job(**request)
        except Exception as exc:
            raise BatchError(f"create_transform_job {name}: {exc}") from None
        self.wait(name)
        answers = self.read_answers(f"s3://{cfg.bucket}/{base}/output/input.jsonl.out", part, name)
        on_batch(len(part.records))
        return answers

    def wait(self, name: str) -> dict[str, Any]:
        """Poll the job until it completes; stop it on timeout or interruption; a failure is a BatchError."""
        from tqdm.auto import tqdm

        deadline = self.clock() + self.cfg.timeout_s
        try:
            with tqdm(total=None, desc=f"transform {name}", bar_format="{desc}: {postfix} [{elapsed}]") as bar:
                while True:
                    described = self.clients.sagemaker.describe_transform_job(TransformJobName=name)
                    status = described["TransformJobStatus"]
                    bar.set_postfix_str(status)
                    if status not in RUNNING:
                        break
                    if self.clock() >= deadline:
                        raise TimeoutError
                    self.sleep(self.cfg.poll_s)
        except BaseException as exc:  # flow cancellation, Ctrl-C, timeout: the job must not run on unwatched
            self.stop(name)
            if isinstance(exc, TimeoutError):
                raise BatchError(f"transform job {name} ran past {self.cfg.timeout_s:.0f}s and was stopped") \
                    from None
            raise
        self._count(described)  # a failed job was billed too
        if status != "Completed":
            raise BatchError(f"transform job {name} {status.lower()}: "
                             f"{described.get('FailureReason') or 'no reason given'}")
        return described

    def stop(self, name: str) -> None:
        """Ask SageMaker to stop job ``name`` (logged, never raised: the caller is failing already)."""
        try:
            self.clients.sagemaker.stop_transform_job(TransformJobName=name)
            log.warning("stopped transform job %s", name)
        except Exception as exc:
            log.error("could not stop transform job %s: %s; stop it in the SageMaker console", name, exc)

    def read_answers(self, uri: str, part: Part, job: str) -> list[Answer]:
        """One Answer per output line (input row joined with its answer under ``SageMakerOutput``)."""
        bucket, key = split_s3(uri)
        try:
            body = self.clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        except Exception as exc:
            raise BatchError(f"transform job {job} completed but its output {uri} cannot be read: {exc}") from None
        answers, problems = [], []
        for number, line in enumerate(filter(str.strip, body.splitlines()), start=1):
            try:
                row = json.loads(line)
                out = row["SageMakerOutput"]
                if "error" in out:
                    problems.append(f"{row.get('id')}: {out['error'].get('message')}")
                    continue
                choice = out["choices"][0]
                answers.append(Answer(str(row["id"]), choice["message"]["content"], choice["finish_reason"],
                                      out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]))
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                problems.append(f"{uri} line {number}: not a joined answer ({type(exc).__name__}: {exc})")
        if problems:
            raise BatchError(f"transform job {job}: {len(problems)} rows failed: " + "; ".join(problems[:5]))
        return answers

    def _count(self, described: dict[str, Any]) -> None:
        start, end = described.get("TransformStartTime"), described.get("TransformEndTime")
        seconds = (end - start).total_seconds() if start and end else 0.0
        prices = {self.cfg.instance_type: self.cfg.price_per_hour} if self.cfg.price_per_hour is not None \
            else DEFAULT_PRICES
        cost = run_cost(prices, self.cfg.instance_type, self.cfg.instance_count, seconds)
        self.usage["jobs"] += 1
        for k, v in cost.items():
            self.usage[k] = round(self.usage.get(k, 0.0) + v, 6)
        log.info("transform job %s: %.1fs, %s", described["TransformJobName"], seconds, cost)

    def close(self) -> None:
        """Delete the model this executor made (the artifact stays in S3, keyed by digest) and log the cost."""
        log.warning("sagemaker batch transform: %d jobs, %.4f instance-hours%s", self.usage["jobs"],
                    self.usage["instance_hours"],
                    f", about ${self.usage['cost_usd']:.4f}" if "cost_usd" in self.usage else "")
        if self._made_model:
            try:
                self.clients.sagemaker.delete_model(ModelName=self.model)
            except Exception as exc:
                log.warning("could not delete model %s: %s", self.model, exc)


def open_executor(release: ModelRelease, config: BatchConfig) -> SageMakerExecutor:
    """The ``executor: sagemaker`` opener the batch flow registers."""
    return SageMakerExecutor(release, config.executor, config.generation)
