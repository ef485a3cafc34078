"""The docs a new team reads hold to the code where a slip is cheap to make:
every relative link and #anchor of README.md, DEVELOPERS.md and docs/*.md
resolves, and so does every docs/*.md#anchor the code names; a repository
path the docs name exists; every variable the code reads is in .env.example
and described in the docs, .env.example lists none that nothing reads, and a
default it states is the settings' own."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
from pathlib import Path

import pytest
import uvicorn.config

from tasklight.envvars import FALSE, TRUE

from .stack import ROOT

READ_FIRST = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_DIRS = ("tasklight", "workloads", "live", "accounts")
# The repository's own folders: a `path` in the docs that starts with one of
# them names a file of the repository.
REPO_DIRS = (*CODE_DIRS, "tasklight_cli", "tests", "docs", "static", "templates", "bench", ".ci")
# Paths under a repository folder's name that are not the repository's.
NOT_REPO_PATHS = {"tasklight/config.json": "the CLI's file under $XDG_CONFIG_HOME (docs/cli.md)"}

# Read by the code but set by Tasklight itself, never by an operator.
SET_BY_TASKLIGHT = {"TASKLIGHT_PROCESS": "the entry points say web or worker (tasklight/asgi.py, tasklight/celery.py)"}
# Read before Django, by the Procfile's shell or by uvicorn.
READ_BY_PROCFILE = ("PORT", "HOST", "WORKER_CONCURRENCY")
READ_BY_UVICORN = ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS")

VARIABLE_READ = re.compile(
    r"(?:env\.\w+|whole_number|decimal_number|boolean|log_level|os\.environ\.get|os\.getenv)\(\s*\"([A-Z][A-Z0-9_]*)\""
)
CHECKED_READERS = {"whole_number", "decimal_number", "boolean", "log_level"}


def without_code_blocks(markdown: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(markdown_file: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in without_code_blocks(markdown_file.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.+?)\s*#*$", line)
        if heading:
            name = slug(heading.group(1))
            count = seen.get(name, 0)
            seen[name] = count + 1
            found.add(name if count == 0 else f"{name}-{count}")
    return found


def broken_target(source: Path, target: str) -> str | None:
    """Why ``target``, a link in ``source``, does not resolve; None when it does."""
    path, _, anchor = target.partition("#")
    resolved = (source.parent / path).resolve() if path else source
    if not resolved.exists():
        return "no such file"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"no heading #{anchor} in {resolved.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("document", READ_FIRST, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(document: Path) -> None:
    text = without_code_blocks(document.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        reason = broken_target(document, target)
        if reason:
            broken.append(f"{target}: {reason}")
    assert not broken, broken


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / name for name in listed.splitlines() if (ROOT / name).is_file()]


def test_every_docs_anchor_the_code_names_resolves() -> None:
    broken = []
    for path in tracked_files():
        if path.suffix in {".png", ".json"} or path.name == "benchmarks.md":
            continue
        for target in re.findall(r"\bdocs/[\w-]+\.md(?:#[\w-]+)?", path.read_text(errors="replace")):
            reason = broken_target(ROOT / "README.md", target)
            if reason:
                broken.append(f"{path.relative_to(ROOT)}: {target}: {reason}")
    assert not broken, broken


@pytest.mark.parametrize("document", READ_FIRST, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_repository_path_the_docs_name_exists(document: Path) -> None:
    missing = []
    for quoted in re.findall(r"`([^`\s]+)`", without_code_blocks(document.read_text())):
        path, _, test_name = quoted.partition("::")
        wildcard = "*" in path or "…" in path
        if path.split("/", 1)[0] not in REPO_DIRS or "/" not in path or wildcard or path in NOT_REPO_PATHS:
            continue
        exists = (ROOT / path).exists()
        defined = exists and (
            not test_name or re.search(rf"^(async )?def {test_name}\(", (ROOT / path).read_text(), re.M)
        )
        if not defined:
            missing.append(quoted)
    assert not missing, missing


def test_developers_md_maps_every_test_file() -> None:
    """DEVELOPERS.md says what each test file covers: a new one is added there too."""
    mapped = (ROOT / "DEVELOPERS.md").read_text()
    unmapped = [path.name for path in sorted((ROOT / "tests").glob("test_*.py")) if f"tests/{path.name}" not in mapped]
    assert not unmapped, unmapped


def env_example() -> dict[str, str]:
    """Each variable .env.example lists (`NAME=value` or `# NAME=value`), with its value."""
    listed = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"#?\s*([A-Z][A-Z0-9_]*)=(\S*)$", line)
        if match:
            listed[match.group(1)] = match.group(2)
    return listed


def read_by(directories: tuple[str, ...]) -> set[str]:
    names: set[str] = set()
    for directory in directories:
        for path in (ROOT / directory).rglob("*.py"):
            names.update(VARIABLE_READ.findall(path.read_text()))
    return names


def documented_in_docs() -> str:
    return "\n".join(path.read_text() for path in READ_FIRST if path.name != "benchmarks.md")


def test_every_variable_the_code_reads_is_in_env_example_and_the_docs() -> None:
    listed = env_example()
    read = read_by(CODE_DIRS)
    assert {"DATABASE_URL", "TASK_LEASE_SECONDS", "WORKER_METRICS_HOST"} <= read, "the pattern misses reads"
    assert SET_BY_TASKLIGHT.keys() <= read, "an exemption the code no longer reads"
    missing = sorted(read - listed.keys() - SET_BY_TASKLIGHT.keys())
    assert not missing, f"read by the code but not in .env.example: {missing}"
    docs = documented_in_docs()
    undescribed = [name for name in listed if not re.search(rf"`{name}(=[^`]*)?`", docs)]
    assert not undescribed, f"in .env.example but in no doc: {undescribed}"


def test_env_example_lists_only_what_something_reads() -> None:
    procfile = (ROOT / "Procfile").read_text()
    for name in READ_BY_PROCFILE:
        assert f"${{{name}" in procfile or f"${name}" in procfile, name
    uvicorn_source = inspect.getsource(uvicorn.config)
    for name in READ_BY_UVICORN:
        assert f'"{name}"' in uvicorn_source, name
    known = read_by(CODE_DIRS) | set(READ_BY_PROCFILE) | set(READ_BY_UVICORN)
    unread = [name for name in env_example() if name not in known]
    assert not unread, f"in .env.example but read by nothing: {unread}"


def test_the_cli_variables_are_in_its_doc() -> None:
    cli_doc = (ROOT / "docs" / "cli.md").read_text()
    read = read_by(("tasklight_cli",))
    assert "TASKLIGHT_TOKEN" in read
    assert not [name for name in read if f"`{name}`" not in cli_doc]


def literal(node: ast.expr) -> object:
    """A constant, or arithmetic on constants (4 * 1024 * 1024); None otherwise."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left, right = literal(node.left), literal(node.right)
        if isinstance(left, int | float) and isinstance(right, int | float):
            return left * right
    return None


def literal_defaults() -> dict[str, object]:
    """The default of each variable tasklight/settings.py reads with a literal
    default: numbers, switches and the log level (tasklight/envvars.py), and
    the strings that have one."""
    defaults: dict[str, object] = {}
    for node in ast.walk(ast.parse((ROOT / "tasklight" / "settings.py").read_text())):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr == "str" and node.args:
            # django-environ's strings: those with a default of their own (not "" for unset).
            default_string = next((k.value for k in node.keywords if k.arg == "default"), None)
            key = node.args[0]
            if isinstance(key, ast.Constant) and isinstance(default_string, ast.Constant) and default_string.value:
                defaults[str(key.value)] = default_string.value
            continue
        if not (isinstance(node.func, ast.Name) and node.func.id in CHECKED_READERS):
            continue
        name = node.args[0]
        default = node.args[1] if len(node.args) > 1 else next(k.value for k in node.keywords if k.arg == "default")
        assert isinstance(name, ast.Constant)
        value = literal(default)
        if value is not None:  # else computed: DEBUG's, HTTPS's
            defaults[str(name.value)] = value
    return defaults


def test_a_default_env_example_states_is_the_settings_own() -> None:
    defaults = literal_defaults()
    assert {"TASK_LEASE_SECONDS", "API_MAX_BODY_BYTES", "CELERY_EVENTS", "TASK_RATE_LIMIT"} <= defaults.keys()
    wrong = []
    for name, value in env_example().items():
        if name not in defaults or not value:
            continue
        default = defaults[name]
        if isinstance(default, bool):
            stated: object = True if value.lower() in TRUE else False if value.lower() in FALSE else value
        elif isinstance(default, int | float):
            stated = float(value)
        elif name == "LOG_LEVEL":
            stated = value.upper()
        else:
            stated = value
        if stated != default:
            wrong.append(f"{name}: .env.example {value}, settings {default}")
    assert not wrong, wrong
