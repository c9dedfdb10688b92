"""S3 objects on disk (taskrunner_local/persistence/s3.py), with real moto backends, a real SQLite store and a
real objects folder: bodies written to files and metadata to rows before the call answers, bodies served from
their files, and every object back after a restart, which these tests play as the local stack does: the S3 backend
pickled with its objects left out (as the core's snapshot does), the store closed, a fresh store and fresh
patches, the snapshot loaded into a fresh backend and the part's restore()."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import FakeKey, s3_backends

from taskrunner_local.persistence.s3 import DurableBody, S3Part
from taskrunner_local.persistence.store import StateStore
from tests.support.persistence import LocalPart, SimulatedCrash

REGION = "us-east-1"
PARTITION = "aws"
BUCKET = "archive"


class LocalS3(LocalPart[S3Part]):
    """The S3 side of a local stack: a state folder, its store, the objects folder and the installed part."""

    backends = s3_backends
    region = PARTITION

    @property
    def objects(self) -> Path:
        return self.folder / "objects"

    def new_part(self, store: StateStore) -> S3Part:
        return S3Part(store, self.objects)

    def body_files(self) -> set[str]:
        return {path.name for path in self.objects.iterdir()}


@pytest.fixture
def local(aws: None, tmp_path: Path) -> Iterator[LocalS3]:
    with LocalS3(tmp_path / "state") as started:
        yield started


@pytest.fixture
def s3(aws: None) -> Any:
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=BUCKET)
    return client


def body(s3: Any, key: str, **request: Any) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key, **request)["Body"].read()  # type: ignore[no-any-return]


def moto_key(key: str) -> Any:
    return s3_backends[DEFAULT_ACCOUNT_ID][PARTITION].buckets[BUCKET].keys[key]


# ---------------------------------------------------------------------------------------------- round trips


def test_given_objects_put_copied_overwritten_and_deleted_when_the_stack_restarts_then_they_are_as_they_were(
    local: LocalS3, s3: Any
) -> None:
    # Given a snapshot taken once the bucket existed, then objects written every way a client can
    snapshot = local.snapshot()
    s3.put_object(
        Bucket=BUCKET, Key="a.json", Body=b'{"a": 1}', ContentType="application/json", Metadata={"owner": "t1"}
    )
    s3.put_object(Bucket=BUCKET, Key="b.txt", Body=b"first", Tagging="kind=log")
    s3.put_object(Bucket=BUCKET, Key="b.txt", Body=b"second")
    s3.copy_object(Bucket=BUCKET, Key="c.json", CopySource={"Bucket": BUCKET, "Key": "a.json"})
    s3.put_object(Bucket=BUCKET, Key="gone", Body=b"x")
    s3.delete_object(Bucket=BUCKET, Key="gone")
    s3.put_object(Bucket=BUCKET, Key="batch-1", Body=b"1")
    s3.put_object(Bucket=BUCKET, Key="batch-2", Body=b"2")
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "batch-1"}, {"Key": "batch-2"}]})
    s3.put_object_tagging(Bucket=BUCKET, Key="a.json", Tagging={"TagSet": [{"Key": "tier", "Value": "hot"}]})
    head = s3.head_object(Bucket=BUCKET, Key="a.json")

    # When the stack restarts from that snapshot
    local.restart(snapshot)

    # Then every object reads as before, with its metadata and tags, and one body file is left per object
    listed = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert listed == ["a.json", "b.txt", "c.json"]
    assert (body(s3, "a.json"), body(s3, "b.txt"), body(s3, "c.json")) == (b'{"a": 1}', b"second", b'{"a": 1}')
    restored = s3.head_object(Bucket=BUCKET, Key="a.json")
    for field in ("ContentType", "Metadata", "ETag", "LastModified", "ContentLength"):
        assert restored[field] == head[field]
    assert s3.get_object_tagging(Bucket=BUCKET, Key="a.json")["TagSet"] == [{"Key": "tier", "Value": "hot"}]
    assert s3.get_object_tagging(Bucket=BUCKET, Key="b.txt")["TagSet"] == []
    assert len(local.body_files()) == 3


def test_given_a_multipart_upload_when_the_stack_restarts_then_the_completed_object_is_there(
    local: LocalS3, s3: Any
) -> None:
    # Given an object uploaded in two parts, and another upload left unfinished
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="big")["UploadId"]
    first, second = b"a" * 5 * 1024 * 1024, b"b" * 1024
    parts = [
        {
            "PartNumber": n,
            "ETag": s3.upload_part(Bucket=BUCKET, Key="big", UploadId=upload, PartNumber=n, Body=data)["ETag"],
        }
        for n, data in ((1, first), (2, second))
    ]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="big", UploadId=upload, MultipartUpload={"Parts": parts})
    unfinished = s3.create_multipart_upload(Bucket=BUCKET, Key="half")["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key="half", UploadId=unfinished, PartNumber=1, Body=b"part")
    etag = s3.head_object(Bucket=BUCKET, Key="big")["ETag"]

    # When the stack restarts
    local.restart()

    # Then the object reads whole, with its multipart ETag; the unfinished upload is dropped
    assert body(s3, "big") == first + second
    assert s3.head_object(Bucket=BUCKET, Key="big")["ETag"] == etag and etag.endswith('-2"')
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=BUCKET)


def test_given_a_versioned_bucket_when_the_stack_restarts_then_versions_and_delete_markers_are_there(
    local: LocalS3, s3: Any
) -> None:
    # Given two versions of an object, then a delete marker over them, and a second object
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=BUCKET, Key="k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket=BUCKET, Key="k", Body=b"two")["VersionId"]
    marker = s3.delete_object(Bucket=BUCKET, Key="k")["VersionId"]
    s3.put_object(Bucket=BUCKET, Key="other", Body=b"o")
    listed = s3.list_object_versions(Bucket=BUCKET)

    # When the stack restarts
    local.restart()

    # Then the versions list as before, each version reads, and the object is deleted until its marker goes
    again = s3.list_object_versions(Bucket=BUCKET)
    assert again["Versions"] == listed["Versions"] and again["DeleteMarkers"] == listed["DeleteMarkers"]
    assert (body(s3, "k", VersionId=v1), body(s3, "k", VersionId=v2)) == (b"one", b"two")
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=BUCKET, Key="k")
    s3.delete_object(Bucket=BUCKET, Key="k", VersionId=marker)
    assert body(s3, "k") == b"two"
    local.restart()
    assert body(s3, "k") == b"two" and len(local.body_files()) == 3


def test_given_firehose_delivers_to_the_bucket_when_the_stack_restarts_then_its_objects_are_there(
    local: LocalS3, s3: Any
) -> None:
    # Given a delivery stream into the bucket (moto writes its objects by calling the S3 backend in-process)
    firehose = boto3.client("firehose", region_name=REGION)
    firehose.create_delivery_stream(
        DeliveryStreamName="archive",
        ExtendedS3DestinationConfiguration={
            "RoleARN": f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/firehose",
            "BucketARN": f"arn:aws:s3:::{BUCKET}",
            "Prefix": "logs/",
        },
    )

    # When a record is put, and the stack restarts
    firehose.put_record(DeliveryStreamName="archive", Record={"Data": b"record one\n"})
    [item] = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    local.restart()

    # Then the object is there with its body
    assert item["Key"].startswith("logs/")
    assert body(s3, item["Key"]) == b"record one\n"


def test_given_a_bucket_the_snapshot_lacks_when_the_stack_restarts_then_its_rows_and_files_go(
    local: LocalS3, s3: Any
) -> None:
    # Given a snapshot without a second bucket, whose object was written after it
    snapshot = local.snapshot()
    s3.create_bucket(Bucket="later")
    s3.put_object(Bucket="later", Key="k", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"kept")

    # When the stack restarts from it
    local.restart(snapshot)

    # Then only the first bucket's object is left, in the store and on disk
    assert body(s3, "k") == b"kept"
    with local.store.reading() as db:
        assert db.execute("SELECT bucket FROM s3_object").fetchall() == [(BUCKET,)]
    assert len(local.body_files()) == 1


# ---------------------------------------------------------------------------------------------- crashes


def test_given_a_crash_inside_put_object_then_the_object_keeps_its_old_body_and_no_file_is_left(
    local: LocalS3, s3: Any
) -> None:
    # Given an object
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"old")
    files = local.body_files()

    # When an overwrite and a delete fail inside their transactions
    local.store.crash = True
    backend = s3_backends[DEFAULT_ACCOUNT_ID][PARTITION]
    with pytest.raises(SimulatedCrash):
        backend.put_object(BUCKET, "k", b"new")
    with pytest.raises(SimulatedCrash):
        backend.put_object(BUCKET, "another", b"new")
    local.store.crash = False

    # Then the new body left no file, and after a restart the object is the old one
    assert local.body_files() == files
    local.restart()
    assert body(s3, "k") == b"old"
    assert [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["k"]


def test_given_files_no_row_names_when_the_stack_restarts_then_they_are_swept(local: LocalS3, s3: Any) -> None:
    # Given an object, and files a crash left behind: a body never named, a temporary file
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"kept")
    (local.objects / "0123456789abcdef").write_bytes(b"orphan")
    (local.objects / "fedcba9876543210.tmp").write_bytes(b"half")

    # When the stack restarts
    local.restart()

    # Then only the object's body is left
    assert len(local.body_files()) == 1
    assert body(s3, "k") == b"kept"


# ---------------------------------------------------------------------------------------------- memory


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_given_objects_put_then_their_bodies_are_read_from_files_not_memory(local: LocalS3, s3: Any) -> None:
    # Given a warm backend
    backend = s3_backends[DEFAULT_ACCOUNT_ID][PARTITION]
    backend.put_object(BUCKET, "warm", b"w" * 1_000_000)
    before = resident_bytes()

    # When 60 objects of 1 MB are put (moto alone keeps each in a memory buffer below 5 MB)
    for n in range(60):
        backend.put_object(BUCKET, f"o{n}", bytes([n]) * 1_000_000)
    grown = resident_bytes() - before

    # Then memory grew by far less than 60 MB, and bodies are served from their files
    print(f"\nRSS growth for 60 objects of 1 MB: {grown / 1e6:.1f} MB")
    assert grown < 20e6
    assert isinstance(moto_key("o7")._value_buffer, DurableBody)
    assert body(s3, "o7") == bytes([7]) * 1_000_000


def test_given_durable_versions_then_list_object_versions_copies_no_body(local: LocalS3, s3: Any) -> None:
    # Given versions of an object
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for n in range(3):
        s3.put_object(Bucket=BUCKET, Key="k", Body=bytes([n]) * 1000)
    tracked = len(FakeKey.instances_tracked)  # type: ignore[attr-defined]  # moto's registry of live keys
    started = time.monotonic()

    # When the versions are listed (moto deep-copies every version to list them)
    versions = s3.list_object_versions(Bucket=BUCKET)["Versions"]

    # Then no FakeKey was made through moto's constructor (which keeps it, body and all, for ever)
    assert len(versions) == 3 and len(FakeKey.instances_tracked) == tracked  # type: ignore[attr-defined]
    assert time.monotonic() - started < 5
