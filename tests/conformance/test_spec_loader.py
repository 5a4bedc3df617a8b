"""The spec loader itself: the folder is there, every `$ref` resolves, the schemas are valid."""

from __future__ import annotations

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.conformance.spec import (
    OMITTED_SCHEMA_DIRS,
    PATH_DIRS,
    PATH_FILES,
    ZERO_TIME,
    Spec,
    SpecMissing,
    spec_dir,
)


def test_the_spec_folder_is_there():
    try:
        spec_dir()
    except SpecMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def test_every_ref_resolves_or_points_into_a_folder_left_out_on_purpose(spec: Spec):
    broken, omitted = [], set()
    for where, ref, target in spec.refs():
        if target.exists():
            continue
        if spec.is_omitted(target):
            omitted.add(spec.rel(target))
        else:
            broken.append(f"{where}: $ref {ref}")
    assert not broken, "these $refs point at files that are not in the extract:\n" + "\n".join(
        broken)
    # The README says only stacks, environments and integrations were left out.
    assert omitted, "expected refs into the folders left out on purpose"
    assert all(any(f"/{d}/" in f"/{path}" for d in OMITTED_SCHEMA_DIRS) for path in omitted)


def test_every_schema_file_is_a_valid_2020_12_schema(spec: Spec):
    problems = []
    for path in spec.files("components/schemas"):
        try:
            Draft202012Validator.check_schema(spec.load(path))
        except Exception as exc:  # the error names the keyword
            problems.append(f"{spec.rel(path)}: {str(exc).splitlines()[0]}")
    assert not problems, "\n".join(problems)


def test_every_path_file_with_operations_is_mapped_to_its_url(spec: Spec):
    unmapped = []
    for folder in PATH_DIRS:
        for path in spec.files(folder):
            document = yaml.safe_load(path.read_text())
            if document and spec.rel(path) not in PATH_FILES:
                unmapped.append(spec.rel(path))
    assert not unmapped, f"path files with no URL in spec.PATH_FILES: {unmapped}"


def _discriminators(node, where=""):
    if isinstance(node, dict):
        if "discriminator" in node:
            yield where, node
        for key, value in node.items():
            yield from _discriminators(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _discriminators(value, f"{where}/{index}")


def test_every_discriminator_mapping_names_a_member_of_its_oneof(spec: Spec):
    """jsonschema ignores `discriminator`; the `oneOf` beside it must say the same thing."""
    problems, seen = [], 0
    for path in spec.files("components/schemas"):
        for where, node in _discriminators(spec.load(path)):
            seen += 1
            members = {(path.parent / m["$ref"]).resolve() for m in node.get("oneOf", [])}
            for value, target in node["discriminator"].get("mapping", {}).items():
                if (path.parent / target).resolve() not in members:
                    problems.append(f"{spec.rel(path)}{where}: mapping {value} -> {target} is "
                                    "not one of the oneOf members")
    assert seen >= 4
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("value, valid", [
    (ZERO_TIME, True), ("2024-02-29T12:30:00.123Z", True), ("2024-02-29T12:30:00+02:00", True),
    ("2024-02-30T12:30:00Z", False), ("2024-02-29 12:30:00Z", False), ("2024-02-29T12:30:00", False),
    ("", False), ("yesterday", False),
])
def test_date_time_format_is_checked(spec: Spec, value, valid):
    validator = spec.schema_validator_for("components/schemas/DateTime.yml")
    assert validator.is_valid(value) is valid


@pytest.mark.parametrize("value, valid", [
    ("651586fca6078e98982dbd90", True), ("651586fca6078e98982dbd9", False),
    ("651586fca6078e98982dbd9z", False), ("my-image", False),
])
def test_objectid_format_is_checked(spec: Spec, value, valid):
    assert spec.schema_validator_for("components/schemas/ID.yml").is_valid(value) is valid


def test_a_ref_into_a_left_out_folder_accepts_anything(spec: Spec):
    validator = spec.schema_validator_for("components/schemas/includes/StackIncludes.yml")
    assert validator.is_valid({"651586fca6078e98982dbd90": {"anything": ["at", 1, None]}})
    assert any(p.startswith("components/schemas/stacks/") for p in spec.omitted_refs)


def test_oneof_with_a_discriminator_takes_exactly_one_member(spec: Spec):
    validator = spec.schema_validator_for("components/schemas/images/origins/ImageOrigin.yml")
    assert validator.is_valid({"type": "none"})
    assert validator.is_valid({"type": "docker-hub", "details": {"target": "busybox:1.36"}})
    assert not validator.is_valid({"type": "docker-hub", "details": {}})
    assert not validator.is_valid({"type": "ftp", "details": {}})


def test_the_error_schema_requires_status_code_and_title_after_the_fix(spec: Spec):
    validator = spec.schema_validator_for("components/schemas/errors/Error.yml")
    assert validator.is_valid({"status": 404, "code": "404.image", "title": "Not found"})
    assert not validator.is_valid({"status": 404, "code": "404.image"})
    assert not validator.is_valid({"code": "404.image", "title": "Not found"})
