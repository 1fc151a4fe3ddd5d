"""Prefect results off the worker's disk: the ``slmops-s3-results`` block, which every flow run persists its
results to, so a retry or a run on another worker finds them.

The block is ours (boto3, a few lines) rather than prefect-aws's ``s3-bucket``: prefect-aws pins an older botocore
through aiobotocore and, once installed, made each worker submission about 5 s slower here (every Prefect process
imports installed collections), which the promotion → redeploy path pays. It is registered as a Prefect
collection (``pyproject.toml``), so any process that loads the block finds its class.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlparse

from prefect.filesystems import WritableFileSystem
from pydantic import Field

from tasks.errors import ConfigError

RESULTS_BLOCK = "slmops-results"


def parse_results_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → (bucket, prefix); anything else is a ConfigError."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"--results takes s3://bucket/prefix, got {uri!r}")
    return parsed.netloc, parsed.path.strip("/")


class S3Results(WritableFileSystem):
    """Prefect result storage in an S3 bucket (credentials, region and endpoint: boto3's usual environment)."""

    _block_type_name = "slmops S3 results"
    _block_type_slug = "slmops-s3-results"
    _description = "Flow and task results in s3://bucket/prefix, written and read with boto3."

    bucket: str = Field(description="Bucket name.")
    prefix: str = Field("", description="Key prefix (a folder) inside the bucket.")

    def _key(self, path: str) -> str:
        return f"{self.prefix.strip('/')}/{path.lstrip('/')}" if self.prefix.strip("/") else path.lstrip("/")

    def _client(self) -> Any:
        import boto3

        return boto3.client("s3")

    def read_path(self, path: str) -> bytes:
        return self._client().get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()

    def write_path(self, path: str, content: bytes) -> None:
        self._client().put_object(Bucket=self.bucket, Key=self._key(path), Body=content)

    async def aread_path(self, path: str) -> bytes:
        return await asyncio.to_thread(self.read_path, path)

    async def awrite_path(self, path: str, content: bytes) -> None:
        await asyncio.to_thread(self.write_path, path, content)


RESULTS_BLOCK_SLUG = f"{S3Results._block_type_slug}/{RESULTS_BLOCK}"


def results_env(uri: str | None) -> dict[str, str]:
    """The Prefect settings that make every flow and task run persist its result to the block (none: {})."""
    if not uri:
        return {}
    return {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": RESULTS_BLOCK_SLUG}


def save_results_block(prefect_api_url: str, uri: str) -> None:
    """Create or update the block at ``prefect_api_url``. It holds no credentials: the workers' AWS environment
    (keys, profile or role; ``AWS_ENDPOINT_URL`` for an S3-compatible store) is what reaches the bucket."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    bucket, prefix = parse_results_uri(uri)
    with temporary_settings({PREFECT_API_URL: prefect_api_url}):
        S3Results(bucket=bucket, prefix=prefix).save(RESULTS_BLOCK, overwrite=True)
