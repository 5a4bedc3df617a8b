"""A Dockerfile whose ADD would fetch from a network is refused before the engine sees it.

Each row is one way of writing a Dockerfile, and says which line is refused and why, or that it is
allowed. The reader is pure: nothing here needs a service.
"""

from __future__ import annotations

import dataclasses

import pytest

from app.config import get_settings, use_settings
from workers.context import ContextError
from workers.dockerfile import DockerfileRefused, refuse_remote_sources, remote_sources

URL = "http://127.0.0.2:8080/secret"

# (id, Dockerfile, [(line, reason), ...] refused)
REFUSED = [
    ("plain", f"FROM busybox\nADD {URL} /x\nRUN cat /x\n", [(2, "url")]),
    ("lowercase", f"FROM busybox\nadd {URL} /x\n", [(2, "url")]),
    ("mixed-case", f"FROM busybox\nAdd {URL} /x\n", [(2, "url")]),
    ("leading-whitespace", f"FROM busybox\n  \t ADD {URL} /x\n", [(2, "url")]),
    ("after-comments-and-blanks", f"# a comment\n\nFROM busybox\n\n# another\nADD {URL} /x\n",
     [(6, "url")]),
    ("crlf", f"FROM busybox\r\nADD \\\r\n  {URL} /x\r\n", [(2, "url")]),
    ("byte-order-mark", f"\ufeff# escape=`\nFROM busybox\nADD `\n {URL} /x\n", [(3, "url")]),
    ("https", "FROM busybox\nADD https://10.0.0.1/x /x\n", [(2, "url")]),
    ("scheme-upper-case", "FROM busybox\nADD HTTP://10.0.0.1/x /x\n", [(2, "url")]),
    ("git-scheme", "FROM busybox\nADD git://10.0.0.1/repo.git /src\n", [(2, "url")]),
    ("ssh-scheme", "FROM busybox\nADD SSH://git@10.0.0.1/repo.git /src\n", [(2, "url")]),
    ("https-git-fragment", "FROM busybox\nADD https://10.0.0.1/repo.git#main /src\n", [(2, "url")]),
    ("scp-like", "FROM busybox\nADD git@10.0.0.1:org/repo.git /src\n", [(2, "git")]),
    ("scp-like-other-user", "FROM busybox\nADD deploy@internal:repo /src\n", [(2, "git")]),
    ("github-short-form", "FROM busybox\nADD github.com/org/repo /src\n", [(2, "git")]),
    # Flags before the sources, and several sources: only the last argument is the destination.
    ("chown", f"FROM busybox\nADD --chown=1:1 {URL} /x\n", [(2, "url")]),
    ("chmod-checksum", f"FROM busybox\nADD --chmod=644 --checksum=sha256:00 {URL} /x\n", [(2, "url")]),
    ("keep-git-dir", "FROM busybox\nADD --keep-git-dir=true git@h:r.git /src\n", [(2, "git")]),
    ("link-exclude", f"FROM busybox\nADD --link --exclude=*.md {URL} /x\n", [(2, "url")]),
    ("flag-value-apart", f"FROM busybox\nADD --chown 1:1 {URL} /x\n", [(2, "url")]),
    ("quoted-flag", f'FROM busybox\nADD --chown="a b" {URL} /x\n', [(2, "url")]),
    ("end-of-flags", f"FROM busybox\nADD --chown=1 -- {URL} /x\n", [(2, "url")]),
    # Go's flag scan reads bytes: the second byte of U+00A0 counts as a space there.
    ("nbsp-after-flag", f"FROM busybox\nADD --chown=1\u00a0{URL} /x\n", [(2, "url")]),
    ("several-sources", f"FROM busybox\nADD a.txt {URL} b.txt /dst/\n", [(2, "url")]),
    # The JSON (exec) form.
    ("json", f'FROM busybox\nADD ["{URL}", "/x"]\n', [(2, "url")]),
    ("json-odd-spacing", f'FROM busybox\nADD   [ "{URL}" ,"/x" ]  \n', [(2, "url")]),
    ("json-after-flag", f'FROM busybox\nADD --chown=1:1 ["{URL}","/x"]\n', [(2, "url")]),
    ("json-unicode-escape", 'FROM busybox\nADD ["http\\u003a//10.0.0.1/x", "/x"]\n', [(2, "url")]),
    # The classic builder reads the first JSON value and ignores what follows it.
    ("json-trailing-text", 'FROM busybox\nADD ["http\\u003a//10.0.0.1/x", "/x"] tail\n',
     [(2, "url")]),
    # Quotes and escapes are removed from a word before the builder looks at it.
    ("quoted", f'FROM busybox\nADD "{URL}" /x\n', [(2, "url")]),
    ("quote-inside", 'FROM busybox\nADD h"tt"p://10.0.0.1/x /x\n', [(2, "url")]),
    ("escape-inside", "FROM busybox\nADD ht\\tp://10.0.0.1/x /x\n", [(2, "url")]),
    # Line continuations.
    ("continued", f"FROM busybox\nADD \\\n  {URL} \\\n  /x\n", [(2, "url")]),
    ("continued-trailing-spaces", f"FROM busybox\nADD \\   \n  {URL} /x\n", [(2, "url")]),
    ("comment-inside-continuation", f"FROM busybox\nADD a.txt \\\n# a comment\n  {URL} /x\n",
     [(2, "url")]),
    ("blank-inside-continuation", f"FROM busybox\nADD a.txt \\\n\n  {URL} /x\n", [(2, "url")]),
    # `\\` at the end continues the line for the classic builder, not for BuildKit.
    ("escaped-escape-at-end", f"FROM busybox\nRUN echo \\\\\nADD {URL} /x\n", [(3, "url")]),
    # The escape directive: a backtick continues lines, a backslash no longer does.
    ("escape-backtick", f"# escape=`\nFROM busybox\nADD `\n  {URL} /x\n", [(3, "url")]),
    ("escape-directive-spelling", f"#  ESCAPE = `\nFROM busybox\nADD `\n {URL} /x\n", [(3, "url")]),
    ("escape-backtick-backslash-ends", f"# escape=`\nFROM busybox\nRUN echo C:\\\nADD {URL} /x\n",
     [(4, "url")]),
    ("windows-style", f"# escape=`\nFROM mcr.microsoft.com/windows/servercore\n"
                      f"COPY app C:\\app\\\nADD {URL} C:\\x\n", [(4, "url")]),
    ("escape-in-word-backtick", "# escape=`\nFROM busybox\nADD ht`tp://10.0.0.1/x C:\\x\n",
     [(3, "url")]),
    # Old parsers know only `escape` and `syntax`, and only ASCII spaces after `#`.
    ("escape-after-check-directive", f"# check=skip=all\n# escape=`\nFROM busybox\nADD `\n {URL} /x\n",
     [(4, "url")]),
    ("escape-directive-nbsp", f"#\u00a0escape=`\nFROM busybox\nADD `\n {URL} /x\n", [(3, "url")]),
    # Go's line scanner drops one carriage return, so `\\\r` continues nothing there.
    ("double-carriage-return", f"FROM busybox\nRUN echo \\\r\r\nADD {URL} /x\n", [(3, "url")]),
    # ...while newer parsers drop them all, and older ones continue a line after `\\`.
    ("continued-after-carriage-returns", f"FROM busybox\nADD \\\r\r\n {URL} /x\n", [(2, "url")]),
    ("continued-after-escaped-escape", f"FROM busybox\nADD a.txt \\\\\n {URL} /x/\n", [(2, "url")]),
    # A directive below an instruction is a comment: a backtick there continues nothing.
    ("directive-not-at-top", f"FROM busybox\n# escape=`\nRUN true # `\nADD {URL} /x\n", [(4, "url")]),
    # Variables: the builder expands them, from ARG, ENV or the build's arguments.
    ("arg", f"FROM busybox\nARG URL={URL}\nADD $URL /x\n", [(3, "variable")]),
    ("env-braces", f"FROM busybox\nENV URL={URL}\nADD ${{URL}} /x\n", [(3, "variable")]),
    ("default", f"FROM busybox\nADD ${{URL:-{URL}}} /x\n", [(2, "variable")]),
    ("variable-quoted", 'FROM busybox\nADD "$URL" /x\n', [(2, "variable")]),
    ("variable-json", 'FROM busybox\nADD ["$URL", "/x"]\n', [(2, "variable")]),
    ("variable-in-part", "FROM busybox\nADD http$S://10.0.0.1/x /x\n", [(2, "variable")]),
    # ONBUILD runs its ADD in a later build.
    ("onbuild", f"FROM busybox\nONBUILD ADD {URL} /x\n", [(2, "url")]),
    ("onbuild-lowercase", f"FROM busybox\nonbuild add --chown=1 {URL} /x\n", [(2, "url")]),
    ("onbuild-dotted-i", f"FROM busybox\nONBU\u0130LD ADD {URL} /x\n", [(2, "url")]),  # Go lowercases İ to i
    ("onbuild-continued", f"FROM busybox\nONBUILD \\\n ADD {URL} /x\n",
     [(2, "url")]),
    # A heredoc ending at `#`: BuildKit reads the line after it as an instruction, while a
    # reader without heredocs takes `#` for a comment inside a continued line.
    ("heredoc-comment-delimiter", f"FROM busybox\nRUN <<#\necho \\\n#\nADD {URL} /x\n", [(5, "url")]),
    # The classic builder has no heredocs: a body line is an instruction to it.
    ("heredoc-body-classic", f"FROM busybox\nRUN <<EOF\nADD {URL} /x\nEOF\n", [(3, "url")]),
    # Docker 20.10 knows no heredocs and no longer continues `\\`: old readers and new ones hide
    # this ADD (in a continued LABEL, in a heredoc body), and that engine fetches it.
    ("mixed-parser-rules", f"FROM busybox\nRUN <<'LABEL z=1'\nLABEL a=\\\\\nADD {URL} /x\nLABEL z=1\n",
     [(4, "url")]),
    ("heredoc-unclear-delimiter", 'FROM busybox\nRUN <<E"O"F\necho hi\nEOF\n', [(2, "heredoc")]),
    ("heredoc-odd-expansion", "FROM busybox\nRUN cat ${X:- }<<EOF\necho hi\nEOF\n", [(2, "heredoc")]),
    ("two-lines", f"FROM busybox\nADD {URL} /x\nADD git@h:r /y\n", [(2, "url"), (3, "git")]),
]

ALLOWED = [
    ("local-archive", "FROM busybox\nADD local.tar.gz /\n"),
    ("copy", "FROM busybox\nCOPY files/ /srv/\n"),
    ("chown-directory", "FROM busybox\nADD --chown=1:1 files/ /srv/\n"),
    ("url-in-comment", f"FROM busybox\n# ADD {URL} /x\n  # ADD {URL} /x\n"),
    ("url-in-run", f"FROM busybox\nRUN wget -O /x {URL}\n"),
    ("url-in-label", f"FROM busybox\nLABEL url={URL}\n"),
    ("url-in-env", f"FROM busybox\nENV URL={URL}\n"),
    ("json-local", 'FROM busybox\nADD ["a b.txt", "/x"]\n'),
    ("exclude", "FROM busybox\nADD --exclude=*.md docs/ /docs/\n"),
    ("variable-in-destination", "FROM busybox\nARG V=1\nADD notes.txt /docs/$V/\n"),
    ("variable-in-flag", "FROM busybox\nARG UID=1\nADD --chown=$UID:$UID files/ /srv/\n"),
    ("at-sign-in-path", "FROM busybox\nADD assets/logo@2x.png logo@3x.png /srv/\n"),
    ("syntax-directive", "# syntax=docker/dockerfile:1\nFROM busybox\nADD app.tar.gz /\n"),
    # `add` at the start of a continued line of a RUN is part of the RUN.
    ("add-word-inside-run", "FROM busybox\nRUN git remote \\\n    add origin https://h/x.git\n"),
    # A backslash ending a line under a backtick escape is a plain character.
    ("windows-path", "# escape=`\nFROM busybox\nADD app.zip C:\\app\\\n"),
    # A directive below an instruction is a comment, so `\` still continues the RUN.
    ("directive-not-at-top", f"FROM busybox\n# escape=`\nRUN echo \\\nADD {URL} /x\n"),
    # A heredoc source is inline text; its body is no instruction to BuildKit, nor an ADD to
    # the classic builder.
    ("heredoc-source", f"FROM busybox\nADD <<EOF /x\nhello {URL}\nEOF\n"),
    ("heredoc-quoted", "FROM busybox\nRUN <<'EOF' bash\necho $HOME\nEOF\n"),
    ("heredoc-chomp", "FROM busybox\nRUN <<-EOF\n\techo hi\n\tEOF\nCOPY a /a\n"),
    ("empty", ""),
]


@pytest.mark.parametrize(("dockerfile", "expected"), [pytest.param(d, e, id=i) for i, d, e in REFUSED])
def test_remote_sources_are_found(dockerfile, expected):
    assert [(r.line, r.reason) for r in remote_sources(dockerfile)] == expected


@pytest.mark.parametrize("dockerfile", [pytest.param(d, id=i) for i, d in ALLOWED])
def test_local_sources_are_allowed(dockerfile):
    assert remote_sources(dockerfile) == []
    refuse_remote_sources(dockerfile)


def test_the_message_names_the_line_and_the_source_without_its_secrets():
    dockerfile = "FROM busybox\n\nADD --chown=1 http://user:hunter2@10.0.0.1:81/a.tgz?token=t0k /\n"
    with pytest.raises(DockerfileRefused) as caught:
        refuse_remote_sources(dockerfile)
    message = caught.value.message
    assert "line 3" in message and "`http://10.0.0.1:81/a.tgz`" in message and "COPY" in message
    assert "hunter2" not in message and "t0k" not in message
    assert isinstance(caught.value, ContextError) and not caught.value.transient


def test_the_message_says_why_a_variable_is_refused_and_lists_the_others():
    dockerfile = f"FROM busybox\nADD $URL /x\nADD {URL} /y\nONBUILD ADD git@h:r /z\n"
    with pytest.raises(DockerfileRefused) as caught:
        refuse_remote_sources(dockerfile)
    message = caught.value.message
    assert message.startswith("The Dockerfile's ADD on line 2 names `$URL`, a variable")
    assert "line 3 (`http://127.0.0.2:8080/secret`)" in message and "line 4 (`h:r`)" in message


def test_an_unclear_heredoc_is_refused_with_a_way_to_write_it():
    with pytest.raises(DockerfileRefused) as caught:
        refuse_remote_sources('FROM busybox\n\nRUN <<E"O"F\necho hi\nEOF\n')
    assert caught.value.message.startswith('Line 3 of the Dockerfile opens a heredoc this service '
                                           'cannot follow (`<<E"O"F`)')
    assert "`<<EOF`" in caught.value.message


def test_bytes_that_are_not_utf8_are_read_as_they_are():
    dockerfile = b"FROM busybox\nLABEL x=\xff\nADD --chown=\xc3\xa0" + URL.encode() + b" /x\n"
    assert [(r.line, r.source) for r in remote_sources(dockerfile)] == [(3, URL)]


@pytest.fixture
def remote_add_allowed():
    before = get_settings()
    use_settings(dataclasses.replace(before, build_remote_add_allowed=True))
    yield
    use_settings(before)


def test_the_operator_may_allow_remote_sources(remote_add_allowed):
    refuse_remote_sources(f"FROM busybox\nADD {URL} /x\n")
