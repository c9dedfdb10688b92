"""Which agent mode runs: `auto` (the default) runs containers when an engine works and falls back loudly to host
processes when none does; `container` refuses to start without an engine; `process` runs host processes."""

from __future__ import annotations

import pytest

from taskrunner_local.config import AGENT_MODES, LocalConfig
from taskrunner_local.engine import Engine
from taskrunner_local.images import BUSYBOX_IMAGE, PYTHON_IMAGE
from taskrunner_local.stack import EngineUnavailable, choose_agent_mode

WHY = "neither podman nor docker is on the PATH: run `make engine` (as root, on Debian)"


class FakeEngine(Engine):
    """An engine that answers without running anything."""

    def version(self) -> str:
        return "4.3.1"

    def image_exists(self, ref: str) -> bool:
        return ref not in self.extra_env.get("MISSING", "").split(",")


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Engine, "detect", classmethod(lambda cls, *args, **kwargs: None))
    monkeypatch.setattr(Engine, "why_not", staticmethod(lambda *args, **kwargs: WHY))


def an_engine(monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...] = ()) -> FakeEngine:
    engine = FakeEngine("podman", "/usr/bin/podman", {"MISSING": ",".join(missing)})
    monkeypatch.setattr(Engine, "detect", classmethod(lambda cls, *args, **kwargs: engine))
    monkeypatch.setattr(Engine, "why_not", staticmethod(lambda *args, **kwargs: None))
    return engine


def test_auto_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given
    monkeypatch.delenv("TASKRUNNER_AGENT_MODE", raising=False)
    # Then
    assert LocalConfig().agent_mode == "auto"
    assert AGENT_MODES == ("auto", "container", "process")


@pytest.mark.parametrize("mode", ["container", "process"])
def test_the_environment_chooses_a_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    # Given
    monkeypatch.setenv("TASKRUNNER_AGENT_MODE", mode)
    # Then
    assert LocalConfig().agent_mode == mode


@pytest.mark.parametrize("mode", ["vm", "Container", "processes"])
def test_a_bad_mode_fails_loudly(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    # Given
    monkeypatch.setenv("TASKRUNNER_AGENT_MODE", mode)
    # When / Then
    with pytest.raises(ValueError, match="TASKRUNNER_AGENT_MODE"):
        LocalConfig()
    with pytest.raises(ValueError, match="none of auto, container, process"):
        choose_agent_mode(mode)


def test_auto_with_a_working_engine_runs_containers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given
    engine = an_engine(monkeypatch)
    # When
    choice = choose_agent_mode("auto")
    # Then
    assert (choice.mode, choice.requested, choice.engine) == ("container", "auto", engine)
    assert choice.headline() == "container (auto: podman 4.3.1 works)"
    assert not choice.fallback
    assert choice.warnings() == []


def test_auto_without_an_engine_falls_back_to_processes_loudly(no_engine: None) -> None:
    # When
    choice = choose_agent_mode("auto")
    # Then
    assert (choice.mode, choice.engine, choice.fallback) == ("process", None, True)
    assert choice.headline() == (
        f"process (auto: no container engine works: {WHY}) — tasks are host processes, not isolated"
    )
    warnings = "\n".join(choice.warnings())
    assert warnings.startswith("WARNING: no container engine works, so tasks run as HOST PROCESSES")
    assert f"why: {WHY}" in warnings
    assert "`make engine images` (as root, on Debian)" in warnings


def test_auto_with_an_engine_that_does_not_answer_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an engine whose `version` fails
    an_engine(monkeypatch)

    def broken(self: Engine) -> str:
        raise RuntimeError("podman version failed: cannot connect")

    monkeypatch.setattr(FakeEngine, "version", broken)
    # When
    choice = choose_agent_mode("auto")
    # Then
    assert (choice.mode, choice.engine, choice.fallback) == ("process", None, True)
    assert "podman version failed: cannot connect" in choice.headline()


def test_container_explicitly_with_an_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given
    an_engine(monkeypatch)
    # When
    choice = choose_agent_mode("container")
    # Then
    assert choice.mode == "container" and not choice.fallback
    assert choice.headline() == "container (chosen explicitly, podman 4.3.1 works)"


def test_container_explicitly_without_an_engine_refuses_to_start(no_engine: None) -> None:
    # When / Then: no fallback
    with pytest.raises(EngineUnavailable, match="container mode needs a container engine and none works: neither"):
        choose_agent_mode("container")


def test_process_explicitly_says_so_and_does_not_look_for_an_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an engine that must not be looked for
    def detect(cls: type[Engine], path: str | None = None, paths: object = None) -> Engine | None:
        raise AssertionError("process mode looked for an engine")

    monkeypatch.setattr(Engine, "detect", classmethod(detect))
    # When
    choice = choose_agent_mode("process")
    # Then
    assert (choice.mode, choice.engine, choice.fallback) == ("process", None, False)
    assert choice.headline() == "process (chosen explicitly) — tasks are host processes, not isolated"
    assert choice.warnings() == []


@pytest.mark.parametrize("requested", ["auto", "container"])
def test_missing_images_are_named_with_how_to_build_them(monkeypatch: pytest.MonkeyPatch, requested: str) -> None:
    # Given an engine without the offline Python image
    an_engine(monkeypatch, missing=(PYTHON_IMAGE,))
    # When
    choice = choose_agent_mode(requested)
    # Then
    assert choice.mode == "container" and choice.missing_images == (PYTHON_IMAGE,)
    [warning] = choice.warnings()
    assert f"images {PYTHON_IMAGE} are not built: `make images` builds {PYTHON_IMAGE} and busybox" in warning
    assert BUSYBOX_IMAGE not in warning
