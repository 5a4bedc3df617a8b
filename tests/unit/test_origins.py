"""An origin's secrets kept apart from what is shown, and put back for the worker that uses them."""

from __future__ import annotations

from typing import Any

import pytest

from app.sources.origins import merge_secrets, split_secrets

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
