"""Every `robustrep ...` command line in README.md and docs/ parses, so the docs cannot drift from
the CLI.

Lightning subcommands are parsed with ``--print_config`` (config files, keys, types and class paths
are checked; nothing is trained), ``reproduce`` runs with ``--dry-run``, and ``report`` / ``data`` /
``analyze`` lines go through their argument parsers. Placeholders the docs use (``<run>``,
``X.yaml``, ``S``, ``$s``, ``{a,b}``) are filled in first; a command that uses another placeholder
fails here.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LIGHTNING = ("fit", "validate", "test", "predict")

#: Placeholders in the docs -> a value that parses.
PLACEHOLDERS = [
    (r"runs/X/<run>", "runs/quickstart/RUN"),
    (r"<run>", "RUN"),
    (r"<Class>|<Method>", "ERM"),
    (r"<[A-Za-z_ ]+>", "PLACEHOLDER"),
    (r"experiments/X\.yaml|(?<![\w/])X\.yaml", "experiments/quickstart.yaml"),
    (r"(?<=\s)S(?=\s|$)", "0"),
]


def _expand_braces(text: str) -> list[str]:
    """Shell brace expansion of ``{a,b}`` groups (each group expands in step with the others)."""
    groups = re.findall(r"\{([\w.-]+(?:,[\w.-]+)+)\}", text)
    if not groups:
        return [text]
    out = []
    for choice in itertools.product(*[g.split(",") for g in dict.fromkeys(groups)]):
        expanded = text
        for group, value in zip(dict.fromkeys(groups), choice, strict=True):
            expanded = expanded.replace("{" + group + "}", value)
        out.append(expanded)
    return out


def documented_commands() -> list[tuple[str, str]]:
    """(``file:line``, command) for every ``robustrep`` command in code blocks and inline code."""
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        in_block, variables = False, {}
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.strip().startswith("```"):
                in_block, variables = not in_block, {}
                i += 1
                continue
            where = f"{doc.relative_to(ROOT)}:{i + 1}"
            if in_block:
                assignment = re.match(r"^\s*([A-Z][A-Z0-9_]*)='(.*)'\s*$", line)
                if assignment:
                    variables[assignment.group(1)] = [assignment.group(2)]
                for name, values in re.findall(r"for (\w+) in ([^;]+);", line):
                    variables[name] = values.split()
                command = line
                while command.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    command = command.rstrip()[:-1] + " " + lines[i].strip()
                command = re.sub(r"\s+#(?!\S*\{).*$", "", command).strip()  # trailing shell comment
                # a launcher's `-m robustrep.cli ...` (torchrun) is the `robustrep ...` command
                command = re.sub(r"(?<=\s)-m robustrep\.cli(?=\s)", "robustrep", command)
                command = re.sub(r"^(\$ |.*?;\s*do\s+|for .*?;\s*do\s+)", "", command).strip()
                match = (
                    re.search(r"(?:^|\s)(robustrep\s.*)$", command)
                    if "robustrep " in command
                    else None
                )
                if match and not command.startswith(("#", "pip ", "git ")):
                    texts = [match.group(1).split(";")[0].split(" > ")[0].strip()]
                    # shell variables and for-loop values of the block
                    for name, values in variables.items():
                        pattern = re.compile(r'"?\$\{?' + name + r'\}?"?')
                        if any(pattern.search(t) for t in texts):
                            # every value where it names a file (${cfg}_grid_mnist.yaml), the first
                            # one elsewhere (seeds)
                            in_word = any(
                                re.search(r'\w"?\$\{?' + name + r"|\$\{?" + name + r'\}?"?\w', t)
                                for t in texts
                            )
                            chosen = values if in_word else values[:1]
                            quote = len(chosen) == 1
                            texts = [
                                pattern.sub(lambda _m, v=v, q=quote: shlex.quote(v) if q else v, t)
                                for t in texts
                                for v in chosen
                            ]
                    found.extend((where, t) for t in texts)
            else:
                # inline code that is a whole command line (options, no "a|b" alternatives or "...")
                for span in re.findall(r"`(robustrep [^`]+)`", line):
                    if (
                        " --" in span
                        and "|" not in span
                        and "..." not in span
                        and not span.split()[-1].startswith("--")
                    ):
                        found.append((where, span))
            i += 1
    return found


def _fill(text: str) -> str:
    for pattern, value in PLACEHOLDERS:
        text = re.sub(pattern, value, text)
    return text.replace("...", "").strip()


COMMANDS = [
    (where, cmd) for where, raw in documented_commands() for cmd in _expand_braces(_fill(raw))
]


def test_the_docs_document_commands():
    subs = {shlex.split(cmd)[1] for _, cmd in COMMANDS if len(shlex.split(cmd)) > 1}
    assert {"fit", "test", "report", "reproduce", "data", "analyze"} <= subs


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_documented_command_parses(where, command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command)[1:]
    assert argv, f"{where}: empty command"
    sub = argv[0]
    if sub in ("-h", "--help", "help"):
        assert run_cli(argv) == 0
    elif sub in LIGHTNING:
        if "--help" in argv or any(a.endswith(".help") for a in argv):
            code = run_cli(argv)
        else:
            code = run_cli([*argv, "--print_config"])
        err = capsys.readouterr().err
        assert code == 0, f"{where}: `{command}` does not parse:\n{err[-1500:]}"
    elif sub == "reproduce":
        extra = [] if "--dry-run" in argv else ["--dry-run"]
        code = run_cli([*argv, *extra, "--output_root", str(tmp_path)])
        assert code == 0, f"{where}: `{command}`:\n{capsys.readouterr().err[-1500:]}"
    else:
        from robustrep.analysis.commands import build_parser as analyze_parser
        from robustrep.data.commands import build_parser as data_parser
        from robustrep.report import build_parser as report_parser

        parsers = {"report": report_parser, "data": data_parser, "analyze": analyze_parser}
        assert sub in parsers, f"{where}: unknown subcommand in `{command}`"
        try:
            parsers[sub]().parse_args(argv[1:])
        except SystemExit as exit_:
            assert exit_.code == 0, f"{where}: `{command}`:\n{capsys.readouterr().err[-1500:]}"
