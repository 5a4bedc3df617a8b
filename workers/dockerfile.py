"""Remote ADD sources: found in a Dockerfile's text before the engine gets it, and refused.

The Docker engine fetches an `ADD` URL (and, under BuildKit, clones an `ADD` git repository)
itself, from the host's network: none of the worker's checks on users' URLs sees that request. So
a build whose Dockerfile has an `ADD` (or `ONBUILD ADD`) naming a URL, a git repository, or a
variable (the builder expands `$X`, `${X:-…}` from ARG, ENV and build arguments, so it may name a
URL) is refused unless the operator allows it (IMAGEJOBS_BUILD_REMOTE_ADD=allow).

The text is read the way Docker's parsers read it, not with a regular expression over lines: parser
directives (`# escape=`), comments, line continuations (comment and empty lines inside them),
flags, the JSON form, quotes and escapes in words, instruction names in any case. Those parsers
changed over the years, and an engine may mix old and new rules (Docker 20.10's classic builder
knows no heredocs, yet no longer continues a line after an escaped escape), so the text is read
with every combination of the rules that changed, and an ADD any of those readings finds is
refused. A heredoc source (`ADD <<EOF /x`) is inline text and allowed; a heredoc delimiter that is
not a plain word is refused, since where it ends decides which later lines BuildKit reads as
instructions.

What this cannot see, and an engine host still needs a network policy for:
- ONBUILD triggers of a base image pulled from a registry: they run in this build, and may ADD.
- RUN steps (`curl`, `wget`, `git clone`): they have the engine's network.
- FROM, `COPY --from` and `RUN --mount=from=` naming images on a registry of the Dockerfile's
  choice: the engine pulls them.
- On a BuildKit engine, `# syntax=` hands the file to a frontend image of the user's choosing,
  which may read it any way it likes.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import NamedTuple

from app.config import get_settings
from workers.context import ContextError, redact

# Go's unicode.IsSpace, which the parsers trim and split with: the same characters, no more (a
# character taken for a space here and not there would hide a line from this reader).
_SPACES = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009" \
          "\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACE_BYTES = frozenset(b"\t\n\v\f\r \x85\xa0")  # the same test applied to single bytes
_WORD_GAP = re.compile(r"[\t\v\f\r ]+")
_OLD_DIRECTIVE = re.compile(r"#[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)"
                            r"[\t\n\f\r ]*")
_NEW_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*")
# An escape ending a line continues it, unless another escape comes before (newer parsers).
_CONTINUATION = {e: re.compile(rf"(?:([^{re.escape(e)}]){re.escape(e)}[ \t]*|^{re.escape(e)}[ \t]*)\Z")
                 for e in ("\\", "`")}
_ESCAPED_ESCAPE_END = re.compile(r"(?:\\\\|``)[ \t]*\r*\Z")
_HEREDOC = re.compile(r"[0-9]*<<(-?)([^<]*)")
# `${NAME}` expands to one word; any other `${…}` may expand to several, and so move a `<<`.
_ODD_EXPANSION = re.compile(r"\$\{(?![A-Za-z0-9_]+\})")


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Go's decoder knows no NaN or Infinity


_JSON = json.JSONDecoder(parse_constant=_no_constant)


class DockerfileRefused(ContextError):
    """The Dockerfile asks the engine for something this service does not allow; `message` says what."""


class RemoteSource(NamedTuple):
    line: int  # where the instruction starts, counting from 1
    instruction: str  # "ADD", "ONBUILD ADD", or "heredoc" for one whose end is unclear
    source: str  # as written in the Dockerfile
    reason: str  # "url", "git", "variable" or "heredoc"


def refuse_remote_sources(text: str | bytes) -> None:
    """Raise DockerfileRefused if an ADD in the Dockerfile `text` fetches from outside the context.

    Nothing is refused when the operator allows remote ADD sources (IMAGEJOBS_BUILD_REMOTE_ADD).
    """
    if get_settings().build_remote_add_allowed:
        return
    found = remote_sources(text)
    if found:
        raise DockerfileRefused(_message(found))


def remote_sources(text: str | bytes) -> list[RemoteSource]:
    """Every ADD source in the Dockerfile `text` that the builder could fetch from a network."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")  # bytes that are not UTF-8 stay as they are
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line starts no line of its own
    found: dict[tuple[int, str, str], RemoteSource] = {}
    seen: set[tuple[int, str]] = set()  # most instructions read the same in every reading
    for rules in _readings(lines):
        try:
            for instruction in _instructions(lines, rules):
                if instruction in seen:
                    continue
                seen.add(instruction)
                for source in _remote_adds(*instruction):
                    found.setdefault((source.line, source.instruction, source.source), source)
        except _UnclearHeredoc as exc:
            found.setdefault((exc.line, "heredoc", exc.word),
                             RemoteSource(exc.line, "heredoc", exc.word, "heredoc"))
    return sorted(found.values())


class _Rules(NamedTuple):
    """One combination of the rules on which versions of Docker's Dockerfile parser differ."""

    escape: str  # set by `# escape=` at the top, which old and new parsers recognise differently
    one_carriage_return: bool  # Go's line scanner drops one `\r` at the end; newer parsers all
    escaped_escape_continues: bool  # `\\` at the end of a line continues it (older parsers)
    heredocs: bool  # the lines after `<<EOF` in ADD, COPY and RUN are no instructions (BuildKit)


def _readings(lines: list[str]) -> list[_Rules]:
    """The combinations of rules that could read these lines differently: for most files, one."""
    def both_if(differs: bool) -> tuple[bool, ...]:
        return (True, False) if differs else (False,)

    return [_Rules(*rules) for rules in itertools.product(
        dict.fromkeys(_escape(lines, old) for old in (True, False)),
        both_if(any(line.endswith("\r\r") for line in lines)),
        both_if(any(_ESCAPED_ESCAPE_END.search(line) for line in lines)),
        both_if(any("<<" in line for line in lines)))]


def _escape(lines: list[str], old: bool) -> str:
    """The escape character the parser directives at the top set, by old or new rules."""
    escape = "\\"
    for raw in lines:
        directive = _directive(_lstrip(raw.rstrip("\r")), old)
        if directive is None:
            break  # directives come first or not at all
        if directive[0] == "escape" and directive[1] in ("\\", "`"):
            escape = directive[1]
    return escape


def _directive(token: str, old: bool) -> tuple[str, str] | None:
    """`(name, value)` if the line is a parser directive to this parser, else None."""
    if old:
        match = _OLD_DIRECTIVE.fullmatch(token)
        names = ("escape", "syntax")
    else:
        match = _NEW_DIRECTIVE.fullmatch(_lstrip(token[1:])) if token.startswith("#") else None
        names = ("escape", "syntax", "check")
    if match and match[1].lower() in names:
        return match[1].lower(), match[2]
    return None


class _UnclearHeredoc(Exception):
    def __init__(self, line: int, word: str):
        super().__init__(word)
        self.line, self.word = line, word


def _instructions(lines: list[str], rules: _Rules) -> Iterator[tuple[int, str]]:
    """The instructions a parser following `rules` sees, with the line each starts on.

    A port of the loop in BuildKit's frontend/dockerfile/parser (Parse), which engines use too.
    """
    i = 0
    while i < len(lines):
        token = _lstrip(_end_of_line(lines[i], rules))
        i += 1
        start = i
        line, more = _continued("" if token.startswith("#") else token, rules)
        if not more and not line:
            continue
        while more and i < len(lines):
            raw = _end_of_line(lines[i], rules)
            i += 1
            if _lstrip(raw).startswith("#") or not _lstrip(raw):
                continue  # comment and empty lines inside a continued instruction are skipped
            piece, more = _continued(raw, rules)
            line += piece
        yield start, line
        if rules.heredocs:
            i = _past_heredocs(lines, i, start, line)


def _end_of_line(raw: str, rules: _Rules) -> str:
    if rules.one_carriage_return:
        return raw[:-1] if raw.endswith("\r") else raw
    return raw.rstrip("\r")


def _continued(line: str, rules: _Rules) -> tuple[str, bool]:
    """The line without its continuation mark, and whether the next line belongs to it."""
    escape = rules.escape
    if not line.rstrip(" \t").endswith(escape):
        return line, False
    if rules.escaped_escape_continues:
        return line[:line.rstrip(" \t").rindex(escape)], True
    match = _CONTINUATION[escape].search(line)
    if match:
        return line[:match.start()] + (match[1] or ""), True
    return line, False


def _past_heredocs(lines: list[str], i: int, start: int, line: str) -> int:
    """Where BuildKit reads on after the heredoc bodies that follow the instruction `line`."""
    cmd, args = _split_command(line)
    if cmd == "onbuild":
        cmd, args = _split_command(_trim(_strip_flags(args, True)))
    rest = _trim(_strip_flags(args, True))
    if cmd not in ("add", "copy", "run") or "<<" not in line or _json_list(rest, True) is not None:
        return i
    for name, chomp in _heredocs(start, line):
        while True:
            if i >= len(lines):
                return i  # unterminated: BuildKit fails the build
            candidate = lines[i].rstrip("\r")
            i += 1
            if (candidate.lstrip("\t") if chomp else candidate) == name:
                break
    return i


def _heredocs(start: int, line: str) -> list[tuple[str, bool]]:
    """The heredocs an instruction opens: `(delimiter, leading tabs stripped)`, in order."""
    if _ODD_EXPANSION.search(line):
        raise _UnclearHeredoc(start, line.strip()[:200])
    found = []
    for word in _shell_words(line):
        match = _HEREDOC.fullmatch(word)
        if not match or not match[2]:
            continue
        delimiter = match[2]
        quoted = re.fullmatch(r"'([^']+)'|\"([^\"\\$]+)\"", delimiter)
        if quoted:
            delimiter = quoted[1] or quoted[2]
        elif not re.fullmatch(r"[^\s'\"\\$]+", delimiter):
            raise _UnclearHeredoc(start, word[:200])
        found.append((delimiter, match[1] == "-"))
    return found


def _shell_words(line: str) -> list[str]:
    """The line's words as BuildKit looks for heredocs in them: quotes and escapes kept."""
    words, word, quote, in_word, i = [], "", "", False, 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote == '"' and i + 1 < len(line):
                word, i = word + ch, i + 1
                ch = line[i]
        elif ch in _SPACES:
            if in_word:
                words.append(word)
            word, in_word, i = "", False, i + 1
            continue
        elif ch in "'\"":
            quote = ch
        elif ch == "\\" and i + 1 < len(line):
            word, i = word + ch, i + 1
            ch = line[i]
        word, in_word, i = word + ch, True, i + 1
    if quote:
        return []  # an unterminated quote: BuildKit finds no heredoc in the line either
    return words + [word] if in_word else words


def _remote_adds(start: int, line: str) -> Iterator[RemoteSource]:
    cmd, args = _split_command(line)
    if cmd == "add":
        yield from _check_sources(start, "ADD", args)
    elif cmd == "onbuild":
        # The trigger runs in a later build, perhaps by another builder: read its flags both ways.
        for rest in dict.fromkeys(_trim(_strip_flags(args, v)) for v in (False, True)):
            sub, sub_args = _split_command(rest)
            if sub == "add":
                yield from _check_sources(start, "ONBUILD ADD", sub_args)


def _check_sources(start: int, instruction: str, args: str) -> Iterator[RemoteSource]:
    sources: dict[str, None] = {}
    for flag_values in (False, True):
        for arguments in _argument_lists(_trim(_strip_flags(args, flag_values))):
            sources.update(dict.fromkeys(arguments[:-1]))  # the last one is the destination
    for source in sources:
        reason = _why_remote(source)
        if reason:
            yield RemoteSource(start, instruction, source, reason)


def _split_command(line: str) -> tuple[str, str]:
    """The instruction's name, lowercased as Go does it (`İ` becomes `i`), and the rest."""
    parts = _WORD_GAP.split(_trim(line), maxsplit=1)
    return parts[0].replace("\u0130", "i").lower(), parts[1] if len(parts) == 2 else ""


def _strip_flags(args: str, flag_values: bool) -> str:
    """The arguments after the leading `--flag` words, found byte by byte as BuildKit does.

    With `flag_values` a flag written without `=` takes the next word as its value (BuildKit
    today); without, it does not (the classic builder's parser).
    """
    line = args.encode("utf-8", "surrogateescape")
    in_spaces, in_word, in_quote = 0, 1, 2
    phase, word, quote, blank_ok = in_spaces, b"", 0, False
    parsing_value, needs_value = False, True
    pos = 0
    while pos < len(line):
        ch = line[pos]
        if phase == in_spaces:
            if ch in _SPACE_BYTES:
                pos += 1
                continue
            if not parsing_value and line[pos:pos + 2] != b"--":
                return line[pos:].decode("utf-8", "surrogateescape")
            phase = in_word
        if phase == in_word:
            if ch in _SPACE_BYTES:
                phase = in_spaces
                if parsing_value:
                    parsing_value, needs_value = False, True
                elif word == b"--":
                    return line[pos:].decode("utf-8", "surrogateescape")
                elif (blank_ok or word) and needs_value and flag_values:
                    parsing_value = True
                word, blank_ok = b"", False
            elif ch in b"'\"":
                quote, blank_ok, phase = ch, True, in_quote
            elif ch == ord("\\") and pos + 1 < len(line):
                pos += 1
                word += line[pos:pos + 1]
            elif ch != ord("\\"):
                needs_value = needs_value and ch != ord("=")
                word += bytes([ch])
        elif ch == quote:
            phase = in_word
        elif ch == ord("\\"):
            if pos + 1 == len(line):
                phase = in_word
            else:
                pos += 1
                word += line[pos:pos + 1]
        else:
            word += bytes([ch])
        pos += 1
    return ""


def _argument_lists(rest: str) -> list[list[str]]:
    """The arguments as each parser reads them: a JSON array of strings, or words between spaces."""
    strict = _json_list(rest, strict=True)
    if strict is not None and all(isinstance(v, str) for v in strict):
        return [strict]
    words = _WORD_GAP.split(rest) if rest else []
    loose = _json_list(rest, strict=False)  # the classic builder reads the first JSON value only
    return [words] + ([[v for v in loose if isinstance(v, str)]] if loose else [])


def _json_list(rest: str, strict: bool) -> list | None:
    rest = _lstrip(rest)
    if not rest.startswith("["):
        return None
    try:
        value = _JSON.decode(rest) if strict else _JSON.raw_decode(rest)[0]
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def _why_remote(source: str) -> str | None:
    """Why a builder could fetch `source` from a network, or None for a path in the context."""
    if "$" in source:
        return "variable"
    # Quotes and escapes go before the builder looks (`"http://…"`, `h\ttp://…`); dropping every
    # one can only make more sources look remote, never fewer.
    plain = re.sub(r"[\"'\\`]", "", source)
    if "://" in plain:
        return "url"  # http(s) for the classic builder; BuildKit also clones git://, ssh://
    if re.match(r"[^/]*@[^/]*:", plain) or plain.lower().startswith("github.com/"):
        return "git"  # scp-like `user@host:repo`, and GitHub's short form
    return None


def _message(found: list[RemoteSource]) -> str:
    first, others = found[0], found[1:]
    if first.reason == "heredoc":
        text = (f"Line {first.line} of the Dockerfile opens a heredoc this service cannot follow "
                f"(`{first.source}`): with a delimiter other than a plain word, or a `${{…}}` other "
                "than `${NAME}` on that line, it is unclear which later lines the builder reads as "
                "instructions. Write it as `<<EOF` or `<<'EOF'`.")
    else:
        why = {"url": "a URL", "git": "a git repository",
               "variable": "a variable, which the builder expands from ARG, ENV or the build's "
                           "arguments and which may name a URL"}[first.reason]
        text = (f"The Dockerfile's {first.instruction} on line {first.line} names "
                f"`{_shown(first.source)}`, {why}. The Docker engine would fetch it itself, from "
                "its own network and past this service's checks, so remote ADD sources are not "
                "allowed here: put the file in the build context and COPY it.")
    if others:
        text += " Also refused: " + ", ".join(
            f"line {r.line} (`{_shown(r.source)}`)" for r in others[:5])
        text += f" and {len(others) - 5} more." if len(others) > 5 else "."
    return text


def _shown(source: str) -> str:
    """The source fit to show: no credentials or query of a URL, at most 200 characters."""
    try:
        shown = redact(source)
    except ValueError:  # not a URL after all (a bad port or address): show its scheme only
        shown = source.split("://", 1)[0] + "://…"
    return shown[:200]


def _lstrip(text: str) -> str:
    return text.lstrip(_SPACES)


def _trim(text: str) -> str:
    return text.strip(_SPACES)
