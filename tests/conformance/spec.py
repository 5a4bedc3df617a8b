"""The Cycle API spec extract, read from its YAML files, and JSON Schema validators built from it.

The spec is OpenAPI 3.1: its schemas are JSON Schema 2020-12 with OpenAPI extras. What that means
for validation here:

- `$ref`s are relative to the file they are in (`../ID.yml`, `./sources/...`). Every file is a
  resource at its `file://` URI in a `referencing` registry, so they resolve as written.
- Files the extract left out on purpose (stacks, environments, integrations: see the spec's
  README) are treated as `{}`, which accepts anything. Any other missing file is an error.
- `discriminator` is an OpenAPI keyword that JSON Schema ignores: the `oneOf` beside it is what is
  checked, so exactly one member must match, as the discriminator promises.
- `format` is checked for `date-time` (RFC 3339; Cycle's zero time `0001-01-01T00:00:00Z` is valid
  RFC 3339 and is accepted) and `objectid` (24 hex characters).
- Fixes of plain typos in the spec (SPEC_FIXES below) are applied as the files are read; the
  test module lists each of them in DELIBERATE_DIFFERENCES and checks that they all still apply.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPEC_DIR = "../shared/cycle-api-spec"

# Folders under components/schemas that the extract left out on purpose (README): a `$ref` into
# them is read as `{}` (any value).
OMITTED_SCHEMA_DIRS = ("stacks", "environments", "hubs/integrations")

# Each path file of the extract and the URL it describes. The files do not carry their URL (the
# root document that maps them is not in the extract); these are the ones the spec's README names.
PATH_FILES: dict[str, str] = {
    "platform/paths/images/images.yml": "/v1/images",
    "platform/paths/images/image.yml": "/v1/images/{imageId}",
    "platform/paths/images/buildLog.yml": "/v1/images/{imageId}/build-log",
    "platform/paths/images/rootTasks.yml": "/v1/images/tasks",
    "platform/paths/images/tasks.yml": "/v1/images/{imageId}/tasks",
    "platform/paths/images/sources/sources.yml": "/v1/images/sources",
    "platform/paths/images/sources/source.yml": "/v1/images/sources/{sourceId}",
    "platform/paths/images/sources/access.yml": "/v1/images/sources/{sourceId}/access",
    "platform/paths/jobs/jobs.yml": "/v1/jobs",
    "platform/paths/jobs/job.yml": "/v1/jobs/{jobId}",
}
# Where the checked path files live; every operation in them must be in PATH_FILES.
PATH_DIRS = ("platform/paths/images", "platform/paths/jobs")
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class SpecMissing(Exception):
    pass


def spec_dir() -> Path:
    """IMAGEJOBS_SPEC_DIR, or the default; a relative path is taken from the repository root."""
    raw = os.environ.get("IMAGEJOBS_SPEC_DIR") or DEFAULT_SPEC_DIR
    path = Path(raw)
    if not path.is_absolute():
        path = ROOT / path
    path = path.resolve()
    if not (path / "components").is_dir() or not (path / "platform" / "paths").is_dir():
        raise SpecMissing(
            f"The Cycle API spec extract was not found at {path} (from IMAGEJOBS_SPEC_DIR="
            f"{os.environ.get('IMAGEJOBS_SPEC_DIR', '<unset>')!s}, default {DEFAULT_SPEC_DIR} from "
            f"the repository root). The conformance suite needs it: point IMAGEJOBS_SPEC_DIR at the "
            f"folder that holds components/ and platform/paths/ (make conformance SPEC_DIR=...).")
    return path


# --- Spec fixes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecFix:
    """A typo in the spec, corrected as its file is read."""

    file: str  # relative to the spec folder
    what: str
    apply: Callable[[Any], bool]  # changes the document in place; True if it changed something


def _fix_error_required(document: dict[str, Any]) -> bool:
    if document.get("required") == ["status, code, title"]:
        document["required"] = ["status", "code", "title"]
        return True
    return False


SPEC_FIXES = (
    SpecFix("components/schemas/errors/Error.yml",
            'required: ["status, code, title"] (one string naming three properties) read as '
            '["status", "code", "title"]', _fix_error_required),
)


# --- Formats --------------------------------------------------------------------------------

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_OBJECTID = re.compile(r"^[0-9a-fA-F]{24}$")
ZERO_TIME = "0001-01-01T00:00:00Z"

format_checker = FormatChecker(formats=())


@format_checker.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    # The zero time parses too (year 1 is a valid year); this catches month 13, second 61...
    datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    return True


@format_checker.checks("objectid", raises=ValueError)
def _is_objectid(value: object) -> bool:
    if isinstance(value, str) and not _OBJECTID.match(value):
        raise ValueError(f"{value!r} is not a 24-hex-character object id")
    return True


# --- Loading --------------------------------------------------------------------------------


def _string_keys(node: Any) -> Any:
    """YAML reads `200:` as an int; JSON (and JSON pointers) only know string keys."""
    if isinstance(node, dict):
        return {str(k): _string_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_string_keys(v) for v in node]
    return node


def _pointer_escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class Operation:
    method: str  # lower case
    path: str  # the spec's URL template, e.g. /v1/images/{imageId}
    file: str  # relative to the spec folder
    document: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.method.upper()} {self.path}"


@dataclass
class Spec:
    root: Path
    _files: dict[Path, Any] = field(default_factory=dict)
    applied_fixes: list[SpecFix] = field(default_factory=list)
    omitted_refs: set[str] = field(default_factory=set)  # files read as {} (left out on purpose)
    registry: Registry = field(init=False)

    def __post_init__(self) -> None:
        self.registry = Registry(retrieve=self._retrieve)
        for fix in SPEC_FIXES:  # read the fixed files now, so the applied fixes are known
            self.load(self.root / fix.file)

    # Files

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def is_omitted(self, path: Path) -> bool:
        rel = path.resolve().relative_to(self.root).as_posix()
        return any(rel.startswith(f"components/schemas/{d}/") for d in OMITTED_SCHEMA_DIRS)

    def load(self, path: Path) -> Any:
        """A YAML file of the spec with string keys and SPEC_FIXES applied; {} if left out."""
        path = path.resolve()
        if path not in self._files:
            if not path.is_relative_to(self.root):
                raise LookupError(f"{path} is outside the spec folder {self.root}")
            if not path.exists():
                if not self.is_omitted(path):
                    raise LookupError(f"the spec refers to {self.rel(path)}, which does not exist")
                self.omitted_refs.add(self.rel(path))
                self._files[path] = {}
            else:
                document = _string_keys(yaml.safe_load(path.read_text()))
                for fix in SPEC_FIXES:
                    if (self.root / fix.file).resolve() == path and fix.apply(document):
                        self.applied_fixes.append(fix)
                self._files[path] = document
        return self._files[path]

    def _retrieve(self, uri: str) -> Resource:
        parts = urlsplit(uri)
        if parts.scheme != "file":
            raise LookupError(f"unexpected $ref URI {uri}")
        contents = self.load(Path(unquote(parts.path)))
        return Resource(contents=contents, specification=DRAFT202012)

    def files(self, under: str = "") -> list[Path]:
        return sorted((self.root / under).rglob("*.yml"))

    # Operations

    def operations(self) -> list[Operation]:
        found = []
        for file, url in PATH_FILES.items():
            document = self.load(self.root / file) or {}
            for method in HTTP_METHODS:
                if method in document:
                    found.append(Operation(method, url, file, document[method]))
        return found

    def operation(self, method: str, path: str) -> Operation:
        for op in self.operations():
            if op.method == method.lower() and op.path == path:
                return op
        raise LookupError(f"the spec has no operation {method.upper()} {path}")

    def response_schema_ref(self, method: str, path: str, status: int | str) -> str:
        """A `$ref` URI (file + JSON pointer) to the JSON schema of one response of an operation.

        `status` is a code as the spec writes it (`200`) or `default`; a response that is itself
        a `$ref` (to components/responses) is followed.
        """
        op = self.operation(method, path)
        file = (self.root / op.file).resolve()
        pointer = f"/{op.method}/responses/{status}"
        node = op.document["responses"].get(str(status))
        if node is None:
            raise LookupError(f"{op.key} has no response {status} in the spec "
                              f"(it has {sorted(op.document['responses'])})")
        while "$ref" in node:
            file = (file.parent / node["$ref"]).resolve()
            pointer = ""
            node = self.load(file)
        pointer += "/content/" + _pointer_escape("application/json") + "/schema"
        assert "schema" in node["content"]["application/json"], (op.key, status)
        return f"{file.as_uri()}#{pointer}"

    def statuses(self, method: str, path: str) -> list[str]:
        return sorted(self.operation(method, path).document["responses"])

    # Validation

    def validator(self, schema_ref: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": schema_ref}, registry=self.registry,
                                    format_checker=format_checker)

    def schema_validator_for(self, file: str) -> Draft202012Validator:
        """A validator for the schema in one components file (for checks of the loader itself)."""
        return self.validator((self.root / file).resolve().as_uri())

    def errors(self, schema_ref: str, instance: Any) -> list[ValidationError]:
        return sorted(self.validator(schema_ref).iter_errors(instance),
                      key=lambda e: list(e.absolute_path))

    # Walking the YAML, for the loader's own checks

    def refs(self) -> Iterator[tuple[str, str, Path]]:
        """Every `$ref` in the spec: (file it is in, the ref as written, the file it points to)."""
        for path in self.files():
            for ref in _refs_in(yaml.safe_load(path.read_text())):
                target = ref.split("#", 1)[0]
                yield self.rel(path), ref, (path.parent / target).resolve() if target else path


def _refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs_in(value)


def _deepest(error: ValidationError) -> ValidationError:
    """Inside a failed oneOf/anyOf, the error of the member meant: the one whose `type`
    (the spec's discriminator) matches, and within it the error deepest in the instance."""
    while error.context:
        members: dict[Any, list[ValidationError]] = {}
        for inner in error.context:
            members.setdefault(inner.relative_schema_path[0], []).append(inner)
        meant = [errors for errors in members.values() if not any(
            e.validator in ("enum", "const") and list(e.relative_path) == ["type"]
            for e in errors)] or list(members.values())
        error = max((e for errors in meant for e in errors),
                    key=lambda e: (len(e.absolute_path), e.validator != "enum"))
    return error


def describe(error: ValidationError) -> str:
    """One validation error for a report: where in the document, what the schema wants."""
    where = "/" + "/".join(str(p) for p in error.absolute_path)
    schema_at = "/".join(str(p) for p in error.absolute_schema_path)
    line = f"at {where}: {error.message[:300]} (schema: {schema_at})"
    if error.context:
        inner = _deepest(error)
        inner_at = "/" + "/".join(str(p) for p in inner.absolute_path)
        line = (f"at {where}: no {error.validator} member matches; the closest fails at "
                f"{inner_at}: {inner.message[:300]} (schema: "
                f"{'/'.join(str(p) for p in inner.absolute_schema_path)})")
    return line
