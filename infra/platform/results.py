"""Prefect results off the worker's disk: an ``s3-bucket`` block (prefect-aws) that every flow run persists its
results to, so a retry or a run on another worker finds them."""

from __future__ import annotations

from urllib.parse import urlparse

from tasks.errors import ConfigError

RESULTS_BLOCK = "slmops-results"
RESULTS_BLOCK_SLUG = f"s3-bucket/{RESULTS_BLOCK}"


def parse_results_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → (bucket, prefix); anything else is a ConfigError."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"--results takes s3://bucket/prefix, got {uri!r}")
    return parsed.netloc, parsed.path.strip("/")


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
    from prefect_aws import AwsCredentials
    from prefect_aws.s3 import S3Bucket

    bucket, prefix = parse_results_uri(uri)
    with temporary_settings({PREFECT_API_URL: prefect_api_url}):
        S3Bucket(bucket_name=bucket, bucket_folder=prefix, credentials=AwsCredentials()).save(RESULTS_BLOCK,
                                                                                             overwrite=True)
