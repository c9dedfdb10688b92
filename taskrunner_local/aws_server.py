"""moto in server mode, on 127.0.0.1, with Step Functions execution on and moto's gaps patched."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import boto3
import requests

from taskrunner_local import moto_patches
from taskrunner_local.config import LocalConfig


def prepare_environment(config: LocalConfig) -> None:
    """Environment for this process and everything it starts: credentials, region and the endpoint.

    moto's Step Functions interpreter builds its own boto3 clients for `http://localhost:$MOTO_PORT`, so
    MOTO_PORT must name our port before the first execution runs."""
    os.environ["MOTO_PORT"] = str(config.aws_port)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ["AWS_DEFAULT_REGION"] = config.region
    os.environ["AWS_REGION"] = config.region
    os.environ.pop("AWS_PROFILE", None)
    # Quiet moto's request log, and its interpreter's reports of errors that the state machine catches.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)


class AwsServer:
    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self._server: Any = None

    def start(self, before_serving: Callable[[], None] | None = None) -> None:
        """Patch moto, run `before_serving` (the durable stack restores moto's state there), then serve."""
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer

        prepare_environment(self.config)
        moto_patches.apply_all()
        if before_serving is not None:
            before_serving()
        self._server = ThreadedMotoServer(ip_address=self.config.host, port=self.config.aws_port, verbose=False)
        self._server.start()
        response = requests.post(
            f"{self.config.aws_endpoint}/moto-api/config",
            json={"stepfunctions": {"execute_state_machine": True}},
            timeout=10,
        )
        response.raise_for_status()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


class EndpointSession:
    """A boto3 session whose clients all talk to the local endpoint."""

    def __init__(self, config: LocalConfig) -> None:
        self._session = boto3.session.Session(region_name=config.region)
        self._endpoint = config.aws_endpoint

    def client(self, service: str):  # type: ignore[no-untyped-def]
        return self._session.client(service, endpoint_url=self._endpoint)
