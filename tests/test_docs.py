"""The README and docs/ as a reader meets them on GitHub: every relative link lands on a file that
exists and, where it names an anchor, on a heading of that file; the README stays short."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
# The README's documented budget (issue 22): read in five minutes, at most 220 lines; everything
# else lives in docs/, indexed from it.
README_BUDGET = 220

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+).*?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"[a-z][a-z0-9+.-]*:", re.I)  # http(s)://, mailto: ... lead off the repository


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks: where GitHub renders headings and links."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _links(text: str) -> list[str]:
    """Every link target in ``text``, those inside code left out."""
    return [target for line in _prose(text) for target in LINK.findall(CODE_SPAN.sub("", line))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links by their text) in lower case, punctuation
    removed but hyphens and underscores, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor the headings of ``page`` make, a repeated one numbered -1, -2, ... as GitHub does."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose(page.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def _relative_links(page: Path) -> list[str]:
    return [target for target in _links(page.read_text()) if not SCHEME.match(target)]


def test_slug_follows_github() -> None:
    """The rule the anchors are checked by, on headings of these pages."""
    assert slug("Exporting a checkpoint: `python -m impls.export`") == (
        "exporting-a-checkpoint-python--m-implsexport"
    )
    assert slug("Importing milesial/Pytorch-UNet checkpoints") == "importing-milesialpytorch-unet-checkpoints"
    assert slug("The paper's own machinery") == "the-papers-own-machinery"
    assert slug("A GPU for a few minutes: `make bench-gpu`") == "a-gpu-for-a-few-minutes-make-bench-gpu"
    assert slug("See [the spec](models.md): `__init__`") == "see-the-spec-__init__"


def test_repeated_headings_are_numbered_and_code_is_no_heading(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Runs\n\n## NVIDIA H200\n\n```sh\n# a comment\n```\n\n## NVIDIA H200\n\n### NVIDIA H200\n"
    )
    assert anchors(page) == {"runs", "nvidia-h200", "nvidia-h200-1", "nvidia-h200-2"}


def test_links_are_found_outside_code_only() -> None:
    text = "[a](x.md) `[b](y.md)` ![c](img.png) [d](https://example.org) [`e`](#top)\n```\n[f](z.md)\n```\n"
    assert _links(text) == ["x.md", "img.png", "https://example.org", "#top"]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    """Each relative link of the page names a file that exists (relative to the page), and its
    #anchor, if any, a heading of that file."""
    broken = []
    for target in _relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (file.suffix != ".md" or anchor not in anchors(file)):
            broken.append(f"{target}: no heading in {file.name} has the anchor #{anchor}")
    assert not broken, broken


def test_readme_is_read_in_five_minutes() -> None:
    """The README's documented budget: at most 220 lines (the rest is in docs/, indexed from it)."""
    lines = len(README.read_text().splitlines())
    assert lines <= README_BUDGET, f"README.md has {lines} lines, over its budget of {README_BUDGET}"


def test_readme_indexes_every_docs_page() -> None:
    """No page of docs/ is left where a reader of the README cannot find it."""
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in _relative_links(README)}
    assert [page.name for page in PAGES[1:] if page.resolve() not in linked] == []
