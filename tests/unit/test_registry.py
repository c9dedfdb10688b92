"""The local ECR's registry (taskrunner_local/registry.py): docker-registry behind the gate that checks what ECR
checks, spoken to over HTTP as an engine would, with moto's ECR in this process."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from moto import mock_aws

from taskrunner_local import moto_patches
from taskrunner_local.registry import LocalEcr, _UnixConnection, find_registry
from tests.support.engine import require
from tests.support.local_tasks import process_state, processes_with, wait_until

ACCOUNT, REGION = "123456789012", "us-east-1"
ECR_PATCHES = ("ecr-authorization-token", "ecr-image-size", "ecr-registry-delete")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def ecr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    if find_registry() is None:
        require("docker-registry is not installed: run `make engine`")
    for key, value in {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    patches = [moto_patches.patch_named(name) for name in ECR_PATCHES]
    applied = [patch.applied for patch in patches]
    for patch in patches:
        patch.apply()
    try:
        with mock_aws():
            yield boto3.client("ecr")
    finally:
        for patch, was in zip(patches, applied, strict=True):
            if not was:
                patch.revert()


@pytest.fixture
def registry(ecr: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalEcr]:
    local = LocalEcr(account=ACCOUNT, region=REGION, host="127.0.0.1", port=0, work_dir=tmp_path / "registry")
    local.start()
    monkeypatch.setattr(moto_patches.HOOKS, "on_ecr_images_deleted", local.on_images_deleted)
    try:
        yield local
    finally:
        local.stop()


def login(ecr: Any) -> tuple[str, str]:
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    user, _, password = base64.b64decode(token).decode().partition(":")
    return user, password


def push_blob(base: str, auth: tuple[str, str], name: str, data: bytes, chunked: bool = False) -> str:
    """A blob upload as engines do it: POST, PATCH the bytes (chunked, from a generator: streamed), PUT the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = requests.post(f"{base}/v2/{name}/blobs/uploads/", auth=auth, timeout=10)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    body: Any = (data[i : i + 100_000] for i in range(0, len(data), 100_000)) if chunked else data
    patched = requests.patch(f"{base}{location}" if location.startswith("/") else location, data=body, auth=auth)
    assert patched.status_code == 202, patched.text
    location = patched.headers["Location"]
    url = f"{base}{location}" if location.startswith("/") else location
    done = requests.put(url, params={"digest": digest}, auth=auth, timeout=10)
    assert done.status_code == 201, done.text
    return digest


def image_manifest(base: str, auth: tuple[str, str], name: str, layer: bytes) -> bytes:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest = push_blob(base, auth, name, config)
    layer_digest = push_blob(base, auth, name, layer, chunked=True)
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": len(layer)}
            ],
        }
    ).encode()


def raw_put(registry: LocalEcr, auth: tuple[str, str], path: str, body: bytes) -> tuple[int, bytes]:
    """PUT `body` to `path` exactly as written (no client-side normalisation of the path)."""
    host, port = registry.endpoint.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": OCI_MANIFEST}
    try:
        connection.request("PUT", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def put_manifest(base: str, auth: tuple[str, str], name: str, reference: str, manifest: bytes) -> requests.Response:
    return requests.put(
        f"{base}/v2/{name}/manifests/{reference}",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
        auth=auth,
        timeout=10,
    )


def test_a_push_lands_in_the_registry_and_in_ecr_and_a_delete_from_both(ecr: Any, registry: LocalEcr) -> None:
    base, auth = f"http://{registry.endpoint}", login(ecr)
    ecr.create_repository(repositoryName="team/app")
    layer = os.urandom(300_000)  # streamed through the gate in chunks
    manifest = image_manifest(base, auth, "team/app", layer)

    pushed = put_manifest(base, auth, "team/app", "v1", manifest)

    assert pushed.status_code == 201, pushed.text
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert pushed.headers["Docker-Content-Digest"] == digest
    [image] = ecr.describe_images(repositoryName="team/app")["imageDetails"]
    assert (image["imageDigest"], image["imageTags"], image["imageSizeInBytes"]) == (digest, ["v1"], len(layer))
    assert image["imageManifestMediaType"] == OCI_MANIFEST
    accept = {"Accept": OCI_MANIFEST}
    by_tag = requests.get(f"{base}/v2/team/app/manifests/v1", headers=accept, auth=auth, timeout=10)
    assert (by_tag.status_code, by_tag.content) == (200, manifest)
    blob = requests.get(f"{base}/v2/team/app/blobs/{json.loads(manifest)['layers'][0]['digest']}", auth=auth)
    assert blob.content == layer

    # a second tag of the same image, then the tag moves to another image: the first stays, untagged, as on ECR
    assert put_manifest(base, auth, "team/app", "latest", manifest).status_code == 201
    other = image_manifest(base, auth, "team/app", os.urandom(1000))
    assert put_manifest(base, auth, "team/app", "v1", other).status_code == 201
    tags = {
        i["imageDigest"]: sorted(i.get("imageTags", []))
        for i in ecr.describe_images(repositoryName="team/app")["imageDetails"]
    }
    assert tags[digest] == ["latest"] and sorted(tags.values()) == [["latest"], ["v1"]]

    ecr.batch_delete_image(repositoryName="team/app", imageIds=[{"imageDigest": digest}])

    gone = requests.get(f"{base}/v2/team/app/manifests/{digest}", headers=accept, auth=auth, timeout=10)
    assert gone.status_code == 404 and gone.json()["errors"][0]["message"] == "Requested image not found"
    # and the registry itself no longer has it
    connection = _UnixConnection(str(registry.socket_path))
    connection.request("GET", f"/v2/team/app/manifests/{digest}", headers=accept)
    assert connection.getresponse().status == 404
    connection.close()


def test_the_gate_refuses_what_ecr_refuses(ecr: Any, registry: LocalEcr) -> None:
    base, auth = f"http://{registry.endpoint}", login(ecr)

    unauthenticated = requests.get(f"{base}/v2/", timeout=10)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["WWW-Authenticate"].startswith(f'Basic realm="https://{registry.host}/"')
    assert requests.get(f"{base}/v2/", auth=("AWS", f"{ACCOUNT}-auth-token"), timeout=10).status_code == 401
    for forged in ("Basic !!!", "Basic " + base64.b64encode(b"AWS:\xff").decode(), "Bearer x", "Basic \xff\xfe"):
        answer = requests.get(f"{base}/v2/", headers={"Authorization": forged.encode("latin-1")}, timeout=10)
        assert answer.status_code == 401, forged
    assert requests.get(f"{base}/v2/", auth=auth, timeout=10).status_code == 200

    unknown = requests.post(f"{base}/v2/nope/blobs/uploads/", auth=auth, timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["errors"][0] == {
        "code": "NAME_UNKNOWN",
        "message": f"The repository with name 'nope' does not exist in the registry with id '{ACCOUNT}'",
        "detail": None,
    }

    ecr.create_repository(repositoryName="frozen", imageTagMutability="IMMUTABLE")
    manifest = image_manifest(base, auth, "frozen", b"layer")
    assert put_manifest(base, auth, "frozen", "v1", manifest).status_code == 201
    again = put_manifest(base, auth, "frozen", "v1", manifest)
    assert again.status_code == 400
    assert again.json()["errors"][0]["code"] == "TAG_INVALID"
    assert again.json()["errors"][0]["message"] == (
        "The image tag 'v1' already exists in the 'frozen' repository and cannot be overwritten because the "
        "repository is immutable."
    )
    assert put_manifest(base, auth, "frozen", "v2", manifest).status_code == 201  # a new tag is fine

    for invalid in (b'{"not": "a manifest"}', b"\xff\xfe", b"[]", b'{"schemaVersion": 2}'):
        refused = put_manifest(base, auth, "frozen", "v9", invalid)
        assert (refused.status_code, refused.json()["errors"][0]["code"]) == (400, "MANIFEST_INVALID"), invalid

    # a name or tag the registry would decode or clean is refused before it: the gate checks what is written
    # (sent as written: requests would decode %76 itself)
    for path in (
        "/v2/frozen/manifests/%76%31",  # "v1", percent-encoded
        "/v2/%67host/manifests/x",  # a repository ECR does not have, percent-encoded
        "/v2/frozen/../ghost/manifests/x",
        "/v2/frozen//manifests/v1",
    ):
        status, body = raw_put(registry, auth, path, manifest)
        assert (status, json.loads(body)["errors"][0]["code"]) == (400, "NAME_INVALID"), path
    assert requests.get(f"{base}/v2/_catalog", auth=auth, timeout=10).status_code == 404  # ECR has no catalog
    mount = requests.post(f"{base}/v2/frozen/blobs/uploads/?mount=sha256:{'0' * 64}&from=ghost", auth=auth, timeout=10)
    assert (mount.status_code, mount.json()["errors"][0]["code"]) == (404, "NAME_UNKNOWN")

    missing = requests.get(f"{base}/v2/frozen/manifests/nope", auth=auth, timeout=10)
    assert (missing.status_code, missing.json()["errors"][0]["code"]) == (404, "MANIFEST_UNKNOWN")


def test_ecr_uris_of_its_account_and_region_map_to_the_local_alias(registry: LocalEcr) -> None:
    alias = registry.endpoint
    assert registry.local_reference(f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/team/app:v1") == f"{alias}/team/app:v1"
    assert registry.local_reference(f"{alias}/app@sha256:{'a' * 64}") == f"{alias}/app@sha256:{'a' * 64}"
    assert registry.local_reference(f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/app:v1") is None
    assert registry.local_reference("python:3.12-slim") is None


def test_stop_leaves_no_registry_process(ecr: Any, tmp_path: Path) -> None:
    local = LocalEcr(account=ACCOUNT, region=REGION, host="127.0.0.1", port=0, work_dir=tmp_path / "r")
    local.start()
    config = str(tmp_path / "r" / "config.yml")
    assert processes_with(config)
    local.stop()
    assert processes_with(config) == []


def test_a_taken_port_falls_back_to_a_free_one(ecr: Any, tmp_path: Path) -> None:
    first = LocalEcr(account=ACCOUNT, region=REGION, host="127.0.0.1", port=0, work_dir=tmp_path / "a").start()
    said: list[str] = []
    try:
        second = LocalEcr(
            account=ACCOUNT,
            region=REGION,
            host="127.0.0.1",
            port=first.port,
            work_dir=tmp_path / "b",
            on_log=said.append,
        ).start()
        try:
            assert second.port != first.port and f"port {first.port} is not free" in said[0]
        finally:
            second.stop()
    finally:
        first.stop()


STACK_THAT_DIES = """
import sys, time
from pathlib import Path
from taskrunner_local.registry import LocalEcr
ecr = LocalEcr(account="123456789012", region="us-east-1", host="127.0.0.1", port=0, work_dir=Path(sys.argv[1]))
ecr.start()
print(ecr.pid, flush=True)
time.sleep(600)
"""


def test_a_stack_killed_with_sigkill_leaves_no_registry_process(ecr: Any, tmp_path: Path) -> None:
    # Given a process that runs the registry, as the stack does
    work_dir = tmp_path / "registry"
    stack = subprocess.Popen([sys.executable, "-c", STACK_THAT_DIES, str(work_dir)], stdout=subprocess.PIPE, text=True)
    assert stack.stdout is not None
    registry_pid = int(stack.stdout.readline())
    assert Path(f"/proc/{registry_pid}").exists()
    # When it is killed with no chance to stop the registry
    stack.kill()
    stack.wait()
    # Then the registry goes with it
    assert wait_until(lambda: (process_state(registry_pid) or ("Z", 0))[0] == "Z", timeout=10)  # gone, or unreaped
    assert processes_with(str(work_dir)) == []
