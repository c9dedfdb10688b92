"""taskrunner_local.sam_local's own parts, without an engine: the architecture check, the build's cache key, the
template for local use, and the relay from SAM's bridge network to the stack."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from taskrunner_local import sam_local


def test_the_hosts_own_architecture_runs_and_the_other_needs_a_binfmt_handler(tmp_path: Path) -> None:
    # Given a binfmt_misc folder without handlers
    host = sam_local.host_architecture()
    other = "arm64" if host == "x86_64" else "x86_64"
    # Then
    assert sam_local.can_run(host, tmp_path)
    assert not sam_local.can_run(other, tmp_path)
    with pytest.raises(sam_local.SamLocalUnavailable, match=f"Architecture={host}"):
        sam_local.check_architecture(other, tmp_path)
    # When a handler is there and enabled
    (tmp_path / sam_local.EMULATORS[other]).write_text("enabled\ninterpreter /usr/bin/qemu\n")
    # Then
    assert sam_local.can_run(other, tmp_path)
    sam_local.check_architecture(other, tmp_path)


def test_an_architecture_the_template_does_not_allow_is_refused() -> None:
    with pytest.raises(sam_local.SamLocalUnavailable, match="arm64 or x86_64"):
        sam_local.check_architecture("riscv64")


def test_the_build_key_changes_with_the_architecture_and_any_input_file(tmp_path: Path, monkeypatch) -> None:
    # Given inputs under the repository root
    monkeypatch.setattr(sam_local, "ROOT", tmp_path)
    (tmp_path / "functions" / "api").mkdir(parents=True)
    code = tmp_path / "functions" / "api" / "app.py"
    code.write_text("x = 1\n")
    (tmp_path / "functions" / "api" / "__pycache__").mkdir()
    template = tmp_path / "template.yaml"
    template.write_text("Resources: {}\n")
    inputs = (template, tmp_path / "functions")
    before = sam_local.inputs_digest("x86_64", inputs)
    # Then compiled files do not count, the architecture and the code do
    (tmp_path / "functions" / "api" / "__pycache__" / "app.cpython-313.pyc").write_bytes(b"\0")
    assert sam_local.inputs_digest("x86_64", inputs) == before
    assert sam_local.inputs_digest("arm64", inputs) != before
    code.write_text("x = 2\n")
    assert sam_local.inputs_digest("x86_64", inputs) != before


def test_the_local_template_declares_the_endpoint_for_every_function(tmp_path: Path) -> None:
    # Given a built template
    build = sam_local.local_build("x86_64", tmp_path)
    build.build_dir.mkdir(parents=True)
    (build.build_dir / "template.yaml").write_text(
        "Globals:\n  Function:\n    Environment:\n      Variables:\n        TASKS_TABLE_NAME:\n          Ref: TasksTable\n"
        "Resources:\n  ApiFunction:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: ApiFunction\n"
    )
    # When
    sam_local.write_local_template(build)
    # Then the template's variables stay, and AWS_ENDPOINT_URL joins them (empty: AWS's own endpoints)
    variables = json.loads(build.template.read_text())["Globals"]["Function"]["Environment"]["Variables"]
    assert variables == {"TASKS_TABLE_NAME": {"Ref": "TasksTable"}, "AWS_ENDPOINT_URL": ""}
    assert build.parameter_overrides == ["--parameter-overrides", "Architecture=x86_64"]


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.sendall(connection.recv(1024).upper())

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_the_relay_forwards_connections_from_its_subnet() -> None:
    # Given a service on 127.0.0.1 and a relay that admits loopback peers
    server, port = _echo_server()
    with (
        server,
        sam_local.BridgeRelay(("127.0.0.1", port), "127.0.0.0/8") as relay,
        # When a client connects through the relay
        socket.create_connection(("127.0.0.1", relay.port), timeout=5) as client,
    ):
        client.sendall(b"ping")
        # Then the service answers
        assert client.recv(1024) == b"PING"


def _answer(relay: sam_local.BridgeRelay) -> bytes:
    """What a loopback client that sends `ping` through `relay` hears back (nothing once it is closed)."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as client:
        try:
            client.sendall(b"ping")
            return client.recv(1024)
        except ConnectionResetError:
            return b""


def test_the_relay_closes_connections_from_outside_its_subnet() -> None:
    # Given a relay that admits the bridge's subnet only
    server, port = _echo_server()
    with server, sam_local.BridgeRelay(("127.0.0.1", port), "10.88.0.0/16") as relay:
        # When a loopback client connects, Then it is closed without an answer
        assert _answer(relay) == b""
        assert relay.refused == 1


def test_the_relay_closes_connections_from_the_hosts_own_address_on_the_bridge() -> None:
    # Given a relay whose subnet holds the client, but whose gateway (the host's own address) is the client's
    server, port = _echo_server()
    with server, sam_local.BridgeRelay(("127.0.0.1", port), "127.0.0.0/8", gateway="127.0.0.1") as relay:
        # When the host itself connects (as a slirp4netns task container's connections do), Then it is closed
        assert _answer(relay) == b""
        assert relay.refused == 1


def test_no_docker_api_answers_on_a_missing_socket(tmp_path: Path) -> None:
    assert not sam_local.docker_api_answers(tmp_path / "docker.sock")


def test_a_socket_path_too_long_for_unix_sockets_moves_to_tmp(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    assert sam_local.default_socket(deep).parent.parent == Path("/tmp")
    assert sam_local.default_socket(Path("/work/e")) == Path("/work/e/docker.sock")
