"""Every ``fedgate …`` example in the docs names commands and options that exist.

Examples are taken from fenced code blocks and inline code of README.md, docs/*.md and
policies/README.md; each is walked down ``fedgate``'s real parser (subcommand by subcommand),
and every ``--option`` it uses must be one the command accepts. A doc that shows a flag the CLI
does not have fails the build. (The quickstart's commands are also run: test_quickstart.py.)
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from fedgate.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", REPO / "policies" / "README.md", *(REPO / "docs").glob("*.md")])
_FENCE = re.compile(r"```(?:sh|bash|shell|console)\n(.*?)```", re.S)
_ANY_FENCE = re.compile(r"```[a-z]*\n.*?```", re.S)
_INLINE = re.compile(r"`([^`\n]+)`")
_SEPARATORS = re.compile(r"\|\||&&|[|;]|\$\(|\)")


def examples(text: str) -> list[str]:
    """The ``fedgate …`` command lines in ``text`` (continuations joined, one per command)."""
    found: list[str] = []
    for block in _FENCE.findall(text):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            found += _commands(line)
    for code in _INLINE.findall(_ANY_FENCE.sub("", text)):
        found += _commands(code)
    return found


def _commands(line: str) -> list[str]:
    line = line.split(" #", 1)[0]
    return [
        part.strip()[part.strip().index("fedgate ") :]
        for part in _SEPARATORS.split(line)
        if re.search(r"(^|\s|/)fedgate\s", part.strip() + " ")
        and "fedgate " in part
        and not part.strip().startswith(("#", "python -m fedgate", "import"))
    ]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def problems(command: str, parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with one example: an unknown subcommand or option."""
    try:
        tokens = shlex.split(command)
    except ValueError:
        tokens = command.split()
    path = ["fedgate"]
    tokens = tokens[1:]
    while True:
        choices = _subparsers(parser)
        if not choices:
            break
        if not tokens or tokens[0] in ("…", "...", "-h", "--help"):
            return []  # a group named in prose (`fedgate staff`, `fedgate query …`), or its help
        if tokens[0].startswith("-"):
            return [f"`{command}`: `{' '.join(path)}` needs a command ({', '.join(choices)})"]
        if tokens[0] not in choices:
            return [f"`{command}`: `{' '.join(path)}` has no command {tokens[0]!r}"]
        path.append(tokens[0])
        parser = choices[tokens.pop(0)]
    # ``[--a --b]`` in a synopsis lists optional options: each must still exist.
    known = {s for action in parser._actions for s in action.option_strings}
    return [
        f"`{command}`: `{' '.join(path)}` has no option {token.split('=', 1)[0]}"
        for token in tokens
        if token.startswith("--") and token.split("=", 1)[0].strip("[]") not in known
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_example_uses_commands_and_options_that_exist(doc: Path) -> None:
    parser = build_parser()
    found = examples(doc.read_text(encoding="utf-8"))
    wrong = [p for command in found for p in problems(command, parser)]
    assert wrong == []


class TestTheChecker:
    def test_a_flag_that_does_not_exist_is_caught(self) -> None:
        parser = build_parser()
        text = "```sh\nfedgate audit search --db a.sqlite --federation state/federation\n```\n"
        (command,) = examples(text)
        assert problems(command, parser) == [
            f"`{command}`: `fedgate audit search` has no option --federation"
        ]

    def test_an_unknown_command_is_caught(self) -> None:
        wrong = problems("fedgate answers shw ID", build_parser())
        assert len(wrong) == 1
        assert "has no command 'shw'" in wrong[0]

    def test_inline_and_continued_examples_are_found(self) -> None:
        text = "Run `fedgate down --state s` or\n```sh\nfedgate up \\\n  --base-port 24051\n```\n"
        found = sorted(" ".join(e.split()) for e in examples(text))
        assert found == ["fedgate down --state s", "fedgate up --base-port 24051"]
