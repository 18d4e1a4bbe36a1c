"""The documentation: a short README that links every page of docs/, a configuration reference that is generated (so
it cannot drift from the code), a Layout section that matches the package, and links that lead somewhere."""

import dataclasses
import re
from pathlib import Path

from conftest import REPO

from apo_online.config import Config
from apo_online.config_help import REGENERATE, config_reference_markdown
from apo_online.optimizers.registry import BUILTIN_MODULES, get_optimizer_entry

README = REPO / "README.md"
DOCS = REPO / "docs"
PACKAGE = REPO / "apo_online"
MAX_README_LINES = 320


def section(text: str, title: str) -> str:
    """The body of the `## title` section of a markdown text."""
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+ (.+)$", without_code(path.read_text()), flags=re.MULTILINE)}


def test_slug_follows_github():
    assert slug("The RM probe: does the adversary learn?") == "the-rm-probe-does-the-adversary-learn"
    assert slug("Testbed v3 on the eval prompts: the report (2026-12-05)") == \
        "testbed-v3-on-the-eval-prompts-the-report-2026-12-05"
    assert slug("Finding errors first: `--dry_run`") == "finding-errors-first---dry_run"


def test_every_docs_page_is_linked_from_the_readme():
    readme = README.read_text()
    pages = sorted(DOCS.glob("*.md"))
    assert pages
    unlinked = [p.name for p in pages if not re.search(rf"\]\(docs/{re.escape(p.name)}(#[^)]*)?\)", readme)]
    assert not unlinked, f"docs pages not linked from README.md: {unlinked}"


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to docs/"


def test_readme_starts_with_the_set_up_commands_that_ci_runs():
    first_block = README.read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    install, tests = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert install == "bash scripts/install.sh && accelerate launch recipes/apo_ppo.py"
    assert tests == "python -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert "bash scripts/install.sh" in ci and tests in ci


def test_configuration_reference_is_what_the_generator_writes():
    written = (DOCS / "configuration.md").read_text()
    assert written == config_reference_markdown(), f"docs/configuration.md is stale; regenerate it: {REGENERATE}"


def test_configuration_reference_names_every_config_field():
    reference = (DOCS / "configuration.md").read_text()
    config = Config()
    sections = [(name, type(getattr(config, name))) for name in Config.CORE_SECTIONS]
    sections += [(name, get_optimizer_entry(name).config_cls) for name in BUILTIN_MODULES]
    missing = [f"{name}.{f.name}" for name, cls in sections for f in dataclasses.fields(cls)
               if f"| `{name}.{f.name}` |" not in reference]
    assert not missing, f"config fields missing from docs/configuration.md ({REGENERATE}): {missing}"


def layout_paths() -> tuple[set[str], set[str]]:
    """(folders, files) under apo_online/ that the README's Layout section names, relative to apo_online/.

    The section's code block lists apo_online/ first; each line indented by two spaces names top-level modules, or a
    subpackage (`name/`) followed by its files; a line indented deeper continues the line above."""
    block = section(README.read_text(), "Layout").split("```\n", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    assert lines[0].split()[0] == "apo_online/", "the Layout block starts with apo_online/"
    folders, files, folder = set(), set(), ""
    for line in lines[1:]:
        if not line.startswith(" "):
            break  # the next top-level folder: apo_online/ is done
        tokens = line.split()
        indent = len(line) - len(line.lstrip())
        if indent == 2:
            folder = tokens[0].rstrip("/") if re.fullmatch(r"\w+/", tokens[0]) else ""
            if folder:
                folders.add(folder)
        files |= {f"{folder}/{t}" if folder else t for t in tokens if re.fullmatch(r"\w+\.(py|yaml)", t)}
    return folders, files


def test_layout_names_every_subpackage_and_top_level_module():
    folders, files = layout_paths()
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    modules = {p.name for p in PACKAGE.glob("*.py")}
    assert not subpackages - folders, f"subpackages missing from README's Layout: {sorted(subpackages - folders)}"
    assert not modules - files, f"modules missing from README's Layout: {sorted(modules - files)}"


def test_layout_names_only_paths_that_exist():
    folders, files = layout_paths()
    assert files, "no file parsed from README's Layout"
    missing = sorted(p for p in folders | files if not (PACKAGE / p).exists())
    assert not missing, f"README's Layout names apo_online paths that do not exist: {missing}"


def test_relative_links_lead_to_a_file_and_heading():
    broken = []
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", without_code(page.read_text())):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
