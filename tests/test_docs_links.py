"""Every relative link of the README and of the Markdown pages in docs/ and benchmarks/ names a file that
exists: records are moved and renamed between sessions, and a reader who follows a dead link loses the
figure or the number it pointed to."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(ROOT.glob("docs/**/*.md")), *sorted(ROOT.glob("benchmarks/**/*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(text):
    """The targets of the Markdown links and images in ``text`` that are neither URLs nor anchors, outside
    code (fenced blocks and inline spans, where brackets are code)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_the_link_finder_sees_links_and_images_but_not_urls_of_any_scheme_anchors_or_code():
    text = ("[a](x/y.md) ![b](fig.png \"title\") [c](https://e.org/p) [d](#part) `[e](code.md)`\n"
            "```\n[f](block.md)\n```\n[g](z.json#key) [h](mailto:a@e.org) [i](ftp://e.org/f)")
    assert relative_links(text) == ["x/y.md", "fig.png", "z.json#key"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_name_existing_files(page):
    broken = [t for t in relative_links(page.read_text(encoding="utf-8"))
              if not (page.parent / t.split("#")[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"
