"""Build contexts' pure parts: URLs fit to show, git's failures in words a person can act on, and
paths inside the context."""

from __future__ import annotations

import pytest

from workers.context import ContextError, RepoSpec, _git_failure, clean_path, redact

SHOWN = "https://git.example.com/team/app.git"


@pytest.mark.parametrize(("url", "shown"), [
    ("https://ci:s3cret@git.example.com/team/app.git", "https://git.example.com/team/app.git"),
    # Presigned URLs carry their token in the query.
    ("https://bucket.s3.amazonaws.com/ctx.tar.gz?X-Amz-Signature=abc&X-Amz-Credential=key",
     "https://bucket.s3.amazonaws.com/ctx.tar.gz"),
    ("https://files.example.com/ctx.tar.gz#part", "https://files.example.com/ctx.tar.gz"),
    ("ssh://git@[2001:db8::1]:2222/team/app.git", "ssh://[2001:db8::1]:2222/team/app.git"),
    # A port that does not parse is shown as written, not an error.
    ("https://user:pw@git.example.com:99999/app.git", "https://git.example.com:99999/app.git"),
    ("https://Files.Example.com:99999/a.tgz#frag", "https://Files.Example.com:99999/a.tgz"),
    # The password may hold an `@`; the host is what follows the last one.
    ("https://user:pa@ss@files.example.com/a.tgz", "https://files.example.com/a.tgz"),
    ("http://[::1]:8080/x.tar.gz", "http://[::1]:8080/x.tar.gz"),
    ("https://[2001:db8::1]/ctx.tgz?X-Amz-Signature=secret", "https://[2001:db8::1]/ctx.tgz"),
    ("git@github.com:team/app.git", "github.com:team/app.git"),
    ("user:secret@host:org/app@v1.git", "host:org/app@v1.git"),
    ("git@github.com:team/with@sign.git", "github.com:team/with@sign.git"),
    ("https://git.example.com/plain.git", "https://git.example.com/plain.git"),
])
def test_a_url_is_shown_without_credentials_or_query(url, shown):
    assert redact(url) == shown


NO_CREDENTIALS = RepoSpec(SHOWN)
WITH_PASSWORD = RepoSpec(SHOWN, username="ci", password="s3cret-token")
WITH_KEY = RepoSpec("git@git.example.com:team/app.git", private_key="-----BEGIN KEY-----")


@pytest.mark.parametrize(("repo", "stderr", "message"), [
    (NO_CREDENTIALS, "fatal: could not read Username for 'https://git.example.com': terminal "
     "prompts disabled",
     f"The repository {SHOWN} requires credentials, and the image source has none (fatal: could "
     "not read Username for 'https://git.example.com': terminal prompts disabled)."),
    (WITH_PASSWORD, "remote: Invalid username or password.\nfatal: Authentication failed for "
     "'https://git.example.com/team/app.git/'",
     f"The repository {SHOWN} refused the credentials of the image source (remote: Invalid "
     "username or password. fatal: Authentication failed for "
     "'https://git.example.com/team/app.git/')."),
    (WITH_KEY, "git@git.example.com: Permission denied (publickey).\nfatal: Could not read from "
     "remote repository.", f"The repository {SHOWN} refused the credentials of the image source "
     "(git@git.example.com: Permission denied (publickey). fatal: Could not read from remote "
     "repository.)."),
    (NO_CREDENTIALS, "fatal: unable to access 'https://git.example.com/team/app.git/': The "
     "requested URL returned error: 403", f"The repository {SHOWN} requires credentials"),
    (RepoSpec(SHOWN, branch="release"), "warning: Could not find remote branch release to "
     "clone.\nfatal: Remote branch release not found in upstream origin",
     f"The repository {SHOWN} has no branch `release`."),
    (RepoSpec(SHOWN, ref_type="tag", ref_value="v9.9"), "fatal: Remote branch v9.9 not found in "
     "upstream origin", f"The repository {SHOWN} has no tag `v9.9`."),
    (RepoSpec(SHOWN, ref_type="hash", ref_value="deadbeef"), "error: pathspec 'deadbeef' did "
     "not match any file(s) known to git", f"The repository {SHOWN} has no commit `deadbeef`."),
    (RepoSpec(SHOWN, ref_type="hash", ref_value="deadbeef"), "fatal: reference is not a tree: "
     "deadbeef", f"The repository {SHOWN} has no commit `deadbeef`."),
    (NO_CREDENTIALS, "remote: Repository not found.\nfatal: repository "
     "'https://git.example.com/team/app.git/' not found",
     f"The repository {SHOWN} does not exist or cannot be read (remote: Repository not found. "
     "fatal: repository 'https://git.example.com/team/app.git/' not found)."),
    (NO_CREDENTIALS, "fatal: transport 'file' not allowed",
     f"The repository URL {SHOWN} must use http, https, ssh or git."),
    (NO_CREDENTIALS, "fatal: early EOF\nfatal: fetch-pack: invalid index-pack output",
     f"Cloning {SHOWN} failed: fatal: early EOF fatal: fetch-pack: invalid index-pack output"),
])
def test_a_failed_clone_says_its_cause(repo, stderr, message):
    assert _git_failure(repo, SHOWN, stderr).startswith(message)


def test_a_password_git_repeats_is_not_shown():
    stderr = "fatal: unable to access 'https://ci:s3cret-token@git.example.com/': Could not resolve"
    message = _git_failure(WITH_PASSWORD, SHOWN, stderr)
    assert "s3cret-token" not in message and "ci:********@git.example.com" in message


def test_only_the_last_lines_of_a_long_failure_are_kept():
    stderr = "\n".join(f"remote: line {n}" for n in range(1000)) + "\nfatal: the end"
    message = _git_failure(NO_CREDENTIALS, SHOWN, stderr)
    assert message == f"Cloning {SHOWN} failed: remote: line 998 remote: line 999 fatal: the end"


@pytest.mark.parametrize(("value", "default", "path"), [
    (None, "", ""),
    ("", "", ""),
    ("/", "", ""),
    ("", "Dockerfile", "Dockerfile"),
    ("./app/", "", "app"),
    ("/app//web", "", "app/web"),
    ("  services/api/  ", "", "services/api"),
    ("/services//api/./Dockerfile", "", "services/api/Dockerfile"),
    (".", "", ""),
    ("a.b/..c", "", "a.b/..c"),
    ("a..b/Dockerfile", "", "a..b/Dockerfile"),
])
def test_a_path_inside_the_context_is_relative_and_normal(value, default, path):
    assert clean_path(value, default) == path


@pytest.mark.parametrize("value", ["..", "../x", "/../x", "a/../b", "a/..", "./../Dockerfile",
                                   " ../x ", "services/../../secrets"])
def test_a_path_with_dot_dot_is_refused_not_rerooted(value):
    with pytest.raises(ContextError, match="leaves the build context: `..` is not taken"):
        clean_path(value)
