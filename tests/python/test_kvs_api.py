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


# --- UpdateStream, tags and versions -------------------------------------------------------


def test_update_stream_changes_metadata_under_the_current_version(kvs, prefix):
    name = prefix + "update"
    kvs.create_stream(StreamName=name, DeviceName="cam-1", MediaType="video/h264")
    before = kvs.describe_stream(StreamName=name)["StreamInfo"]

    with pytest.raises(ClientError) as excinfo:
        kvs.update_stream(StreamName=name, CurrentVersion="notTheVersion1", DeviceName="cam-2")
    assert error_code(excinfo) == "VersionMismatchException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    kvs.update_stream(StreamName=name, CurrentVersion=before["Version"], DeviceName="cam-2")
    after = kvs.describe_stream(StreamName=name)["StreamInfo"]
    assert after["DeviceName"] == "cam-2"
    assert after["MediaType"] == "video/h264"
    assert after["Version"] != before["Version"]

    kvs.update_stream(StreamARN=after["StreamARN"], CurrentVersion=after["Version"], MediaType="video/h265")
    assert kvs.describe_stream(StreamName=name)["StreamInfo"]["MediaType"] == "video/h265"

    with pytest.raises(ClientError) as excinfo:
        kvs.update_stream(StreamName=name, CurrentVersion=after["Version"], DeviceName="cam-3")
    assert error_code(excinfo) == "VersionMismatchException"

    with pytest.raises(ClientError) as excinfo:
        kvs.update_stream(StreamName=prefix + "missing", CurrentVersion="v1", DeviceName="x")
    assert error_code(excinfo) == "ResourceNotFoundException"

    with pytest.raises(ClientError) as excinfo:
        kvs.update_stream(StreamName=name, CurrentVersion="v1", MediaType="h264")
    assert error_code(excinfo) == "InvalidArgumentException"


def test_delete_stream_with_a_wrong_version_keeps_the_stream(kvs, prefix):
    name = prefix + "delversion"
    arn = kvs.create_stream(StreamName=name)["StreamARN"]
    with pytest.raises(ClientError) as excinfo:
        kvs.delete_stream(StreamARN=arn, CurrentVersion="notTheVersion1")
    assert error_code(excinfo) == "VersionMismatchException"
    version = kvs.describe_stream(StreamARN=arn)["StreamInfo"]["Version"]
    kvs.delete_stream(StreamARN=arn, CurrentVersion=version)
    with pytest.raises(ClientError) as excinfo:
        kvs.describe_stream(StreamARN=arn)
    assert error_code(excinfo) == "ResourceNotFoundException"


def test_tags_are_kept_from_creation_and_changed_by_tag_and_untag(kvs, prefix):
    name = prefix + "tags"
    arn = kvs.create_stream(StreamName=name, Tags={"team": "video", "site": "north gate"})["StreamARN"]
    assert kvs.list_tags_for_stream(StreamName=name)["Tags"] == {"team": "video", "site": "north gate"}

    kvs.tag_stream(StreamARN=arn, Tags={"team": "ops", "empty": ""})
    tags = kvs.list_tags_for_stream(StreamARN=arn)
    assert tags["Tags"] == {"team": "ops", "site": "north gate", "empty": ""}
    assert "NextToken" not in tags

    kvs.untag_stream(StreamName=name, TagKeyList=["site", "never-set"])
    assert kvs.list_tags_for_stream(StreamName=name)["Tags"] == {"team": "ops", "empty": ""}

    kvs.untag_stream(StreamName=name, TagKeyList=["team", "empty"])
    assert kvs.list_tags_for_stream(StreamName=name)["Tags"] == {}


def test_tag_limits_and_patterns_follow_the_model(kvs, prefix):
    name = prefix + "taglimit"
    kvs.create_stream(StreamName=name, Tags={f"k{i}": "v" for i in range(40)})
    with pytest.raises(ClientError) as excinfo:
        kvs.tag_stream(StreamName=name, Tags={f"n{i}": "v" for i in range(11)})
    assert error_code(excinfo) == "TagsPerResourceExceededLimitException"
    assert len(kvs.list_tags_for_stream(StreamName=name)["Tags"]) == 40
    kvs.tag_stream(StreamName=name, Tags={f"n{i}": "v" for i in range(10)})
    assert len(kvs.list_tags_for_stream(StreamName=name)["Tags"]) == 50

    with pytest.raises(ClientError) as excinfo:
        kvs.tag_stream(StreamName=name, Tags={"bad#key": "v"})
    assert error_code(excinfo) == "InvalidArgumentException"
    with pytest.raises(ClientError) as excinfo:
        kvs.create_stream(StreamName=prefix + "toomany", Tags={f"k{i}": "v" for i in range(51)})
    assert error_code(excinfo) in ("InvalidArgumentException", "TagsPerResourceExceededLimitException")
    with pytest.raises(ClientError) as excinfo:
        kvs.list_tags_for_stream(StreamName=prefix + "missing")
    assert error_code(excinfo) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as excinfo:
        kvs.untag_stream(StreamName=prefix + "missing", TagKeyList=["a"])
    assert error_code(excinfo) == "ResourceNotFoundException"


# --- SigV4 against a server with keys (conftest.py's `signed_server`) ----------------------


def test_signed_requests_with_the_right_key_work(signed_server, prefix):
    kvs = signed_server.client("kinesisvideo")
    name = prefix + "signed"
    arn = kvs.create_stream(StreamName=name, Tags={"signed": "yes"})["StreamARN"]
    info = kvs.describe_stream(StreamARN=arn)["StreamInfo"]
    assert info["StreamName"] == name
    assert name in [s["StreamName"] for s in kvs.list_streams()["StreamInfoList"]]
    archived = signed_server.client("kinesis-video-archived-media")
    assert archived.list_fragments(StreamName=name)["Fragments"] == []
    kvs.delete_stream(StreamARN=arn, CurrentVersion=info["Version"])


def test_a_wrong_secret_is_an_invalid_signature(signed_server):
    from conftest import SIGNED_KEY_ID

    kvs = signed_server.client_with("kinesisvideo", SIGNED_KEY_ID, "not-the-secret")
    with pytest.raises(ClientError) as excinfo:
        kvs.list_streams()
    assert error_code(excinfo) == "InvalidSignatureException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert excinfo.value.response["ResponseMetadata"]["RequestId"]


def test_an_unknown_key_is_an_unrecognized_client(signed_server):
    kvs = signed_server.client_with("kinesisvideo", "AKIDUNKNOWN", "whatever")
    with pytest.raises(ClientError) as excinfo:
        kvs.describe_stream(StreamName="anything")
    assert error_code(excinfo) == "UnrecognizedClientException"


def raw_post(url, body, headers):
    """POST without an SDK, to send requests no SDK would: unsigned, skewed, tampered."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def signed_headers(url, body, key_id, secret, when, service="kinesisvideo", extra=None):
    from unittest import mock

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"Content-Type": "application/json", **(extra or {})})
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        SigV4Auth(Credentials(key_id, secret), service, REGION).add_auth(request)
    return dict(request.headers.items())


def test_unsigned_skewed_and_tampered_requests_are_refused(signed_server):
    import datetime
    import json as jsonlib

    from conftest import SIGNED_KEY_ID, SIGNED_SECRET

    url = signed_server.endpoint + "/listStreams"
    status, headers, body = raw_post(url, b"{}", {"Content-Type": "application/json"})
    assert status == 403
    assert headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"

    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    fresh = signed_headers(url, b"{}", SIGNED_KEY_ID, SIGNED_SECRET, now)
    status, _, body = raw_post(url, b"{}", fresh)
    assert status == 200, body
    assert "StreamInfoList" in jsonlib.loads(body)

    status, headers, _ = raw_post(url, b'{"MaxResults": 1}', fresh)
    assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")

    for minutes in (6, -6):
        skewed = signed_headers(url, b"{}", SIGNED_KEY_ID, SIGNED_SECRET,
                                now - datetime.timedelta(minutes=minutes))
        status, headers, body = raw_post(url, b"{}", skewed)
        assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
        assert b"Signature expired" in body
    within = signed_headers(url, b"{}", SIGNED_KEY_ID, SIGNED_SECRET, now - datetime.timedelta(minutes=4))
    assert raw_post(url, b"{}", within)[0] == 200


def test_kinesis_targets_get_json_errors_and_kinesis_signatures_verify(signed_server):
    import datetime
    import json as jsonlib

    from conftest import SIGNED_KEY_ID, SIGNED_SECRET

    url = signed_server.endpoint + "/"
    target = {"X-Amz-Target": "Kinesis_20131202.ListStreams", "Content-Type": "application/x-amz-json-1.1"}
    status, headers, body = raw_post(url, b"{}", target)
    assert status == 400
    assert jsonlib.loads(body)["__type"] == "MissingAuthenticationTokenException"

    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    wrong = signed_headers(url, b"{}", SIGNED_KEY_ID, "wrong", now, service="kinesis", extra=target)
    status, _, body = raw_post(url, b"{}", wrong)
    assert status == 400
    assert jsonlib.loads(body)["__type"] == "InvalidSignatureException"

    # A correct Kinesis signature passes authentication: whatever answers next is not an
    # authentication error.
    right = signed_headers(url, b"{}", SIGNED_KEY_ID, SIGNED_SECRET, now, service="kinesis", extra=target)
    status, headers, body = raw_post(url, b"{}", right)
    assert b"Signature" not in body and b"Authentication" not in body, body

    other_service = signed_headers(url, b"{}", SIGNED_KEY_ID, SIGNED_SECRET, now, service="s3", extra=target)
    status, _, body = raw_post(url, b"{}", other_service)
    assert jsonlib.loads(body)["__type"] == "InvalidSignatureException"


def test_a_restricted_key_reaches_only_its_streams(signed_server, prefix):
    from conftest import LIMITED_KEY_ID, LIMITED_SECRET, LIMITED_STREAM

    admin = signed_server.client("kinesisvideo")
    other = prefix + "other"
    admin.create_stream(StreamName=other)
    try:
        admin.create_stream(StreamName=LIMITED_STREAM)
    except ClientError as e:
        assert error_code(e) == "ResourceInUseException"

    limited = signed_server.client_with("kinesisvideo", LIMITED_KEY_ID, LIMITED_SECRET)
    assert limited.describe_stream(StreamName=LIMITED_STREAM)["StreamInfo"]["StreamName"] == LIMITED_STREAM
    listed = [s["StreamName"] for s in limited.list_streams()["StreamInfoList"]]
    assert listed == [LIMITED_STREAM]

    with pytest.raises(ClientError) as excinfo:
        limited.describe_stream(StreamName=other)
    assert error_code(excinfo) == "NotAuthorizedException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401

    other_arn = admin.describe_stream(StreamName=other)["StreamInfo"]["StreamARN"]
    with pytest.raises(ClientError) as excinfo:
        limited.delete_stream(StreamARN=other_arn)
    assert error_code(excinfo) == "NotAuthorizedException"
    archived = signed_server.client_with("kinesis-video-archived-media", LIMITED_KEY_ID, LIMITED_SECRET)
    with pytest.raises(ClientError) as excinfo:
        archived.list_fragments(StreamName=other)
    assert error_code(excinfo) == "NotAuthorizedException"
    assert admin.describe_stream(StreamName=other)["StreamInfo"]["StreamName"] == other


def test_the_aws_cli_lists_streams_on_the_signed_server(signed_server, prefix):
    import os
    import shutil
    import subprocess
    import sys
    import json as jsonlib

    from conftest import SIGNED_KEY_ID, SIGNED_SECRET

    name = prefix + "cli"
    signed_server.client("kinesisvideo").create_stream(StreamName=name)
    aws = shutil.which("aws", path=os.path.dirname(sys.executable)) or shutil.which("aws")
    assert aws, "the AWS CLI is not installed (scripts/setup.sh installs it into .venv)"
    env = dict(os.environ, AWS_ACCESS_KEY_ID=SIGNED_KEY_ID, AWS_SECRET_ACCESS_KEY=SIGNED_SECRET,
               AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    env.pop("AWS_SESSION_TOKEN", None)
    out = subprocess.run([aws, "kinesisvideo", "list-streams", "--endpoint-url", signed_server.endpoint,
                          "--output", "json"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert name in [s["StreamName"] for s in jsonlib.loads(out.stdout)["StreamInfoList"]]

    env["AWS_SECRET_ACCESS_KEY"] = "wrong"
    out = subprocess.run([aws, "kinesisvideo", "list-streams", "--endpoint-url", signed_server.endpoint],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "InvalidSignatureException" in out.stderr
