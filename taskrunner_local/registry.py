"""The local ECR's registry: the images that `aws ecr` (moto) describes, stored by a real OCI registry.

Debian's `docker-registry` (the CNCF distribution registry) stores the layers and manifests; it listens on a unix
socket in the stack's work folder, so nothing reaches it except through the gate in front of it. The gate is a
thin, streaming HTTP pass-through on 127.0.0.1 (TASKRUNNER_REGISTRY_PORT) that does what ECR does and the
registry cannot:

- Basic auth with `AWS` and a password `aws ecr get-login-password` (moto's GetAuthorizationToken) issued;
- a repository ECR does not know is refused on every request (`name unknown: The repository with name '…' does
  not exist in the registry with id '…'`), and a tag of an IMMUTABLE repository is not pushed twice
  (`tag invalid: The image tag '…' already exists in the '…' repository and cannot be overwritten because the
  repository is immutable.`);
- a manifest the registry accepted is recorded in moto's ECR (digest, tags, media type, size from its layers), so
  `describe-images` lists what was pushed; a manifest ECR does not list is `manifest unknown: Requested image not
  found`, and `batch-delete-image` deletes it from the registry too (moto_patches' `on_ecr_images_deleted` hook).

Bodies stream through in pieces (a layer is never held in memory); only manifests, at most 4 MiB as on ECR, are
read whole. The engine cannot address `<account>.dkr.ecr.<region>.amazonaws.com` locally (podman's registries.conf
rewrites pulls, not logins or pushes), so images are pushed to the local alias `127.0.0.1:<port>/<repository>`;
the Fargate agent pulls ECR URIs of this account and region from that alias.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from taskrunner_local import moto_patches

#: the Debian package and the command it installs
REGISTRY_PACKAGE = "docker-registry"
REGISTRY_COMMAND = "docker-registry"
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
#: ECR refuses manifests larger than 4 MiB
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: how long the registry may take to answer on its socket after it started
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 10.0
#: the size of the pieces bodies stream through in
CHUNK_BYTES = 64 * 1024
#: how to get the registry where it is missing
HOW_TO_GET_REGISTRY = "`make engine` (as root, on Debian) installs it (Debian's docker-registry)"

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"}
)
_ROUTE = re.compile(r"/v2/(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*)/(?P<kind>manifests|blobs|tags)/(?P<rest>[^?]*)")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")

REGISTRY_CONFIG = """\
# Written by the local stack (taskrunner_local/registry.py) for this run.
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  net: unix
  addr: {socket}
  secret: {secret}
  relativeurls: true
"""


def _dies_with_parent() -> list[str]:
    """A prefix that makes the kernel SIGTERM the command when the stack dies, even by `kill -9` (util-linux's
    setpriv sets the parent-death signal, then execs it); nothing where setpriv is missing."""
    setpriv = shutil.which("setpriv", path=f"{os.environ.get('PATH', os.defpath)}:{_SBIN}")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class RegistryUnavailable(RuntimeError):
    """The local ECR cannot run: the message says why and how to get it."""


def find_registry(path: str | None = None) -> str | None:
    """The `docker-registry` command, or None where it is not installed."""
    search = f"{os.environ.get('PATH', os.defpath)}:{_SBIN}" if path is None else path
    return shutil.which(REGISTRY_COMMAND, path=search)


def ecr_host(account: str, region: str) -> str:
    """The registry host name of an account's ECR in a region."""
    return f"{account}.dkr.ecr.{region}.amazonaws.com"


def image_size(manifest: dict[str, Any]) -> int:
    """ECR's imageSizeInBytes of an image manifest: the sum of its (compressed) layers."""
    return sum(int(layer.get("size", 0)) for layer in manifest.get("layers", []))


def _ecr_backend(account: str, region: str) -> Any:
    from moto.ecr.models import ecr_backends

    return ecr_backends[account][region]


def _find_image(repository: Any, reference: str) -> Any:
    """The image of `repository` a manifest reference (a tag or a digest) names, or None."""
    is_digest = bool(_DIGEST.match(reference))
    for image in list(repository.images):
        if (is_digest and image.get_image_digest() == reference) or (not is_digest and reference in image.image_tags):
            return image
    return None


def record_image(
    account: str, region: str, repository_name: str, *, manifest: bytes, media_type: str, digest: str, tag: str | None
) -> None:
    """Record in moto's ECR an image the registry accepted: a new image, or one more tag of an image it has; a tag
    moves from the image that had it, which stays, untagged, as on ECR."""
    from moto.ecr.models import Image

    repository = _ecr_backend(account, region).repositories.get(repository_name)
    if repository is None:
        return
    text = manifest.decode("utf-8")
    image = next((i for i in list(repository.images) if i.get_image_digest() == digest), None)
    if tag is not None:
        for other in list(repository.images):
            if other is not image and tag in other.image_tags:
                other.remove_tag(tag)
                if not other.image_tags:
                    other.image_tag = None
    if image is None:
        image = Image(account, tag, text, repository_name, media_type, digest)  # type: ignore[arg-type]
        repository.images.append(image)
    elif tag is not None:
        image.update_tag(tag)
    if moto_patches.HOOKS.on_state_changed is not None:  # the state folder keeps what ECR lists
        moto_patches.HOOKS.on_state_changed()


def _is_manifest(body: bytes) -> bool:
    """Whether `body` is a JSON image manifest or index of schema 2, the ones ECR takes."""
    try:
        document = json.loads(body)
    except ValueError:
        return False
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        return False
    return isinstance(document.get("layers"), list) or isinstance(document.get("manifests"), list)


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the registry's unix socket."""

    def __init__(self, path: str, timeout: float = 300.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _Gate(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], ecr: LocalEcr) -> None:
        super().__init__(address, _GateHandler)
        self.ecr = ecr

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or stalls is its own business; anything else is the gate's, said in one line."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        self.ecr.on_log(f"the gate failed a request from {client_address[0]}: {error!r}")


class _GateHandler(BaseHTTPRequestHandler):
    """One client connection to the local ECR: checks what ECR checks, then streams to the registry and back."""

    server: _Gate
    protocol_version = "HTTP/1.1"
    server_version = "taskrunner-ecr"
    #: a client that stops sending for this long is dropped (a layer upload keeps sending)
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # ------------------------------------------------------------------ checks

    def _handle(self) -> None:
        ecr = self.server.ecr
        if not (self.path == "/v2" or self.path.startswith("/v2/")):
            self._refuse(404, "NOT_FOUND", "Not Found")
            return
        if not ecr.authorized(self.headers.get("Authorization", "")):
            self._refuse(
                401,
                "DENIED",
                "Not Authorized",
                {"WWW-Authenticate": f'Basic realm="https://{ecr.host}/",service="ecr.amazonaws.com"'},
            )
            return
        path, _, query = self.path.partition("?")
        segments = path.split("/")[1:]
        if "%" in path or "\\" in path or any(part in ("", ".", "..") for part in segments[:-1]):
            # the registry decodes and cleans what the gate would not have checked: names and tags are written out
            self._refuse(
                400, "NAME_INVALID", "The repository name and reference must be written out (no %, \\, . or ..)"
            )
            return
        if path in ("/v2", "/v2/"):
            self._forward()
            return
        route = _ROUTE.fullmatch(path)
        if route is None:  # `_catalog` included: ECR has no such API
            self._refuse(404, "UNSUPPORTED", "The operation is unsupported.")
            return
        name, kind, rest = route["name"], route["kind"], route["rest"]
        mounted_from = parse_qs(query).get("from", [])
        if kind == "blobs" and any(ecr.repository(source) is None for source in mounted_from):
            self._refuse(
                404,
                "NAME_UNKNOWN",
                f"The repository with name '{mounted_from[0]}' does not exist in the registry with id '{ecr.account}'",
            )
            return
        repository = ecr.repository(name)
        if repository is None:
            self._refuse(
                404,
                "NAME_UNKNOWN",
                f"The repository with name '{name}' does not exist in the registry with id '{ecr.account}'",
            )
            return
        if kind != "manifests":
            self._forward()
            return
        reference = rest
        if self.command in ("GET", "HEAD"):
            if _find_image(repository, reference) is None:
                self._refuse(404, "MANIFEST_UNKNOWN", "Requested image not found")
                return
            self._forward()
        elif self.command == "PUT":
            self._put_manifest(repository, name, reference)
        else:
            self._refuse(405, "UNSUPPORTED", "The operation is unsupported.")

    def _put_manifest(self, repository: Any, name: str, reference: str) -> None:
        ecr = self.server.ecr
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit() or int(length) > MAX_MANIFEST_BYTES:
            self._refuse(400, "MANIFEST_INVALID", "Manifest size is too large or its length is not given")
            return
        manifest = self.rfile.read(int(length))
        if not _is_manifest(manifest):  # the registry answers some of these with a 500
            self._refuse(400, "MANIFEST_INVALID", "The manifest is not an image manifest or index (schemaVersion 2)")
            return
        tag = None if _DIGEST.match(reference) else reference
        if tag is not None and not ecr.tag_may_be_pushed(repository, tag):
            self._refuse(
                400,
                "TAG_INVALID",
                f"The image tag '{tag}' already exists in the '{name}' repository and cannot be overwritten "
                "because the repository is immutable.",
            )
            return

        def record(status: int, headers: dict[str, str]) -> None:
            # before the client hears of it: an engine's next request (or describe-images) must see the image
            digest = headers.get("docker-content-digest")
            if status == 201 and digest:
                media_type = self.headers.get("Content-Type") or ""
                with contextlib.suppress(ValueError):
                    media_type = media_type or str(json.loads(manifest).get("mediaType", ""))
                record_image(
                    ecr.account, ecr.region, name, manifest=manifest, media_type=media_type, digest=digest, tag=tag
                )

        self._forward(body=manifest, on_answer=record)

    def _refuse(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        body = _error_body(code, message)
        if self.headers.get("Content-Length", "0") != "0" or self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # the body was not read: this connection cannot carry another request
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # ------------------------------------------------------------------ pass-through

    def _request_body(self) -> tuple[Iterator[bytes] | None, list[tuple[str, str]]]:
        """The request's body as pieces read from the client (None: no body), and its framing header."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunks(), [("Transfer-Encoding", "chunked")]
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            return None, [("Content-Length", "0")] if self.command in ("POST", "PUT", "PATCH") else []
        return self._exactly(length), [("Content-Length", str(length))]

    def _exactly(self, length: int) -> Iterator[bytes]:
        left = length
        while left > 0:
            piece = self.rfile.read(min(CHUNK_BYTES, left))
            if not piece:
                raise ConnectionError("the client closed the connection mid-body")
            left -= len(piece)
            yield piece

    def _chunks(self) -> Iterator[bytes]:
        """A chunked body's pieces, chunk by chunk, framed again for the registry."""
        while True:
            size_line = self.rfile.readline(1024)
            if not size_line:
                raise ConnectionError("the client closed the connection mid-body")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                yield b"0\r\n\r\n"
                return
            yield b"%x\r\n" % size
            yield from self._exactly(size)
            yield b"\r\n"
            self.rfile.readline(1024)  # the CRLF after the chunk

    def _forward(
        self, body: bytes | None = None, on_answer: Callable[[int, dict[str, str]], None] | None = None
    ) -> tuple[int, dict[str, str]]:
        """Send the request to the registry and its answer back, streaming both bodies; (status, headers).
        Repeated headers (podman sends one Accept per manifest type) go through as they came."""
        ecr = self.server.ecr
        headers = [
            (key, value)
            for key, value in self.headers.items()
            if key.lower() not in _HOP_BY_HOP and key.lower() not in ("authorization", "content-length")
        ]
        pieces: Iterator[bytes] | None
        if body is not None:
            pieces, framing = iter((body,)), [("Content-Length", str(len(body)))]
        else:
            pieces, framing = self._request_body()
        upstream = _UnixConnection(str(ecr.socket_path))
        try:
            try:
                upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in [*headers, *framing]:
                    upstream.putheader(key, value)
                upstream.endheaders()
                for piece in pieces or ():
                    upstream.send(piece)
                answer = upstream.getresponse()
            except (OSError, http.client.HTTPException, ValueError) as error:
                self.close_connection = True
                self._refuse(502, "UNAVAILABLE", f"the local registry did not answer: {error}")
                return 502, {}
            answer_headers = {key.lower(): value for key, value in answer.getheaders()}
            if on_answer is not None:
                on_answer(answer.status, answer_headers)
            self.send_response_only(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            bodiless = self.command == "HEAD" or answer.status in (204, 304) or 100 <= answer.status < 200
            chunked = not bodiless and answer.length is None
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if not bodiless:
                while piece := answer.read(CHUNK_BYTES):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            return answer.status, answer_headers
        finally:
            upstream.close()


class LocalEcr:
    """The local ECR's registry for one account and region: `docker-registry` on a unix socket under `work_dir`,
    and the gate on `host:port` (another free port when `port` is taken)."""

    def __init__(
        self,
        *,
        account: str,
        region: str,
        host: str,
        port: int,
        work_dir: Path,
        executable: str | None = None,
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        self.account = account
        self.region = region
        self.bind_host = host
        self.requested_port = port
        self.work_dir = work_dir
        self.executable = executable
        self.on_log = on_log or (lambda line: None)
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._gate: _Gate | None = None
        self._serving: threading.Thread | None = None
        self._token: tuple[str, float] | None = None
        self._token_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    @property
    def socket_path(self) -> Path:
        return self.work_dir / "registry.sock"

    @property
    def storage(self) -> Path:
        return self.work_dir / "storage"

    @property
    def host(self) -> str:
        """The ECR registry this one stands for: `<account>.dkr.ecr.<region>.amazonaws.com`."""
        return ecr_host(self.account, self.region)

    @property
    def endpoint(self) -> str:
        """Where the engine pushes and pulls (the local alias of the ECR host): `127.0.0.1:<port>`."""
        return f"{self.bind_host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> LocalEcr:
        executable = self.executable or find_registry()
        if executable is None:
            raise RegistryUnavailable(f"{REGISTRY_COMMAND} is not installed: {HOW_TO_GET_REGISTRY}")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        config = self.work_dir / "config.yml"
        config.write_text(
            REGISTRY_CONFIG.format(storage=self.storage, socket=self.socket_path, secret=secrets.token_hex(16))
        )
        log = (self.work_dir / "registry.log").open("ab")
        try:
            self._process = subprocess.Popen(
                [*_dies_with_parent(), executable, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches the stack, which stops the registry itself
            )
        finally:
            log.close()
        try:
            self._wait_ready()
            self._gate = self._bind()
        except BaseException:
            self.stop()
            raise
        self.port = self._gate.server_address[1]
        self._serving = threading.Thread(target=self._gate.serve_forever, name="ecr-gate", daemon=True)
        self._serving.start()
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                said = (self.work_dir / "registry.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise RegistryUnavailable(f"{REGISTRY_COMMAND} exited at start: {' '.join(said) or 'no reason'}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = _UnixConnection(str(self.socket_path), timeout=2.0)
                try:
                    connection.request("GET", "/v2/")
                    if connection.getresponse().status == 200:
                        return
                finally:
                    connection.close()
            time.sleep(0.05)
        raise RegistryUnavailable(f"{REGISTRY_COMMAND} did not answer within {START_TIMEOUT_SECONDS:.0f} s")

    def _bind(self) -> _Gate:
        try:
            return _Gate((self.bind_host, self.requested_port), self)
        except OSError as error:
            if self.requested_port == 0:
                raise
            gate = _Gate((self.bind_host, 0), self)
            self.on_log(
                f"port {self.requested_port} is not free ({error.strerror}): the local ECR listens on "
                f"{self.bind_host}:{gate.server_address[1]} instead (TASKRUNNER_REGISTRY_PORT chooses)"
            )
            return gate

    def stop(self) -> None:
        if self._gate is not None:
            self._gate.shutdown()
            self._gate.server_close()
            self._gate = None
        if self._serving is not None:
            self._serving.join(timeout=STOP_TIMEOUT_SECONDS)
            self._serving = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        self.socket_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ what ECR says

    def authorized(self, header: str) -> bool:
        """Whether an Authorization header carries `AWS` and a password GetAuthorizationToken issued."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 (UnicodeDecodeError)
            return False
        return user == "AWS" and moto_patches.ecr_token_valid(self.account, self.region, password)

    def repository(self, name: str) -> Any:
        """moto's ECR repository `name`, or None."""
        return _ecr_backend(self.account, self.region).repositories.get(name)

    def tag_may_be_pushed(self, repository: Any, tag: str) -> bool:
        """Whether `tag` may (re)point at a pushed manifest: not when it exists and the repository's tag
        mutability (with its exclusion filters) makes it immutable."""
        from moto.ecr.exceptions import ImageAlreadyExistsException

        try:
            _ecr_backend(self.account, self.region)._resolve_image_tag_mutability(repository, tag)
        except ImageAlreadyExistsException:
            return False
        return True

    def credentials(self) -> tuple[str, str]:
        """A user and password for the registry, as `aws ecr get-login-password` gives them (the agent's pulls
        share one token while it has more than an hour left, as the ECS agent caches its own)."""
        with self._token_lock:
            if self._token is None or self._token[1] - time.time() < 3600:
                password, expires = moto_patches.issue_ecr_token(self.account, self.region)
                self._token = (password, expires.timestamp())
            return "AWS", self._token[0]

    def on_images_deleted(self, account: str, region: str, repository: str, digests: list[str]) -> None:
        """moto's ECR deleted these images (BatchDeleteImage): delete their manifests from the registry too."""
        if (account, region) != (self.account, self.region) or self._process is None:
            return
        for digest in digests:
            connection = _UnixConnection(str(self.socket_path), timeout=30.0)
            try:
                connection.request("DELETE", f"/v2/{repository}/manifests/{digest}")
                answer = connection.getresponse()
                answer.read()
                if answer.status not in (202, 404):
                    self.on_log(f"the registry did not delete {repository}@{digest}: HTTP {answer.status}")
            except (OSError, http.client.HTTPException) as error:
                self.on_log(f"the registry did not delete {repository}@{digest}: {error}")
            finally:
                connection.close()

    # ------------------------------------------------------------------ images

    def local_reference(self, image: str) -> str | None:
        """The engine's name for `image` when this registry serves it: an ECR URI of this account and region
        (`<account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag|@digest]`) or the alias itself
        (`127.0.0.1:<port>/…`); None for any other image."""
        for prefix in (f"{self.host}/", f"{self.endpoint}/", f"localhost:{self.port}/"):
            if image.startswith(prefix):
                return f"{self.endpoint}/{image.removeprefix(prefix)}"
        return None
