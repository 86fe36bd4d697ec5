"""Every relative link and image in README.md and docs/*.md points at a file of this repository,
and every #anchor at a heading of the page it names (GitHub's heading ids)."""
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py is not installed (.[test])")

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def _inline_text(inline) -> str:
    """A heading's text as rendered: text and code spans, without markup."""
    return "".join(c.content for c in (inline.children or []) if c.type in ("text", "code_inline"))


def github_slug(text: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped except '-' and '_', spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def parse(page: Path):
    """(anchors of the page's headings, [(target, line)] of its links and images)."""
    tokens = markdown_it.MarkdownIt("commonmark").enable("table").parse(page.read_text(encoding="utf-8"))
    anchors, seen, links = set(), {}, []
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            slug = github_slug(_inline_text(tokens[i + 1]))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
        if tok.type == "inline":
            line = tok.map[0] + 1 if tok.map else 0
            for c in tok.children or []:
                if c.type == "link_open":
                    links.append((c.attrs["href"], line))
                elif c.type == "image":
                    links.append((c.attrs["src"], line))
    return anchors, links


def test_the_slug_rule_on_known_headings():
    assert github_slug("Likelihood and rate-distortion: `ddpm-export nll`") == \
        "likelihood-and-rate-distortion-ddpm-export-nll"
    assert github_slug("The export contract (`runtime/contract.py`)") == "the-export-contract-runtimecontractpy"


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n\nsee [a](missing.md), [b](#title), [c](#nope) and ![i](img.png)\n")
    anchors, links = parse(page)
    assert anchors == {"title"}
    assert [t for t, _ in links] == ["missing.md", "#title", "#nope", "img.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    anchors_of = {}
    broken = []
    _, links = parse(page)
    for target, line in links:
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or target.startswith("mailto:"):
            continue  # external: not checked here (no network in CI)
        dest = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
        if not dest.exists():
            broken.append(f"line {line}: {target} -> {dest} does not exist")
            continue
        if not dest.is_relative_to(ROOT):
            broken.append(f"line {line}: {target} leaves the repository")
            continue
        if parts.fragment and dest.suffix == ".md":
            if dest not in anchors_of:
                anchors_of[dest] = parse(dest)[0]
            if parts.fragment not in anchors_of[dest]:
                broken.append(f"line {line}: {target}: no heading with id #{parts.fragment} in "
                              f"{dest.relative_to(ROOT)} (ids: {sorted(anchors_of[dest])})")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)
