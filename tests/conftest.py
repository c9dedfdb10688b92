"""Every stack a test starts, in-process or as `taskrunner local up` in a child process, is ephemeral unless the
test asks for a durable one (TASKRUNNER_EPHEMERAL=0 and its own TASKRUNNER_STATE_DIR): no test touches the
project's own state folder, `.taskrunner/`, and parallel tests never contend for one."""

from __future__ import annotations

import os

os.environ["TASKRUNNER_EPHEMERAL"] = "1"
