"""The documentation: README.md is the front door, docs/ an MkDocs site built --strict.

The site is built for real (``mkdocs build --strict``, mkdocstrings reading the
docstrings), so a broken internal link or anchor, a page missing from the nav, a
snippet whose file is gone or an API reference naming a module that moved fails
here. Measured figures have one home, ``benchmarks/RESULTS.md``; the README and
the docs pages link to it instead of quoting latencies, rates or speed-ups.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

# What a measured latency, throughput or speed-up looks like in prose. A heuristic: configuration
# values (a 1 MiB body limit, a 60 s timeout) are not matched, and a figure that should live in
# benchmarks/RESULTS.md almost always is.
FIGURE_PATTERNS = {
    "latency": re.compile(r"\b\d+(?:[.,]\d+)?\s?(?:ms|µs|us)\b"),
    "speed-up or ratio": re.compile(r"\b\d+(?:\.\d+)?\s?x\b(?!\s?\d)"),
    "percentile": re.compile(r"\bp(?:50|90|95|99|999)\b", re.IGNORECASE),
    "throughput": re.compile(r"\b\d[\d,.]*\s?(?:requests|req|patients|rows|answers)\s?(?:/|per\s)s(?:ec(?:ond)?)?\b", re.IGNORECASE),
}


def nav_pages(nav) -> list[str]:
    """Every Markdown file named in mkdocs.yml's nav, in order (sections flattened)."""
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages.extend(nav_pages(value))
        else:
            pages.append(value)
    return pages


def built_page(site: Path, page: str) -> Path:
    """Where mkdocs (use_directory_urls) writes a page: index.md -> index.html, a.md -> a/index.html."""
    stem = page.removesuffix(".md")
    return site / "index.html" if stem == "index" else site / stem / "index.html"


def measured_figures(text: str) -> list[str]:
    """The phrases of ``text`` that look like measured figures, as 'kind: match' strings."""
    return [f"{kind}: {m.group(0)!r}" for kind, pattern in FIGURE_PATTERNS.items() for m in pattern.finditer(text)]


def markdown_links(text: str) -> list[str]:
    """Targets of inline Markdown links and images, ``[text](target)``; code spans and blocks ignored."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.fixture(scope="module")
def mkdocs_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def test_site_builds_strict_with_every_nav_page(site, mkdocs_config):
    pages = nav_pages(mkdocs_config["nav"])
    assert len(pages) == len(set(pages)), "a page is twice in the nav"
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk, "docs/ and the nav of mkdocs.yml disagree"
    for page in pages:
        html = built_page(site, page)
        assert html.is_file(), f"{page} was not built"
        title = re.search(r"^# (.+)$", (DOCS / page).read_text(encoding="utf-8"), re.MULTILINE)
        if title:  # a page that is one snippet (results.md) takes its title from the included file
            assert "<h1" in html.read_text(encoding="utf-8"), f"{page}: no heading in the built page"


def test_api_reference_is_built_from_docstrings(site):
    html = built_page(site, "reference.md").read_text(encoding="utf-8")
    for anchor in ("features.pipeline.build_feature_pipeline", "serving.schemas.OutcomePrediction", "core.config.TrainConfig"):
        assert f'id="{anchor}"' in html, f"the API reference has no entry for {anchor}"
    # A docstring's own text, not just the names: mkdocstrings read the source.
    assert "parse labs -&gt; impute -&gt; engineer features" in html or "parse labs -> impute -> engineer features" in html


def test_included_files_are_rendered_not_copied(site):
    """RESULTS.md and default.yaml are included by snippet: the site shows them, docs/ holds no copy."""
    results = built_page(site, "results.md").read_text(encoding="utf-8")
    first_heading = re.search(r"^## (.+)$", (ROOT / "benchmarks/RESULTS.md").read_text(encoding="utf-8"), re.MULTILINE).group(1)
    assert first_heading.split(". ", 1)[-1] in results
    operations = built_page(site, "operations.md").read_text(encoding="utf-8")
    assert "bcf_when_eligible" in operations  # from core/configs/default.yaml
    sources = "\n".join(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))
    assert "floor_margin_se: 1.0" not in sources, "docs/ copies default.yaml instead of including it"


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    links = [t for t in markdown_links(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert links, "README links to nothing"
    missing = [t for t in links if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 180, f"README has {len(lines)} lines; the manual belongs in docs/"
    # The two commands come first: the first code block is make train and make test.
    first_block = re.search(r"```sh\n(.*?)```", text, re.DOTALL).group(1).split("\n")
    assert [line.split()[:2] for line in first_block if line.strip()] == [["make", "train"], ["make", "test"]]
    assert "Authorization: Bearer" in text and "curl" in text
    example = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert example, "README has no Python example"
    compile(example.group(1), "README.md", "exec")  # at least valid Python; examples/ run in their own tests


@pytest.mark.parametrize("path", [README, *sorted(DOCS.rglob("*.md"))], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_measured_figures_outside_results(path):
    found = measured_figures(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)} quotes measured figures; link to benchmarks/RESULTS.md instead: {found}"


def test_figure_heuristic_catches_what_it_should():
    # The contradictions issue 25 found in the old README, and neighbours that must pass.
    assert measured_figures("/predict p99 52 ms")
    assert measured_figures("in-process 7.8 ms per patient")
    assert measured_figures("a 3.2x speed-up") and measured_figures("grows about 40x for 10x patients")
    assert measured_figures("933 patients/s")
    assert not measured_figures("RESPONDERS_MAX_BODY_BYTES (default 1 MiB); a 60 s request timeout; 0x1f")
    assert not measured_figures("treatment x risk interaction; 2 x 3 folds")


@pytest.mark.parametrize("path", [README, *sorted(DOCS.rglob("*.md"))], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_make_targets_named_exist(path):
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE))
    named = set(re.findall(r"(?:^|`|\n\s*)make ([a-z][a-z-]*)", path.read_text(encoding="utf-8")))
    assert not named - targets, f"{path.relative_to(ROOT)} names make targets the Makefile lacks: {sorted(named - targets)}"
    if path == README:
        assert {"train", "test", "serve", "docs"} <= named


def test_make_help_lists_the_docs_targets():
    done = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[1] for line in done.stdout.splitlines() if line.strip().startswith("make ")}
    assert {"docs", "docs-serve"} <= listed
