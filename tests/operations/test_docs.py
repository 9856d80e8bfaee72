"""README.md and docs/ stay true to the code: every `python scripts/NAME.py ...` they show uses only flags that script
accepts, every repository path they name exists, every relative link (and its #anchor) resolves, the checkpoint
table is model/checkpoint.py's, and README.md stays short enough to read in two minutes."""

import ast
import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.config import flag_name, script_constants
from tests.scripts import REPO, load_script

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 200
GENERATED_FOLDERS = {"data", "models", "outputs"}  # made by runs: paths under them need not exist in a checkout
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}  # fenced blocks holding commands (not Python or output)
NESTED_FLAGS = {("sweep", "--train-flags"): "train"}  # flags whose value is itself flags of another script
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9_]{2,}\b")  # configs/NEW.py, scripts/NAME.py: stands for any name
SCRIPT_CALL = re.compile(r"(?<![\w/.-])scripts/(\w+)\.py\b")
PATH_TOKEN = re.compile(r"(?<![\w./:-])\.?[\w-]+(?:/[\w.*<>-]*)+")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
SEPARATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Snippet:
    """A piece of code in a page: a command line of a fenced shell block or an inline code span."""

    page: Path
    line: int
    text: str
    block: bool

    def where(self) -> str:
        return f"{self.page.relative_to(REPO)} line {self.line}"


def fenced_blocks(lines: list[str]):
    """(language, [(line number, line)]) of each fenced code block."""
    block, language = None, ""
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            if block is None:
                block, language = [], line.strip().strip("`").strip()
            else:
                yield language, block
                block = None
        elif block is not None:
            block.append((number, line))


def prose(lines: list[str]) -> str:
    """The page with its fenced blocks blanked out (line breaks kept, so offsets still give line numbers)."""
    kept, fenced = [], False
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            kept.append("")
        else:
            kept.append("" if fenced else line)
    return "\n".join(kept)


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


@functools.cache
def snippets(page: Path) -> list[Snippet]:
    """Every shell command of the page's fenced blocks (continuation lines joined) and every inline code span."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    for language, block in fenced_blocks(lines):
        if language not in SHELL_LANGUAGES:
            continue
        start, command = None, ""
        for number, line in block:
            start = start or number
            command += line.rstrip()
            if command.endswith("\\"):
                command = command[:-1] + " "
                continue
            found.append(Snippet(page, start, command, block=True))
            start, command = None, ""
    text = prose(lines)
    for match in INLINE_CODE.finditer(text):
        found.append(Snippet(page, line_of(text, match.start()), " ".join(match.group(2).split()), block=False))
    return found


@functools.cache
def accepted_flags(script: str) -> frozenset[str]:
    """The flags scripts/SCRIPT.py accepts: one per UPPER_CASE setting (booleans also as --no-X), as common.config
    builds them, the extra flags its parse_settings call adds, and --help."""
    flags = {"-h", "--help"}
    for name, default in script_constants(vars(load_script(script))).items():
        flags.add(flag_name(name))
        if isinstance(default, bool):
            flags.add("--no-" + flag_name(name).removeprefix("--"))
    return frozenset(flags | extra_flags(REPO / "scripts" / f"{script}.py"))


def extra_flags(path: Path) -> set[str]:
    """The dashed names among the `extra_flags` given to parse_settings in the script's source: each a literal
    (names, keywords) pair, or a name bound to one in the calling function or at the top of the script."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = bindings(tree.body)
    flags = set()
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        assigned = top_level | bindings(ast.walk(function))
        for node in ast.walk(function):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_settings"):
                continue
            for keyword in node.keywords:
                if keyword.arg == "extra_flags":
                    for element in keyword.value.elts:
                        flag = assigned[element.id] if isinstance(element, ast.Name) else element
                        flags |= {name for name in ast.literal_eval(flag.elts[0]) if name.startswith("-")}
    return flags


def bindings(nodes) -> dict[str, ast.expr]:
    """NAME -> the expression assigned to it, for the plain `NAME = ...` statements among `nodes`."""
    return {
        node.targets[0].id: node.value
        for node in nodes
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
    }


def script_calls(snippet: Snippet):
    """(script, arguments) of each `scripts/NAME.py ...` in the snippet, the arguments up to a shell separator."""
    for match in SCRIPT_CALL.finditer(snippet.text):
        try:
            arguments = shlex.split(snippet.text[match.end() :], comments=True)
        except ValueError as error:
            raise AssertionError(f"{snippet.where()}: cannot read the command {snippet.text!r} ({error})") from None
        end = next((index for index, token in enumerate(arguments) if token in SEPARATORS), len(arguments))
        yield match.group(1), arguments[:end]


def bad_flags(script: str, arguments: list[str], given_in: str = "") -> list[str]:
    """What is wrong with the flags among `arguments` of scripts/SCRIPT.py, one line each (nested flags included)."""
    bad = []
    for index, token in enumerate(arguments):
        if not token.startswith("-") or re.fullmatch(r"-\d[\d.e-]*", token) or " " in token:
            continue
        flag, _, value = token.partition("=")
        if flag not in accepted_flags(script):
            bad.append(f"scripts/{script}.py does not accept {flag}{given_in}")
        nested = NESTED_FLAGS.get((script, flag))
        if nested:
            value = value or (arguments[index + 1] if index + 1 < len(arguments) else "")
            bad += bad_flags(nested, shlex.split(value), f" (given in {flag} of scripts/{script}.py)")
    return bad


def is_command(snippet: Snippet) -> bool:
    """A shell command (whose every path-like word is a path), not a quoted message or a Python expression."""
    return snippet.block or snippet.text.split(" ")[0] in {"python", "torchrun", "pip", "jupyter", "ruff"}


def named_paths(snippet: Snippet) -> list[str]:
    """Repository paths the snippet names: each path-like word of a command, or an inline span that is one path;
    placeholders (configs/NEW.py), absolute paths, addresses and what runs create (data/, models/, outputs/) aside."""
    if is_command(snippet):
        words = PATH_TOKEN.findall(snippet.text)
    elif " " not in snippet.text and PATH_TOKEN.fullmatch(snippet.text):
        words = [snippet.text]
    else:
        return []
    roots = {root.name for root in source_roots()}
    return [
        word.rstrip(".,:;")
        for word in words
        if word.split("/")[0] in roots and not PLACEHOLDER.search(word) and "<" not in word
    ]


def source_roots() -> list[Path]:
    """The repository's top-level folders of source and docs (not hidden ones, and not what runs create)."""
    return [
        path
        for path in REPO.iterdir()
        if path.is_dir() and path.name not in GENERATED_FOLDERS | {"__pycache__"} and not path.name.startswith(".")
    ] + [REPO / ".ci"]


def file_names(snippet: Snippet) -> list[str]:
    """A bare Python file name in inline code (`default.py`, `test_archive.py`): it names a file of the repository."""
    if snippet.block or not re.fullmatch(r"[\w-]+\.py", snippet.text) or PLACEHOLDER.search(snippet.text):
        return []
    return [snippet.text]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen, found = {}, set()
    for line in prose(page.read_text(encoding="utf-8").splitlines()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def page_ids(pages=PAGES) -> list[str]:
    return [str(page.relative_to(REPO)) for page in pages]


def test_docs_pages_exist():
    assert (REPO / "docs").is_dir() and len(PAGES) > 1, "README.md links its manual in docs/*.md"


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_script_commands_use_accepted_flags(page):
    problems = []
    for snippet in snippets(page):
        for script, arguments in script_calls(snippet):
            if PLACEHOLDER.fullmatch(script):
                continue
            if not (REPO / "scripts" / f"{script}.py").is_file():
                problems.append(f"{snippet.where()}: scripts/{script}.py does not exist")
                continue
            command = " ".join(snippet.text.split())
            problems += [f"{snippet.where()}: {bad} (in `{command}`)" for bad in bad_flags(script, arguments)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_inline_flags_exist(page):
    """A flag named on its own in the text (`--no-tta`, `--epochs N`) is a flag of one of the scripts."""
    scripts = [path.stem for path in sorted((REPO / "scripts").glob("*.py"))]
    every_flag = set().union(*(accepted_flags(script) for script in scripts))
    problems = []
    for snippet in snippets(page):
        flag = re.match(r"--[a-z][\w-]*", snippet.text)
        if not snippet.block and flag and flag.group(0) not in every_flag:
            problems.append(f"{snippet.where()}: no script accepts {flag.group(0)} (in `{snippet.text}`)")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_named_paths_exist(page):
    source_files = {path.name for root in source_roots() for path in root.rglob("*.py")}
    problems = []
    for snippet in snippets(page):
        for path in named_paths(snippet):
            if not (any(REPO.glob(path)) if "*" in path else (REPO / path).exists()):
                problems.append(f"{snippet.where()}: {path} does not exist")
        problems += [
            f"{snippet.where()}: no file is named {name}" for name in file_names(snippet) if name not in source_files
        ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_ids())
def test_relative_links_resolve(page):
    text = INLINE_CODE.sub(
        lambda match: " " * len(match.group(0)), prose(page.read_text(encoding="utf-8").splitlines())
    )
    problems = []
    for match in LINK.finditer(text):
        target = match.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        where = f"{page.relative_to(REPO)} line {line_of(text, match.start())}"
        if not linked.exists():
            problems.append(f"{where}: the link {target} points to a missing file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: the link {target} names no heading of {linked.relative_to(REPO)}")
    assert not problems, "\n".join(problems)


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, more than {README_MAX_LINES}"


def test_checkpoint_table_is_the_docstrings():
    """The checkpoint format has one table, model/checkpoint.py's docstring, copied once into docs/outputs.md."""
    docstring = ast.get_docstring(ast.parse((REPO / "model" / "checkpoint.py").read_text(encoding="utf-8")))
    table = [line for line in docstring.splitlines() if line.startswith("|")]
    outputs = (REPO / "docs" / "outputs.md").read_text(encoding="utf-8")
    assert "\n".join(table) in outputs, "docs/outputs.md must hold model/checkpoint.py's checkpoint table unchanged"
    copies = [page for page in PAGES if "| `model_state` |" in page.read_text(encoding="utf-8")]
    assert copies == [REPO / "docs" / "outputs.md"], f"the checkpoint table is kept in {page_ids(copies)}"


def test_imports_run_one_way_as_the_readme_says():
    """common <- dataset <- model <- utils <- scripts: each folder imports only those to its left."""
    order = ["common", "dataset", "model", "utils", "scripts"]
    backwards = []
    for folder in order:
        for path in sorted((REPO / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    top = node.module.split(".")[0]
                    if top in order and order.index(top) > order.index(folder):
                        backwards.append(f"{folder}/{path.name} imports {node.module}")
    assert not backwards
