"""The documentation against the code: every flag of ``main.py`` is documented, every
``python3 main.py`` command the docs show parses, every relative link resolves, and the README
stays a few screens long.

The docs are ``README.md`` and ``docs/*.md``. Commands are parsed with ``main.build_parser()``,
never run, so these tests take seconds (importing ``main`` loads TensorFlow; no model is built).
The last tests feed each check a known mistake, so that a check that can no longer fail shows.
"""
import argparse
import contextlib
import glob
import io
import os
import re
import shlex

import pytest

import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
USAGE = os.path.join(ROOT, "docs", "usage.md")
MAX_README_LINES = 250
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def doc_paths() -> list[str]:
    """README.md and every Markdown page of docs/."""
    return [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def relative(path: str) -> str:
    return os.path.relpath(path, ROOT)


# --- the parsers and their flags ----------------------------------------------------------------

def parsers(parser: argparse.ArgumentParser, name: str = "main.py"):
    """``(name, parser)`` for ``parser`` and, depth first, every sub-command's parser."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                yield from parsers(subparser, f"{name} {command}")


def flags(parser: argparse.ArgumentParser) -> list[str]:
    """The long option strings of ``parser`` itself (not its sub-commands'), but ``--help``."""
    return [option for action in parser._actions
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
            for option in action.option_strings if option.startswith("--")]


def mentioned(flag: str, text: str) -> bool:
    """Whether ``text`` names ``flag`` as a whole word (``--data`` is not in ``--data_x``)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def undocumented(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """``"COMMAND --flag"`` for every flag of every command of ``parser`` missing from ``text``."""
    return [f"{name} {flag}" for name, command in parsers(parser) for flag in flags(command)
            if not mentioned(flag, text)]


# --- commands in fenced code blocks -------------------------------------------------------------

def code_blocks(text: str):
    """``(line number, lines)`` of every fenced code block of a Markdown text."""
    block, start = None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            if block is None:
                block, start = [], number + 1
            else:
                yield start, block
                block = None
        elif block is not None:
            block.append(line)


def without_comment(line: str) -> str:
    """``line`` up to a shell comment: a ``#`` that starts a word, outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_lines(lines: list[str], start: int):
    """``(line number, command)``: the block's lines with backslash continuations joined and
    trailing comments stripped."""
    pending, first = "", start
    for number, line in enumerate(lines, start):
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield first, without_comment(pending + line).strip()
        pending = ""
    if pending:
        yield first, without_comment(pending).strip()


def main_arguments(command: str) -> list[str] | None:
    """The arguments after ``python3 main.py`` when ``command`` runs it (after any ``NAME=value``
    environment assignments), else None."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: a fragment of a longer shell command, not ours
        return None
    while words and ENV.match(words[0]):
        words = words[1:]
    return words[2:] if words[:2] == ["python3", "main.py"] else None


def main_commands(text: str):
    """``(line number, command, arguments)`` of every ``python3 main.py`` command in the fenced
    code blocks of ``text``. A command nested in another one's quoted argument (the SLURM
    recipe's ``srun bash -c '... python3 main.py ...'``, whose ``$HOSTS`` only the job's shell
    fills in) does not start a line and is not checked; no other command is skipped."""
    for start, lines in code_blocks(text):
        for number, command in shell_lines(lines, start):
            arguments = main_arguments(command)
            if arguments is not None:
                yield number, command, arguments


def parse_error(arguments: list[str]) -> str | None:
    """argparse's message when ``main.py``'s parser refuses ``arguments``, else None."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            main.build_parser().parse_args(arguments)
    except SystemExit as stop:  # --help exits with 0: the command is fine
        if stop.code:
            message = stderr.getvalue().strip().splitlines()  # the usage, then the error
            return message[-1] if message else f"exit status {stop.code}"
    return None


# --- links --------------------------------------------------------------------------------------

def prose(text: str) -> str:
    """``text`` without its fenced code blocks and inline code spans (line numbers kept)."""
    lines, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            lines.append("")
        else:
            lines.append("" if inside else re.sub(r"(`+)(.+?)\1", "code", line))
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"(`+)(.+?)\1", r"\2", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of every heading of a Markdown text, repeats numbered as GitHub does."""
    seen, found = {}, set()
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        match = None if inside else HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: str, text: str) -> list[str]:
    """Every relative link of the Markdown file ``path`` (holding ``text``) whose file does not
    exist, or whose ``#anchor`` is no heading of the Markdown file it points at."""
    broken = []
    for number, line in enumerate(prose(text).splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file \
                else path
            where = f"{relative(path)}:{number}: ({target})"
            if not os.path.exists(resolved):
                broken.append(f"{where} no such file {relative(resolved)}")
            elif anchor and resolved.endswith(".md") and anchor not in anchors(
                    text if resolved == path else read(resolved)):
                broken.append(f"{where} no heading #{anchor} in {relative(resolved)}")
    return broken


# --- the tests ----------------------------------------------------------------------------------

def test_every_flag_of_every_command_is_documented():
    text = "\n".join(read(path) for path in doc_paths())
    missing = undocumented(main.build_parser(), text)
    assert not missing, f"flags named in no doc (README.md, docs/*.md): {missing}"


def test_usage_documents_each_command_s_flags_in_its_own_section():
    """docs/usage.md promises every flag of every command: each in that command's section
    (``## Training...``, ``## register...``, ``## apply...``, ``## evaluate...``)."""
    sections = {}
    for part in re.split(r"^## ", read(USAGE), flags=re.M)[1:]:
        sections[part.split()[0].rstrip(":").lower()] = part
    missing = []
    for name, parser in parsers(main.build_parser()):
        section = "training" if name == "main.py" else name.split()[-1]
        assert section in sections, f"docs/usage.md has no section '## {section}...'"
        missing += [f"{name} {flag}" for flag in flags(parser)
                    if not mentioned(flag, sections[section])]
    assert not missing, f"flags missing from their command's section of docs/usage.md: {missing}"


def test_every_documented_main_command_parses():
    found, refused = 0, []
    for path in doc_paths():
        for number, command, arguments in main_commands(read(path)):
            found += 1
            error = parse_error(arguments)
            if error:
                refused.append(f"{relative(path)}:{number}: {command}\n    {error}")
    assert found >= 30, f"only {found} python3 main.py commands found: is the extraction broken?"
    assert not refused, "commands main.py's parser refuses:\n" + "\n".join(refused)


def test_every_relative_link_resolves():
    broken = [problem for path in doc_paths() for problem in broken_links(path, read(path))]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_fits_on_a_few_screens():
    lines = len(read(README).splitlines())
    assert lines <= MAX_README_LINES, (f"README.md has {lines} lines, more than "
                                       f"{MAX_README_LINES}: move details into docs/")


def test_readme_keeps_the_ci_test_command():
    """The README's test command is the one .ci/run runs."""
    ci = read(os.path.join(ROOT, ".ci", "run")).strip().splitlines()[-1]
    assert ci == "python3 -m pip install -r requirements.txt && python3 -m pytest -q tests"
    assert ci in read(README)


# --- each check catches the mistake it is for ---------------------------------------------------

def test_flag_check_catches_an_unnamed_flag():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    sub = parser.add_subparsers().add_parser("evaluate")
    sub.add_argument("--max_pairs")
    assert undocumented(parser, "`--data`, `--max_pairs`") == []
    assert undocumented(parser, "`--data_x`, `--max_pairs`") == ["main.py --data"]
    assert undocumented(parser, "`--data`") == ["main.py evaluate --max_pairs"]


def test_command_check_joins_lines_strips_comments_and_catches_bad_flags():
    text = ("```bash\n"
            "python3 main.py register --model m.keras --moving a.nii \\\n"
            "    --static b.nii --moved c.nii   # a comment\n"
            "TF_ENABLE_ONEDNN_OPTS=0 python3 main.py --no_such_flag\n"
            "python3 viz.py runs/X\n"
            "```\n"
            "python3 main.py --outside_a_block\n")
    found = list(main_commands(text))
    assert [(number, arguments[0]) for number, _, arguments in found] == [
        (2, "register"), (4, "--no_such_flag")]
    assert found[0][2][-1] == "c.nii"
    assert parse_error(found[0][2]) is None
    assert "--no_such_flag" in parse_error(found[1][2])
    assert "required" in parse_error(["apply", "--warp", "w.nii.gz"])


def test_link_check_catches_missing_files_and_anchors(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## The `--warp` flag\n")
    text = ("# Page\n\n## Set up and run\n\n"
            "[ok](other.md) [ok](other.md#the---warp-flag) [ok](#set-up-and-run) "
            "[web](https://example.org/x.md)\n"
            "[gone](missing.md) [gone](other.md#nowhere) [gone](#nowhere)\n"
            "`[in code](missing.md)`\n\n```\n[in a block](missing.md)\n```\n")
    page.write_text(text)
    broken = broken_links(str(page), text)
    assert len(broken) == 3, broken
    assert all(":6:" in problem for problem in broken)


@pytest.mark.parametrize("heading, anchor", [
    ("Training: `python3 main.py`", "training-python3-mainpy"),
    ("The follow-up papers' options", "the-follow-up-papers-options"),
    ("Default run (synthetic MNI152 subjects)", "default-run-synthetic-mni152-subjects"),
    ("CPU kernels: oneDNN on every x86 CPU", "cpu-kernels-onednn-on-every-x86-cpu")])
def test_anchors_are_github_s(heading, anchor):
    assert slug(heading) == anchor
