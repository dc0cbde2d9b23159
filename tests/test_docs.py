"""README.md and docs/: every relative link points at a file of the repository, and the README stays short."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) outside code; the target ends at whitespace or ')', and an optional "title" may follow.
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def relative_links(page: Path) -> list[str]:
  text = FENCE.sub("", page.read_text())
  text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
  return [t for t in LINK.findall(text) if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
  links = relative_links(page)
  missing = [t for t in links if not (page.parent / t.split("#", 1)[0]).exists()]
  assert not missing, f"{page.relative_to(REPO)} links to files that do not exist: {missing}"


def test_every_docs_page_is_linked_from_the_readme():
  linked = {(REPO / t.split("#", 1)[0]).resolve() for t in relative_links(REPO / "README.md")}
  orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
  assert not orphans, f"docs pages the README does not link to: {orphans}"


def test_the_link_check_sees_links():
  assert "docs/installation.md" in relative_links(REPO / "README.md")
  assert "../lmjax/decode.py" in relative_links(REPO / "docs" / "generation.md")


def test_readme_stays_short():
  lines = (REPO / "README.md").read_text().count("\n")
  assert lines < 250, f"README.md has {lines} lines; move detail into a page under docs/ and link it"
