"""The Docker adapter's pure parts: the engine's words for a failed pull or build turned into a
cause a person can act on, and the names under which the engine keeps an image."""

from __future__ import annotations

import pytest

from app.images.models import engine_tag
from workers.engine import RegistryAuth, build_failed, engine_name, pull_error

REFERENCE = "registry.example.com:5000/team/app:v1"
AUTH = RegistryAuth("ci", "s3cret", "registry.example.com:5000")


@pytest.mark.parametrize(("detail", "auth", "says", "transient"), [
    ("unauthorized: authentication required", None,
     "The registry requires credentials to pull `registry.example.com:5000/team/app:v1`, and the "
     "image source has none", False),
    ("Get https://registry.example.com:5000/v2/: no basic auth credentials", None,
     "requires credentials", False),
    ("denied: requested access to the resource is denied", AUTH,
     "The registry refused the credentials of the image source", False),
    ("unauthorized: incorrect username or password", AUTH, "refused the credentials", False),
    ("manifest for registry.example.com:5000/team/app:v1 not found: manifest unknown", None,
     "does not exist in its registry, or that tag does not", False),
    ("pull access denied for team/app, repository does not exist", None,
     # "denied" is read first: a private repository and a missing one look alike to a stranger.
     "requires credentials", False),
    ("repository name not known to registry", AUTH, "does not exist in its registry", False),
    ('Get "https://registry.example.com:5000/v2/": dial tcp 10.0.0.7:5000: connect: connection '
     "refused", None, "could not be reached or did not answer properly", True),
    ("Get https://registry.example.com:5000/v2/: net/http: TLS handshake timeout", None,
     "could not be reached", True),
    ("received unexpected HTTP status: 503 Service Unavailable", AUTH, "could not be reached", True),
    ("received unexpected HTTP status: 502 Bad Gateway", None, "could not be reached", True),
    ("invalid reference format: repository name must be lowercase", None,
     "is not a valid image reference", False),
    ("failed to register layer: no space left on device", None,
     "Pulling `registry.example.com:5000/team/app:v1` failed: failed to register layer", False),
])
def test_a_failed_pull_says_its_cause_and_whether_to_try_again(detail, auth, says, transient):
    error = pull_error(REFERENCE, detail, auth)
    assert says in error.message
    assert detail in error.message, "the registry's own words are kept for the operator"
    assert error.transient is transient


@pytest.mark.parametrize(("detail", "transient"), [
    # Other work deleted a cached child image while the classic builder read it (seen under load).
    ('unable to find image "sha256:d2478357c4cc0a1b"', True),
    ("The command '/bin/sh -c make' returned a non-zero code: 2", False),
    ("pull access denied for nosuch/base, repository does not exist", False),
    ("dockerfile parse error line 3: unknown instruction: RUNN", False),
])
def test_only_a_build_that_lost_a_cached_image_is_tried_again(detail, transient):
    failed = build_failed(detail)
    assert failed.message == detail and failed.transient is transient


@pytest.mark.parametrize(("reference", "named"), [
    ("busybox", ("busybox", "latest", "busybox:latest")),
    ("127.0.0.1:5000/tests/app:v1", ("127.0.0.1:5000/tests/app", "v1",
                                     "127.0.0.1:5000/tests/app:v1")),
    # A registry's port is not a tag.
    ("127.0.0.1:5000/tests/app", ("127.0.0.1:5000/tests/app", "latest",
                                  "127.0.0.1:5000/tests/app:latest")),
    ("library/alpine@sha256:" + "a" * 64, ("library/alpine", "sha256:" + "a" * 64,
                                           "library/alpine@sha256:" + "a" * 64)),
    # Both a tag and a digest: pulled, and named, by the digest.
    ("alpine:3.20@sha256:" + "b" * 64, ("alpine", "sha256:" + "b" * 64,
                                        "alpine@sha256:" + "b" * 64)),
])
def test_the_engine_keeps_a_pull_under_its_repository_and_tag_or_digest(reference, named):
    assert engine_name(reference) == named


@pytest.mark.parametrize("image_id", ["6650c2b3f0a8d1e2c3b4a5f6", "0" * 24])
def test_the_engine_holds_an_image_under_a_name_no_pull_can_write(image_id):
    repository, tag = engine_tag(image_id)
    assert (repository, tag) == (f"imagejobs.invalid/{image_id}", "latest")
    # `.invalid` never resolves, and engine_name reads it back as this same name.
    assert engine_name(f"{repository}:{tag}")[:2] == (repository, tag)
