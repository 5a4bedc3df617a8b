"""An origin's secrets kept apart from what is shown, and put back for the worker that uses them;
an origin read back from storage into its model."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from app.jobs.queueing import BUILD_QUEUE, PULL_QUEUE
from app.sources.origins import (
    CycleSourceOrigin,
    CycleUploadOrigin,
    DockerFileOrigin,
    DockerHubOrigin,
    DockerRegistryOrigin,
    NoneOrigin,
    OciRegistryOrigin,
    Origin,
    OriginKind,
    UnreadableOrigin,
    merge_secrets,
    split_secrets,
    stored_origin,
)

CASES: list[tuple[dict[str, Any], dict[str, Any], dict[str, str]]] = [
    # (origin as sent, origin as shown and stored, secrets by JSON pointer)
    ({"type": "docker-hub", "details": {"target": "team/app:v1", "username": "ci",
                                        "token": "dckr_pat"}},
     {"type": "docker-hub", "details": {"target": "team/app:v1", "username": "ci", "token": ""}},
     {"/details/token": "dckr_pat"}),
    ({"type": "docker-registry", "details": {"url": "https://r.example.com", "target": "a:v1",
                                             "password": "pw", "token": ""}},
     {"type": "docker-registry", "details": {"url": "https://r.example.com", "target": "a:v1",
                                             "password": "", "token": ""}},
     {"/details/password": "pw"}),
    ({"type": "oci-registry", "details": {"url": "https://r.example.com", "target": "a:v1",
                                          "auth": {"type": "user", "details": {
                                              "username": "ci", "token": "tk"}}}},
     {"type": "oci-registry", "details": {"url": "https://r.example.com", "target": "a:v1",
                                          "auth": {"type": "user", "details": {
                                              "username": "ci", "token": ""}}}},
     {"/details/auth/details/token": "tk"}),
    ({"type": "docker-file", "details": {"repo": {"url": "git@git.example.com:a.git",
                                                  "auth": {"private_key": "KEY",
                                                           "passphrase": "phrase"}},
                                         "credentials": [{"url": "r.example.com",
                                                          "username": "ci", "password": "p0"}]}},
     {"type": "docker-file", "details": {"repo": {"url": "git@git.example.com:a.git",
                                                  "auth": {"private_key": "", "passphrase": ""}},
                                         "credentials": [{"url": "r.example.com",
                                                          "username": "ci", "password": ""}]}},
     {"/details/repo/auth/private_key": "KEY", "/details/repo/auth/passphrase": "phrase",
      "/details/credentials/0/password": "p0"}),
    # Nothing secret: nothing kept apart.
    ({"type": "docker-hub", "details": {"target": "library/nginx"}},
     {"type": "docker-hub", "details": {"target": "library/nginx"}}, {}),
]


@pytest.mark.parametrize(("origin", "shown", "secrets"), CASES)
def test_secrets_are_blanked_in_what_is_shown_and_kept_by_pointer(origin, shown, secrets):
    assert split_secrets(origin) == (shown, secrets)


@pytest.mark.parametrize(("origin", "shown", "secrets"), CASES)
def test_the_worker_gets_the_origin_with_its_secrets_back(origin, shown, secrets):
    assert merge_secrets(shown, secrets) == origin


def test_a_secret_missing_from_the_store_stays_blank():
    shown = {"details": {"username": "ci", "token": ""}}
    assert merge_secrets(shown, {"/details/password": "elsewhere"}) == shown


REGISTRY = "https://registry.example.com"

READ_BACK: list[tuple[dict[str, Any], type[OriginKind], str]] = [
    # (origin as stored, its model, the queue its imports go to)
    ({"type": "docker-hub", "details": {"target": "team/app:v1", "username": "ci", "token": ""}},
     DockerHubOrigin, PULL_QUEUE),
    ({"type": "docker-registry", "details": {"url": REGISTRY, "target": "a:v1", "password": "",
                                             "token": ""}},
     DockerRegistryOrigin, PULL_QUEUE),
    ({"type": "oci-registry", "details": {"url": REGISTRY, "target": "a:v1", "auth": {
        "type": "user", "details": {"username": "ci", "token": ""}}}},
     OciRegistryOrigin, PULL_QUEUE),
    ({"type": "docker-file", "details": {"repo": {"url": "git@git.example.com:a.git", "auth": {
        "type": "ssh", "credentials": {"username": "git", "passphrase": "", "private_key": ""}}},
        "credentials": [{"url": "r.example.com", "username": "ci", "token": ""}]}},
     DockerFileOrigin, BUILD_QUEUE),
    ({"type": "docker-file", "details": {"targz_url": "https://example.com/context.tar.gz"}},
     DockerFileOrigin, BUILD_QUEUE),
    ({"type": "cycle-upload", "details": {"expires": "0001-01-01T00:00:00Z", "token": ""}},
     CycleUploadOrigin, PULL_QUEUE),
    ({"type": "none"}, NoneOrigin, PULL_QUEUE),
    # Refused in a request, read when stored: each was checked when saved, or saved before the
    # check; the import refuses what it must in its own words.
    ({"type": "docker-hub", "details": {"target": "ghcr.io/team/app:v1", "token": "t"}},
     DockerHubOrigin, PULL_QUEUE),
    ({"type": "docker-hub", "details": {"target": "imagejobs.invalid/app:v1"}},
     DockerHubOrigin, PULL_QUEUE),
    ({"type": "docker-registry", "details": {"url": "https://registry", "target": "a:v1"}},
     DockerRegistryOrigin, PULL_QUEUE),
    ({"type": "docker-file", "details": {"repo": {"url": "https://u:p@git.example.com/a.git"},
                                         "targz_url": "https://example.com/c.tar.gz",
                                         "context_dir": "../up"}},
     DockerFileOrigin, BUILD_QUEUE),
    ({"type": "cycle-source", "details": {"source_id": "000000000000000000000001"}},
     CycleSourceOrigin, PULL_QUEUE),
]


@pytest.mark.parametrize(("stored", "model", "queue"), READ_BACK)
def test_a_stored_origin_reads_back_into_its_model(stored, model, queue):
    origin = stored_origin(stored)
    assert type(origin) is model and origin.import_queue == queue
    assert origin.model_dump(mode="json", exclude_none=True) == stored


@pytest.mark.parametrize(("stored", "model", "queue"), READ_BACK[7:])
def test_a_request_is_checked_for_more_than_a_stored_origin(stored, model, queue):
    with pytest.raises(ValidationError):
        TypeAdapter(Origin).validate_python(stored)


NOTHING_TO_BUILD = ("The image's `docker-file` source has neither a `repo` nor a `targz_url`, and "
                    "the image no `override.targz_url`: there is nothing to build.")


@pytest.mark.parametrize(("stored", "override", "refusal"), [
    ({"type": "none"}, {}, "The image's source has origin `none`: there is nothing to import."),
    ({"type": "cycle-upload", "details": {"expires": "0001-01-01T00:00:00Z", "token": ""}}, {},
     "Images of `cycle-upload` sources are imported by uploading their tar, not by an import "
     "task."),
    ({"type": "docker-file", "details": {"build_file": "Dockerfile"}}, {}, NOTHING_TO_BUILD),
    ({"type": "docker-file", "details": {}}, {"targz_url": "https://example.com/c.tar.gz"}, None),
    ({"type": "docker-file", "details": {"repo": {"url": "https://git.example.com/a.git"}}}, {},
     None),
    ({"type": "docker-hub", "details": {"target": "library/nginx"}}, {}, None),
])
def test_an_origin_says_when_an_import_task_has_nothing_to_import(stored, override, refusal):
    assert stored_origin(stored).nothing_to_import(override) == refusal


UNREADABLE = "The origin stored with the image cannot be read ("
AGAIN = "); save the source's origin again and make a new image of it."


@pytest.mark.parametrize(("stored", "reason"), [
    ({"type": "docker-hub"}, "`/details`: Field required"),
    ({"type": "docker-registry", "details": {"target": "a:v1", "token": "s3cret"}},
     "`/details/url`: Field required"),
    ({"type": "oci-registry", "details": {"url": REGISTRY, "target": "a:v1",
                                          "auth": {"type": "user", "details": {"token": 7}}}},
     "`/details/auth/user/details/token`: Input should be a valid string"),
    ({"type": "docker-file", "details": {"credentials": [{"token": "s3cret", "port": 1}]}},
     "`/details/credentials/0/port`: Extra inputs are not permitted"),
    ({"type": "gitlab"}, "Input tag 'gitlab' found using 'type' does not match any of the "
                         "expected tags: 'docker-hub', 'docker-registry', 'oci-registry', "
                         "'docker-file', 'cycle-upload', 'cycle-source', 'none'"),
    ({"details": {}}, "Unable to extract tag using discriminator 'type'"),
    (None, "Input should be a valid dictionary or object to extract fields from"),
])
def test_an_unreadable_stored_origin_says_where_and_why_but_not_its_values(stored, reason):
    with pytest.raises(UnreadableOrigin) as caught:
        stored_origin(stored)
    assert str(caught.value) == UNREADABLE + reason + AGAIN
    assert "s3cret" not in str(caught.value)
