"""The local ECR, the whole loop as a user runs it: create a repository, build an image offline, log in with
`aws ecr get-login-password`'s password, push, see it in describe-images, run it as a task by tag and by digest;
what ECR refuses is refused (an unknown repository or tag fails the task CannotPullContainerError, a second push of
a tag of an IMMUTABLE repository is refused, a deleted image is gone)."""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from taskrunner_local.client import TaskRunnerClient
from taskrunner_local.engine import Engine
from taskrunner_local.images import BUSYBOX_IMAGE
from taskrunner_local.registry import LocalEcr
from taskrunner_local.stack import LocalStack
from tests.support.engine import require


class Pusher:
    """The engine as a user runs it by hand against the local ECR, with its own auth file."""

    def __init__(self, engine: Engine, registry: LocalEcr, ecr: Any, auth_file: Path) -> None:
        self.engine, self.registry, self.ecr, self.auth_file = engine, registry, ecr, auth_file

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.engine.command(*args),
            env=self.engine.env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def login(self) -> subprocess.CompletedProcess[str]:
        token = self.ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
        password = base64.b64decode(token).decode().partition(":")[2]  # what `aws ecr get-login-password` prints
        return self.run(
            "login", "--tls-verify=false", "--authfile", str(self.auth_file), "-u", "AWS", "--password-stdin",
            self.registry.endpoint, stdin=password,
        )  # fmt: skip

    def build(self, context: Path, tag: str, greeting: str) -> None:
        (context / "Containerfile").write_text(
            f'FROM {BUSYBOX_IMAGE}\nRUN echo "{greeting}" > /greeting\nCMD ["cat", "/greeting"]\n'
        )
        built = self.run("build", "--network", "none", "-q", "-t", tag, str(context))
        assert built.returncode == 0, built.stderr

    def push(self, tag: str, digest_file: Path | None = None) -> subprocess.CompletedProcess[str]:
        extra = ["--digestfile", str(digest_file)] if digest_file else []
        return self.run("push", "--tls-verify=false", "--authfile", str(self.auth_file), *extra, tag)


@pytest.fixture(scope="module")
def pusher(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Pusher:
    if stack.ecr is None:
        require(f"the local ECR does not run: {stack.ecr_unavailable}")
    assert stack.choice is not None and stack.choice.engine is not None
    auth_file = tmp_path_factory.mktemp("ecr-auth") / "auth.json"
    pusher = Pusher(stack.choice.engine, stack.ecr, stack.client("ecr"), auth_file)
    logged_in = pusher.login()
    assert logged_in.returncode == 0 and "Login Succeeded" in logged_in.stdout, logged_in.stderr
    return pusher


def run(api: TaskRunnerClient, image: str) -> dict[str, Any]:
    return api.wait(api.submit({"image": image})["task_id"], timeout=90)


def test_an_image_pushed_to_the_local_ecr_runs_as_a_task_by_tag_and_by_digest(
    pusher: Pusher, api: TaskRunnerClient, tmp_path: Path
) -> None:
    # Given a repository, and an image built offline and pushed to it as a user does
    repository = f"e2e/app-{uuid.uuid4().hex[:8]}"
    pusher.ecr.create_repository(repositoryName=repository)
    alias, ecr_uri = f"{pusher.registry.endpoint}/{repository}", f"{pusher.registry.host}/{repository}"
    greeting = f"hello from ECR {uuid.uuid4().hex}"
    pusher.build(tmp_path, f"{alias}:v1", greeting)
    digest_file = tmp_path / "digest"
    pushed = pusher.push(f"{alias}:v1", digest_file)
    assert pushed.returncode == 0, pushed.stderr
    pusher.run("rmi", f"{alias}:v1")  # the agent pulls it from the registry

    # Then ECR lists it with the digest the registry gave the push, and its layers' size
    [image] = pusher.ecr.describe_images(repositoryName=repository)["imageDetails"]
    digest = digest_file.read_text().strip()
    assert (image["imageDigest"], image["imageTags"]) == (digest, ["v1"])
    assert 0 < image["imageSizeInBytes"] < 10_000_000

    # When tasks run it by its ECR URI, by tag and by digest
    by_tag, by_digest = run(api, f"{ecr_uri}:v1"), run(api, f"{ecr_uri}@{digest}")

    # Then both run the pushed image
    for task in (by_tag, by_digest):
        assert (task["status"], task["exit_code"]) == ("SUCCEEDED", 0), task
        assert api.logs(task["task_id"]) == [greeting]

    # And once ECR deletes it, the registry no longer serves it: a task fails to pull, as on AWS
    pusher.ecr.batch_delete_image(repositoryName=repository, imageIds=[{"imageDigest": digest}])
    deleted = run(api, f"{ecr_uri}@{digest}")
    assert (deleted["status"], deleted["stop_code"]) == ("FAILED", "TaskFailedToStart"), deleted
    assert deleted["status_reason"].startswith("CannotPullContainerError"), deleted["status_reason"]
    assert "Requested image not found" in deleted["status_reason"], deleted["status_reason"]


def test_an_unknown_repository_or_tag_fails_the_task_cannot_pull(pusher: Pusher, api: TaskRunnerClient) -> None:
    repository = f"e2e/empty-{uuid.uuid4().hex[:8]}"
    pusher.ecr.create_repository(repositoryName=repository)
    host = pusher.registry.host
    no_tag, no_repository = run(api, f"{host}/{repository}:nope"), run(api, f"{host}/e2e/no-such-repository:v1")
    for task in (no_tag, no_repository):
        assert (task["status"], task["stop_code"]) == ("FAILED", "TaskFailedToStart"), task
        assert task["status_reason"].startswith("CannotPullContainerError"), task["status_reason"]
    assert "manifest unknown: Requested image not found" in no_tag["status_reason"]
    assert (
        "name unknown: The repository with name 'e2e/no-such-repository' does not exist"
        in (no_repository["status_reason"])
    )
    assert host in no_tag["status_reason"]  # the name the task gave, not the local alias


def test_pushes_are_refused_as_ecr_refuses_them(pusher: Pusher, tmp_path: Path) -> None:
    # Given an IMMUTABLE repository with tag v1
    frozen = f"e2e/frozen-{uuid.uuid4().hex[:8]}"
    pusher.ecr.create_repository(repositoryName=frozen, imageTagMutability="IMMUTABLE")
    alias = f"{pusher.registry.endpoint}/{frozen}"
    pusher.build(tmp_path, f"{alias}:v1", "first")
    assert pusher.push(f"{alias}:v1").returncode == 0
    # When v1 is pushed again, then ECR's refusal is what the engine says
    pusher.build(tmp_path, f"{alias}:v1", "second")
    again = pusher.push(f"{alias}:v1")
    assert again.returncode != 0
    assert (
        f"tag invalid: The image tag 'v1' already exists in the '{frozen}' repository and cannot be overwritten "
        "because the repository is immutable."
    ) in again.stderr, again.stderr
    assert [i["imageTags"] for i in pusher.ecr.describe_images(repositoryName=frozen)["imageDetails"]] == [["v1"]]
    # And a push to a repository ECR does not have is refused
    missing = f"{pusher.registry.endpoint}/e2e/not-created:v1"
    pusher.run("tag", f"{alias}:v1", missing)
    refused = pusher.push(missing)
    assert refused.returncode != 0
    assert "name unknown: The repository with name 'e2e/not-created' does not exist in the registry with id" in (
        refused.stderr
    ), refused.stderr
    pusher.run("rmi", f"{alias}:v1", missing)
