"""Reading datasets from s3:// URIs.

Stand-in: AWS cannot exist on this machine, so S3 is a moto server bound to 127.0.0.1 on a free port,
and boto3 reaches it through ``AWS_ENDPOINT_URL``. The product's code path (boto3 get_object) is unchanged.
"""

from __future__ import annotations

import json

import boto3
import pytest

from tasks.config import DataConfig
from tasks.data.prepare import load_rows, prepare_data
from tasks.errors import DatasetError, DataSourceError


@pytest.fixture
def s3(aws_endpoint: str):
    """An S3 client on the moto server (tests/conftest.py) with an empty bucket ``datasets``."""
    client = boto3.client("s3")
    client.create_bucket(Bucket="datasets")
    return client


def test_reads_and_prepares_from_s3(s3, tmp_path) -> None:
    row = {"prompt": "Uppercase: a b", "completion": "A B"}
    s3.put_object(Bucket="datasets", Key="demo/train.jsonl", Body=(json.dumps(row) + "\n") * 4)
    data = prepare_data(DataConfig(train="s3://datasets/demo/train.jsonl"), tmp_path)
    assert data.rows == {"train": 4}
    assert data.sources["train"] == "s3://datasets/demo/train.jsonl"


def test_s3_errors_name_the_uri(s3) -> None:
    s3.put_object(Bucket="datasets", Key="bad.jsonl", Body=b'{"prompt": "x"}\n')
    with pytest.raises(DatasetError, match=r"s3://datasets/bad.jsonl:1: missing 'completion'"):
        load_rows("s3://datasets/bad.jsonl")
    with pytest.raises(DataSourceError, match="NoSuchKey"):
        load_rows("s3://datasets/absent.jsonl")
