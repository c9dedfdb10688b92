"""One Lambda execution environment: a process that imports a function's handler once and serves
invocations, one at a time, over a pipe (run by taskrunner_local.runtime, never by hand).

Protocol: one JSON object per line. The runtime writes {"event", "request_id", "deadline_ms"} to stdin; the
worker answers {"ok": true, "result": ...} or {"ok": false, "error": {"errorMessage", "errorType",
"stackTrace"}} on the protocol pipe. The handler's own stdout and stderr go to the worker's stderr, which the
runtime shows on the console.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
import warnings
from typing import Any


class LambdaContext:
    def __init__(self, request_id: str, deadline_ms: int) -> None:
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.invoked_function_arn = os.environ["TASKRUNNER_FUNCTION_ARN"]
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{os.getpid():x}"
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def main() -> None:
    code_dir, handler_spec, *layer_dirs = sys.argv[1:]
    # Powertools warns on every request that emitted no business metric (reads emit none): not news locally.
    warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the handler's prints go to stderr, the console
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.path[:0] = [code_dir, *layer_dirs]
    module_name, _, function_name = handler_spec.rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
    except BaseException as exc:  # an import error is reported on every invocation, as Lambda does
        init_error: dict[str, Any] | None = {**_error(exc), "errorType": "Runtime.ImportModuleError"}
        handler = None
    else:
        init_error = None
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if init_error is not None:
            protocol.write(json.dumps({"ok": False, "error": init_error}) + "\n")
            continue
        context = LambdaContext(request["request_id"], request["deadline_ms"])
        try:
            result = handler(request["event"], context)
            answer = {"ok": True, "result": result}
            text = json.dumps(answer, default=str)
        except BaseException as exc:  # the Lambda error shape, never a dead runtime
            text = json.dumps({"ok": False, "error": _error(exc)})
        sys.stdout.flush()
        sys.stderr.flush()
        protocol.write(text + "\n")


if __name__ == "__main__":
    main()
