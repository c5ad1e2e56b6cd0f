"""The docs cannot drift: docs/configuration.md's table is `Settings` (every setting, its real
default, no stale row), .env.example names every setting, the README stays a front door that
names the test command CI runs, and every relative link in README.md and docs/ resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo

from fetcher.settings import Settings, env_name

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
TABLE_HEADER = "| setting | default | meaning |"
README_MAX_LINES = 150

SETTINGS = {env_name(field): info for field, info in Settings.model_fields.items()}


def canonical_default(info: FieldInfo) -> str:
    """How the table's default column must spell a field's default: `required`, `unset` (None),
    `empty` (""), else the value in backticks as one would write it in `.env` (`true`, `10`,
    `8g`; a whole float without its `.0`)."""
    if info.is_required():
        return "required"
    value = info.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return f"`{text}`"


def split_row(line: str) -> list[str]:
    """The cells of one markdown table row (`\\|` inside a cell is not a separator)."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", inner)]


def settings_table(text: str) -> dict[str, str]:
    """Setting name -> default cell of the table under TABLE_HEADER. Fails on a malformed row
    or a setting named twice."""
    lines = text.splitlines()
    assert lines.count(TABLE_HEADER) == 1, f"exactly one table headed {TABLE_HEADER!r} expected"
    start = lines.index(TABLE_HEADER) + 2  # past the header and its --- row
    rows: dict[str, str] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = split_row(line)
        assert len(cells) == 3, f"row with {len(cells)} cells instead of 3: {line}"
        name_cell, default, meaning = cells
        match = re.fullmatch(r"`([A-Z0-9_]+)`", name_cell)
        assert match, f"first cell must be one `SETTING`: {line}"
        name = match.group(1)
        assert name not in rows, f"{name} has two rows"
        assert meaning, f"{name} has no meaning"
        rows[name] = default
    return rows


@pytest.fixture(scope="module")
def table() -> dict[str, str]:
    return settings_table(CONFIGURATION.read_text())


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_setting_is_in_the_configuration_table_with_its_default(
    name: str, table: dict[str, str]
) -> None:
    assert name in table, f"{name} missing from the table in {CONFIGURATION.name}"
    expected = canonical_default(SETTINGS[name])
    assert table[name] == expected, (
        f"{name}: the table says default {table[name]!r}, Settings says {expected!r}"
    )


def test_every_row_of_the_configuration_table_is_a_setting(table: dict[str, str]) -> None:
    stale = sorted(set(table) - set(SETTINGS))
    assert not stale, f"rows in {CONFIGURATION.name} that name no setting: {stale}"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_setting_is_in_env_example(name: str) -> None:
    assert f"{name}=" in (ROOT / ".env.example").read_text(), f"{name} missing from .env.example"


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; at most {README_MAX_LINES}: move the rest to docs/"
    )


def test_ci_runs_the_readme_test_command() -> None:
    assert "scripts/test.sh" in (ROOT / "README.md").read_text()
    assert "scripts/test.sh" in (ROOT / ".ci/run").read_text()


# --- links ---------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`(?:[^`\n]|\n(?!\n))*`")  # may wrap, not past a blank line
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text without code blocks and code spans, where `[x](y)` is no link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation but `-` and `_` dropped,
    spaces as `-` (a repeated heading gets `-1`, `-2`, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(page.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:, ...
    ]


PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def link_problem(page: Path, target: str, root: Path = ROOT) -> str | None:
    """Why `target`, a relative link on `page`, does not resolve to a file (and, for a link into
    a markdown page, one of its headings) under `root`; None when it does."""
    path_part, _, fragment = target.partition("#")
    dest = (page.parent / path_part).resolve() if path_part else page.resolve()
    if not dest.exists():
        return f"{target}: no such file"
    if not dest.is_relative_to(root.resolve()):
        return f"{target}: outside the repository"
    if fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text()):
        return f"{target}: no heading #{fragment} in {dest.name}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    problems = [p for t in relative_links(page) if (p := link_problem(page, t)) is not None]
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_docs_pages_exist_and_the_readme_links_each() -> None:
    pages = {
        "README.md",
        "operating.md",
        "configuration.md",
        "schedulers.md",
        "metrics.md",
        "how-a-job-runs.md",
        "security.md",
        "development.md",
    }
    assert pages <= {p.name for p in DOCS.glob("*.md")}
    linked = {t.partition("#")[0] for t in relative_links(ROOT / "README.md")}
    missing = sorted(f"docs/{p}" for p in pages if f"docs/{p}" not in linked)
    assert not missing, f"README.md does not link {missing}"


def test_the_link_check_catches_a_broken_link(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "outside.md").write_text("# Outside\n")
    page = root / "page.md"
    page.write_text(
        "# Title\n\n[ok](#title) [bad](missing.md) [anchor](#nowhere) `[code](x.md)`\n"
        "```\n[fenced](y.md)\n```\n[web](https://example.org) [out](../outside.md)\n"
    )
    assert relative_links(page) == ["#title", "missing.md", "#nowhere", "../outside.md"]
    assert link_problem(page, "#title", root) is None
    assert link_problem(page, "missing.md", root) == "missing.md: no such file"
    assert link_problem(page, "#nowhere", root) == "#nowhere: no heading #nowhere in page.md"
    assert link_problem(page, "../outside.md", root) == "../outside.md: outside the repository"
