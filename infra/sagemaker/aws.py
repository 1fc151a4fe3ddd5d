"""boto3 clients for one region (``AWS_ENDPOINT_URL`` and the standard AWS environment honoured), the served
artifact as ``model.tar.gz`` in S3 under its digest, and SageMaker models made from it."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from infra.sagemaker.serve import NAME_ENV, VERSION_ENV
from tasks.errors import SlmopsError
from tasks.records import ModelRelease
from tasks.served_folder import read_genai_config

MAX_NAME = 63  # SageMaker names: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}


class AwsError(SlmopsError):
    """An AWS call failed; the message names the call and AWS's error."""


@dataclass
class Clients:
    """The boto3 clients a SageMaker deployment uses, made on first use (tests may set any of them)."""

    region: str | None = None
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        import boto3

        self.session = boto3.session.Session(region_name=self.region)
        self.region = self.session.region_name  # the environment's when none was given (kept in records)

    def _client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.endpoint_url)

    @cached_property
    def sagemaker(self) -> Any:
        return self._client("sagemaker")

    @cached_property
    def runtime(self) -> Any:
        return self._client("sagemaker-runtime")

    @cached_property
    def s3(self) -> Any:
        return self._client("s3")

    @cached_property
    def cloudwatch(self) -> Any:
        return self._client("cloudwatch")

    @cached_property
    def autoscaling(self) -> Any:
        return self._client("application-autoscaling")


def error_code(exc: Exception) -> str:
    """The AWS error code of a botocore ClientError ('' for anything else)."""
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def is_missing(exc: Exception) -> bool:
    """True for SageMaker's and S3's ways of saying a resource does not exist."""
    message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")).lower()
    return error_code(exc) in ("ResourceNotFound", "404", "NoSuchKey", "NotFound", "ObjectNotFoundException") \
        or any(words in message for words in ("could not find", "does not exist", "no scaling policy found",
                                              "no scalable target"))


def aws_name(*parts: str) -> str:
    """A SageMaker resource name from ``parts``: [a-zA-Z0-9-], at most 63 characters (the first part is cut)."""
    clean = [re.sub(r"[^a-zA-Z0-9-]+", "-", p).strip("-") for p in parts]
    tail = "-".join(clean[1:])
    head = clean[0][: max(MAX_NAME - len(tail) - 1, 1)].strip("-")
    return f"{head}-{tail}"[:MAX_NAME].strip("-") if tail else head[:MAX_NAME]


def package_model(model_dir: str | Path) -> tuple[bytes, str]:
    """``model.tar.gz`` of the folder's files at the archive root (SageMaker unpacks it to /opt/ml/model), built
    byte-for-byte reproducibly (sorted names, zero mtimes and owners), and its sha256."""
    folder = Path(model_dir)
    read_genai_config(folder)  # NotAServedFolder (a SlmopsError) names what is missing
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(str(path.relative_to(folder)))
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    data = gzip.compress(raw.getvalue(), mtime=0)
    return data, hashlib.sha256(data).hexdigest()


def upload_model(clients: Clients, release: ModelRelease, bucket: str, prefix: str) -> tuple[str, str]:
    """Put ``release``'s served folder as ``s3://bucket/prefix/models/<name>/<sha256>/model.tar.gz`` unless that
    key exists already (same bytes, same key); return (URI, sha256)."""
    data, digest = package_model(release.onnx_dir)
    key = "/".join(p for p in (prefix.strip("/"), "models", release.name, digest, "model.tar.gz") if p)
    try:
        clients.s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if not is_missing(exc) and error_code(exc) != "403":
            raise AwsError(f"S3 head_object s3://{bucket}/{key}: {exc}") from None
        try:
            clients.s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256")
        except Exception as put_exc:
            raise AwsError(f"uploading the model to s3://{bucket}/{key}: {put_exc}") from None
    return f"s3://{bucket}/{key}", digest


def ensure_model(clients: Clients, name: str, release: ModelRelease, image_uri: str, model_data: str,
                 role_arn: str, tags: list[dict[str, str]], environment: dict[str, str] | None = None) -> bool:
    """Create SageMaker model ``name`` serving ``release`` from ``model_data`` with ``image_uri`` and the container
    ``environment`` (besides the model's name and version); False when a model of that name exists already (names
    carry version and a digest of the artifact and the environment, so it is the same model)."""
    try:
        clients.sagemaker.describe_model(ModelName=name)
        return False
    except Exception as exc:
        if not is_missing(exc):
            raise AwsError(f"describe_model {name}: {exc}") from None
    try:
        clients.sagemaker.create_model(
            ModelName=name, ExecutionRoleArn=role_arn, Tags=tags,
            PrimaryContainer={"Image": image_uri, "ModelDataUrl": model_data,
                              "Environment": {**(environment or {}), NAME_ENV: release.name,
                                                              VERSION_ENV: release.version}})
    except Exception as exc:
        raise AwsError(f"create_model {name}: {exc}") from None
    return True


def served_version(clients: Clients, config_name: str) -> str | None:
    """The model version endpoint config ``config_name`` serves (read from its model's environment)."""
    config = clients.sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
    model = clients.sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    return model.get("PrimaryContainer", {}).get("Environment", {}).get(VERSION_ENV)
