"""The conformance suite: the API's responses checked against the Cycle spec extract.

Run with `make conformance` (never part of `make test`): it reads the spec from IMAGEJOBS_SPEC_DIR
(default ../shared/cycle-api-spec from the repository root) and fails, never skips, without it.
The fixtures of tests/conftest.py (`api`, `tenant`, `worker`, `pushed_image`...) apply here too.
"""

from __future__ import annotations

import sys

import pytest

from tests.conformance.spec import Spec, SpecMissing, spec_dir


def pytest_configure(config: pytest.Config) -> None:
    """Without the spec the whole run stops with the reason (exit status 4): it never skips."""
    try:
        spec_dir()
    except SpecMissing as exc:
        message = str(exc)
    else:
        return
    raise pytest.UsageError(message)


@pytest.fixture(scope="session")
def spec() -> Spec:
    try:
        return Spec(spec_dir())
    except SpecMissing as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep the call's report on the item, for the `conform` fixture's teardown."""
    report = yield
    if report.when == "call":
        item.conformance_call_report = report
    return report


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """How many responses were checked against the spec, and each one that did not conform."""
    module = sys.modules.get("tests.conformance.test_spec_conformance")
    checks = getattr(module, "CHECKS", None)
    if not checks:
        return
    failed = [c for c in checks if c.problems]
    write = terminalreporter.write_line
    terminalreporter.section("conformance")
    write(f"{len(checks)} responses validated against the spec: {len(checks) - len(failed)} "
          f"conform, {len(failed)} do not.")
    for check in failed:
        write(f"- {check.label}")
        for problem in check.problems:
            write(f"    {problem}")
