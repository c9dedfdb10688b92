"""checkov (IaC security checks) on template.yaml: no failed check, and every skipped check says why.

checkov runs from its own tool environment, .tools/checkov (`make checkov-cli`; `make test` installs it), because its
dependencies conflict with the project's pins. Its CloudFormation framework reads SAM templates as they are
written: it checks AWS::Serverless::Function and the other SAM types with SAM Globals merged in, and plain
CloudFormation resources as usual (it does not run the SAM transform, so the resources SAM generates are not
checked). A finding is fixed in template.yaml or skipped where it is raised, in the resource's Metadata:

    Metadata:
      checkov:
        skip:
          - id: CKV_AWS_xxx
            comment: the reason a reviewer would accept
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
REQUIREMENTS = ROOT / "requirements-checkov.txt"

pytestmark = pytest.mark.xdist_group("checkov")  # one checkov run for the module (`-n 2 --dist loadgroup`)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.skip(f"checkov not installed at {CHECKOV.relative_to(ROOT)} (run `make checkov-cli`)")
    result = subprocess.run(
        # --skip-download: offline, without the guidelines and severities of the vendor's platform.
        [str(CHECKOV), "-f", str(TEMPLATE), "--framework", "cloudformation", "--output", "json", "--skip-download"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # checkov exits 1 when a check fails; the JSON report is on stdout either way.
    assert result.returncode in (0, 1), f"checkov exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    output = json.loads(result.stdout)
    reports = output if isinstance(output, list) else [output]
    [cloudformation] = [r for r in reports if r.get("check_type") == "cloudformation"]
    return cloudformation  # type: ignore[no-any-return]


def _describe(check: dict[str, Any]) -> str:
    lines = check.get("file_line_range") or ["?", "?"]
    return f"{check['check_id']} {check['resource']}: {check['check_name']} (template.yaml:{lines[0]}-{lines[1]})"


def test_checkov_is_the_pinned_version(report: dict[str, Any]) -> None:
    [pinned] = re.findall(r"^checkov==(\S+)$", REQUIREMENTS.read_text(), flags=re.MULTILINE)
    assert report["summary"]["checkov_version"] == pinned, "stale .tools/checkov: run `make checkov-cli`"


def test_no_checkov_check_fails(report: dict[str, Any]) -> None:
    summary, results = report["summary"], report["results"]
    assert summary["parsing_errors"] == 0, results.get("parsing_errors")
    assert summary["resource_count"] > 0 and summary["passed"] > 0, f"checkov checked nothing: {summary}"
    failures = [_describe(check) for check in results["failed_checks"]]
    assert not failures, (
        f"{len(failures)} failed checkov checks (fix them, or skip them in Metadata with a reason):\n"
        + ("\n".join(failures))
    )


def test_every_skipped_check_gives_its_reason(report: dict[str, Any]) -> None:
    unexplained = [
        _describe(check)
        for check in report["results"]["skipped_checks"]
        if len((check["check_result"].get("suppress_comment") or "").split()) < 5
        or check["check_result"].get("suppress_comment") == "No comment provided"
    ]
    assert not unexplained, "checkov skips without a reason:\n" + "\n".join(unexplained)
