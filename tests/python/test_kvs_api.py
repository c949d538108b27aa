"""boto3 against a real Hydrant server: the Kinesis Video control plane and ListFragments.

The `server` and `kvs` fixtures (conftest.py) start the server on loopback.
"""

import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

REGION = "us-east-1"


def client(service, endpoint):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture
def prefix():
    return "pytest-" + uuid.uuid4().hex[:8] + "-"


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def test_create_describe_and_delete(kvs, prefix):
    name = prefix + "cam"
    arn = kvs.create_stream(StreamName=name, DataRetentionInHours=24, MediaType="video/h264")["StreamARN"]
    assert arn.startswith("arn:aws:kinesisvideo:")
    assert f":stream/{name}/" in arn

    info = kvs.describe_stream(StreamName=name)["StreamInfo"]
    assert info["StreamName"] == name
    assert info["StreamARN"] == arn
    assert info["Status"] in ("CREATING", "ACTIVE")
    assert info["DataRetentionInHours"] == 24
    assert info["MediaType"] == "video/h264"
    assert info["CreationTime"].year >= 2024
    assert kvs.describe_stream(StreamARN=arn)["StreamInfo"] == info

    with pytest.raises(ClientError) as excinfo:
        kvs.create_stream(StreamName=name)
    assert error_code(excinfo) == "ResourceInUseException"

    kvs.delete_stream(StreamARN=arn, CurrentVersion=info["Version"])
    with pytest.raises(ClientError) as excinfo:
        kvs.describe_stream(StreamName=name)
    assert error_code(excinfo) == "ResourceNotFoundException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_list_streams_pages_and_filters_by_prefix(kvs, prefix):
    names = [prefix + f"s{i}" for i in range(5)]
    for name in names:
        kvs.create_stream(StreamName=name)
    kvs.create_stream(StreamName=prefix.rstrip("-") + "x-other")
    condition = {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": prefix}

    seen = []
    token = None
    for _ in range(10):
        kwargs = {"MaxResults": 2, "StreamNameCondition": condition}
        if token:
            kwargs["NextToken"] = token
        page = kvs.list_streams(**kwargs)
        assert len(page["StreamInfoList"]) <= 2
        seen += [s["StreamName"] for s in page["StreamInfoList"]]
        token = page.get("NextToken")
        if not token:
            break
    assert seen == names

    paginated = [
        s["StreamName"]
        for page in kvs.get_paginator("list_streams").paginate(
            StreamNameCondition=condition, PaginationConfig={"PageSize": 3}
        )
        for s in page["StreamInfoList"]
    ]
    assert paginated == names


def test_update_data_retention_checks_the_version(kvs, prefix):
    name = prefix + "retention"
    kvs.create_stream(StreamName=name, DataRetentionInHours=2)
    version = kvs.describe_stream(StreamName=name)["StreamInfo"]["Version"]

    with pytest.raises(ClientError) as excinfo:
        kvs.update_data_retention(
            StreamName=name,
            CurrentVersion="notTheVersion1",
            Operation="INCREASE_DATA_RETENTION",
            DataRetentionChangeInHours=1,
        )
    assert error_code(excinfo) == "VersionMismatchException"

    kvs.update_data_retention(
        StreamName=name,
        CurrentVersion=version,
        Operation="INCREASE_DATA_RETENTION",
        DataRetentionChangeInHours=10,
    )
    info = kvs.describe_stream(StreamName=name)["StreamInfo"]
    assert info["DataRetentionInHours"] == 12

    kvs.update_data_retention(
        StreamARN=info["StreamARN"],
        CurrentVersion=info["Version"],
        Operation="DECREASE_DATA_RETENTION",
        DataRetentionChangeInHours=5,
    )
    assert kvs.describe_stream(StreamName=name)["StreamInfo"]["DataRetentionInHours"] == 7


def test_get_data_endpoint(kvs, prefix):
    name = prefix + "endpoint"
    kvs.create_stream(StreamName=name)
    endpoint = kvs.get_data_endpoint(StreamName=name, APIName="LIST_FRAGMENTS")["DataEndpoint"]
    assert endpoint.startswith("http")
    with pytest.raises(ClientError) as excinfo:
        kvs.get_data_endpoint(StreamName=prefix + "missing", APIName="GET_CLIP")
    assert error_code(excinfo) == "ResourceNotFoundException"


def test_unknown_streams_and_bad_arguments(kvs, prefix):
    with pytest.raises(ClientError) as excinfo:
        kvs.describe_stream(StreamName=prefix + "missing")
    assert error_code(excinfo) == "ResourceNotFoundException"
    assert excinfo.value.response["ResponseMetadata"]["RequestId"]

    arn = f"arn:aws:kinesisvideo:{REGION}:000000000000:stream/{prefix}missing/1"
    with pytest.raises(ClientError) as excinfo:
        kvs.delete_stream(StreamARN=arn)
    assert error_code(excinfo) == "ResourceNotFoundException"

    with pytest.raises(ClientError) as excinfo:
        kvs.create_stream(StreamName=prefix + "bad", DataRetentionInHours=100000)
    assert error_code(excinfo) == "InvalidArgumentException"

    with pytest.raises(ClientError) as excinfo:
        kvs.list_streams(MaxResults=10001)
    assert error_code(excinfo) == "InvalidArgumentException"


def test_list_fragments_on_an_empty_stream(kvs, prefix):
    name = prefix + "empty"
    kvs.create_stream(StreamName=name)
    endpoint = kvs.get_data_endpoint(StreamName=name, APIName="LIST_FRAGMENTS")["DataEndpoint"]
    archived = client("kinesis-video-archived-media", endpoint)

    assert archived.list_fragments(StreamName=name)["Fragments"] == []
    selected = archived.list_fragments(
        StreamName=name,
        MaxResults=10,
        FragmentSelector={
            "FragmentSelectorType": "SERVER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": 0, "EndTimestamp": 4102444800},
        },
    )
    assert selected["Fragments"] == []
    assert "NextToken" not in selected

    with pytest.raises(ClientError) as excinfo:
        archived.list_fragments(StreamName=prefix + "missing")
    assert error_code(excinfo) == "ResourceNotFoundException"

    with pytest.raises(ClientError) as excinfo:
        archived.get_clip(
            StreamName=name,
            ClipFragmentSelector={
                "FragmentSelectorType": "PRODUCER_TIMESTAMP",
                "TimestampRange": {"StartTimestamp": 1700000000, "EndTimestamp": 1700000060},
            },
        )
    assert error_code(excinfo) == "ResourceNotFoundException"
