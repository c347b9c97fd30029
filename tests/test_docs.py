"""Every reference in the repository resolves to something in the repository.

- relative Markdown links in the documentation point at files that exist (and at headings that exist, for a
  link with #anchor, by GitHub's slug rules);
- "docs/<FILE>.md section N" / "<FILE>.md section N" references name a file of the repository with a heading
  numbered N;
- upper-case document names (README.md, METHOD.md, ...) name files of the repository;
- the tests the documents cite by name exist;
- no file points outside the repository (to a sibling checkout or a machine's absolute path).

The file set is what git would commit: tracked plus untracked-but-not-ignored files (generated reports under
reports/ are ignored and not checked here).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Documentation whose relative links must resolve (globs relative to the repository root).
LINKED_DOCS = (
    "README.md",
    "docs/*.md",
    "analysis/README.md",
    "workflow/README.md",
    "benchmarks/*.md",
    "parataa/assets/models/README.md",
    "ci/slurm/*.md",
)
# Text files scanned for "<FILE>.md section N" references and document names.
TEXT_SUFFIXES = (".py", ".yaml", ".yml", ".md", ".smk")
TEXT_NAMES = ("Snakefile",)
# Built from parts so that this file does not match its own check.
OUTSIDE = ("../" + "shared", "/" + "work" + "/")



# ------------------------------------------------------------------------------------------------ file set


def repo_files() -> set[str]:
    """Paths (POSIX, relative to the root) of the files git would commit that exist in the work tree."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the file set to check is what git would commit")
    return {p for p in out.decode().split("\0") if p and (ROOT / p).is_file()}


@pytest.fixture(scope="module")
def files() -> set[str]:
    return repo_files()


@pytest.fixture(scope="module")
def dirs(files: set[str]) -> set[str]:
    out = {""}
    for f in files:
        parts = PurePosixPath(f).parts[:-1]
        out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return out


def read_text(rel: str) -> str | None:
    data = (ROOT / rel).read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def linked_docs(files: set[str]) -> list[str]:
    return sorted(
        f for f in files if any(PurePosixPath(f).match(g) and f.count("/") == g.count("/") for g in LINKED_DOCS)
    )


def text_files(files: set[str]) -> list[str]:
    """Files scanned for references; this file is left out, as it holds broken examples on purpose."""
    own = Path(__file__).resolve().relative_to(ROOT).as_posix()
    return sorted(f for f in files if (f.endswith(TEXT_SUFFIXES) or PurePosixPath(f).name in TEXT_NAMES) and f != own)


def normalise(base_dir: str, target: str) -> str | None:
    """`target` relative to `base_dir` as a root-relative POSIX path; None if it leaves the repository."""
    parts: list[str] = []
    for p in PurePosixPath(base_dir, target).parts if base_dir else PurePosixPath(target).parts:
        if p in ("", ".", "/"):  # a leading "/" is the repository root, as on GitHub
            continue
        if p == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(p)
    return "/".join(parts)


# ------------------------------------------------------------------------------------------------ Markdown

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^()\s<>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:|^//")


def prose_lines(text: str) -> Iterable[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    fence: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark[0] * len(mark)
            elif mark[0] == fence[0] and len(mark) >= len(fence):
                fence = None
            continue
        if fence is None:
            yield n, CODE_SPAN.sub(lambda c: "x" * len(c.group(0)), line)


def heading_texts(text: str) -> list[str]:
    out = []
    fence: str | None = None
    for line in text.splitlines():
        m = FENCE.match(line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark[0] * len(mark)
            elif mark[0] == fence[0] and len(mark) >= len(fence):
                fence = None
            continue
        if fence is None:
            h = HEADING.match(line)
            if h:
                out.append(h.group(2))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: rendered text, lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.replace("`", "")
    text = re.sub(r"(\*{1,3})(\S.*?\S|\S)\1", r"\2", text)  # emphasis markers
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in heading_texts(text):
        slug = github_slug(h)
        if slug in seen:
            seen[slug] += 1
            out.add(f"{slug}-{seen[slug]}")
        else:
            seen[slug] = 0
            out.add(slug)
    return out


def link_targets(text: str) -> Iterable[tuple[int, str]]:
    for n, line in prose_lines(text):
        for m in INLINE_LINK.finditer(line):
            yield n, m.group(2)
        r = REF_DEF.match(line)
        if r:
            yield n, r.group(1)


def broken_links(doc: str, text: str, files: set[str], dirs: set[str]) -> list[str]:
    problems = []
    base = str(PurePosixPath(doc).parent) if "/" in doc else ""
    for n, target in link_targets(text):
        if not target or SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        path = unquote(path)
        where = f"{doc}:{n}: link {target!r}"
        if path:
            resolved = normalise(base, path)
            if resolved is None:
                problems.append(f"{where} leaves the repository")
                continue
            if resolved not in files and resolved.rstrip("/") not in dirs:
                problems.append(f"{where}: {resolved} is not a file of the repository")
                continue
        else:
            resolved = doc
        if anchor and resolved.endswith(".md") and resolved in files:
            found = anchors((ROOT / resolved).read_text(encoding="utf-8"))
            if unquote(anchor) not in found:
                problems.append(f"{where}: no heading with anchor #{anchor} in {resolved}")
    return problems


# ------------------------------------------------------------------------------------------------ references

SECTION_REF = re.compile(
    r"(?P<file>(?:[\w.-]+/)*[A-Za-z][\w-]*\.md)(?:\s*\n\s*#)?\s+sections?\s+"
    r"(?P<nums>\d+(?:\s*(?:-|–|,|and|or|to)\s*\d+)*)"
)
DOC_NAME = re.compile(r"(?<![\w./<>-])(?P<path>(?:[\w.-]+/)*[A-Z][A-Z0-9_]*\.md)\b")
NUMBERED = re.compile(r"^(\d+)[.)]?(?:\s|$)")


def section_numbers(spec: str) -> list[int]:
    out: list[int] = []
    for part in re.split(r"\s*(?:,|and|or)\s*", spec):
        m = re.fullmatch(r"(\d+)\s*(?:-|–|to)\s*(\d+)", part)
        if m:
            out.extend(range(int(m.group(1)), int(m.group(2)) + 1))
        elif part.strip().isdigit():
            out.append(int(part))
    return out


def resolve_doc(rel: str, name: str, files: set[str]) -> str | None:
    """A document named in file `rel`: relative to `rel`'s folder, else to the root."""
    base = str(PurePosixPath(rel).parent) if "/" in rel else ""
    for cand in (normalise(base, name), normalise("", name)):
        if cand is not None and cand in files:
            return cand
    return None


def numbered_headings(doc: str) -> set[int]:
    out = set()
    for h in heading_texts((ROOT / doc).read_text(encoding="utf-8")):
        m = NUMBERED.match(h.strip())
        if m:
            out.add(int(m.group(1)))
    return out


def reference_problems(rel: str, text: str, files: set[str]) -> list[str]:
    """Broken section references and document names in one file."""
    problems = []
    basenames = {PurePosixPath(f).name for f in files}
    for m in SECTION_REF.finditer(text):  # over the whole text: a reference may wrap onto the next line
        n = text.count("\n", 0, m.start()) + 1
        ref = " ".join(m.group(0).split())
        doc = resolve_doc(rel, m.group("file"), files)
        if doc is None:
            problems.append(f"{rel}:{n}: {ref!r}: {m.group('file')} is not a file of the repository")
            continue
        have = numbered_headings(doc)
        missing = [k for k in section_numbers(m.group("nums")) if k not in have]
        if missing:
            problems.append(f"{rel}:{n}: {ref!r}: {doc} has no heading numbered {missing}")
    for n, line in enumerate(text.splitlines(), 1):
        for m in DOC_NAME.finditer(line):
            name = m.group("path")
            ok = resolve_doc(rel, name, files) is not None if "/" in name else name in basenames
            if not ok:
                problems.append(f"{rel}:{n}: {name} is not a file of the repository")
    return problems


# ------------------------------------------------------------------------------------------------ tests


def test_the_documents_exist(files: set[str]) -> None:
    for doc in ("README.md", "docs/METHOD.md", "docs/RELIABILITY.md", "docs/STORAGE.md"):
        assert doc in files, doc
    docs = linked_docs(files)
    assert "workflow/README.md" in docs and "ci/slurm/README.md" in docs and "benchmarks/RESULTS.md" in docs


def test_relative_links_resolve(files: set[str], dirs: set[str]) -> None:
    problems = []
    for doc in linked_docs(files):
        problems += broken_links(doc, (ROOT / doc).read_text(encoding="utf-8"), files, dirs)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_section_references_and_document_names_resolve(files: set[str]) -> None:
    problems: list[str] = []
    for rel in text_files(files):
        text = read_text(rel)
        if text is not None:
            problems += reference_problems(rel, text, files)
    assert not problems, "unresolved references:\n" + "\n".join(problems)


TEST_NAME = re.compile(r"(?<![\w/.])(test_\w+)(?![\w.])")
TEST_DEF = re.compile(r"^\s*(?:async\s+)?def\s+(test_\w+)\s*\(", re.MULTILINE)


def test_tests_the_documents_cite_exist(files: set[str]) -> None:
    defined: set[str] = set()
    for f in files:
        if f.startswith("tests/") and f.endswith(".py"):
            defined.update(TEST_DEF.findall((ROOT / f).read_text(encoding="utf-8")))
    problems = []
    for doc in linked_docs(files):
        for n, line in enumerate((ROOT / doc).read_text(encoding="utf-8").splitlines(), 1):
            problems += [f"{doc}:{n}: {t} is not a test in tests/" for t in TEST_NAME.findall(line) if t not in defined]
    assert not problems, "\n".join(problems)


def test_nothing_points_outside_the_repository(files: set[str]) -> None:
    problems = []
    for rel in sorted(files):
        text = read_text(rel)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            for bad in OUTSIDE:
                if bad in line:
                    problems.append(f"{rel}:{n}: mentions {bad!r}")
    assert not problems, "paths outside the repository:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------------ the checker


def test_github_slugs() -> None:
    assert github_slug("1. The triangular system") == "1-the-triangular-system"
    assert github_slug("8. Splittings: exact and Euler") == "8-splittings-exact-and-euler"
    assert github_slug("Audit (`audit.py`, `paper_claims.yaml`)") == "audit-auditpy-paper_claimsyaml"
    assert github_slug("ci/slurm: a real **single-node** cluster") == "cislurm-a-real-single-node-cluster"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n## A") == {"a", "a-1", "a-2"}


def test_the_checks_catch_what_they_are_for(files: set[str], dirs: set[str]) -> None:
    # the broken names are built from parts, so that this file itself cites no missing document
    example, missing, notes, gone = (f"{n}.md" for n in ("EXAMPLE", "MISSING", "NOTES", "GONE"))
    doc = f"docs/{example}"
    text = (
        "[ok](METHOD.md) [ok](METHOD.md#4-stopping-rule-and-sliding-window) [ok](../README.md)\n"
        f"[gone]({missing}) [bad anchor](METHOD.md#no-such-heading) [out](../../x.md)\n"
        "`[in code](nowhere.md)`\n```\n[in a fence](nowhere.md)\n```\n[ok](https://example.org/x.md)\n"
    )
    problems = broken_links(doc, text, files, dirs)
    assert len(problems) == 3, problems
    assert missing in problems[0] and "no-such-heading" in problems[1] and "leaves" in problems[2]
    src = (
        "see docs/METHOD.md section 4 and docs/METHOD.md sections 2-3, docs/METHOD.md\n# section 99,\n"
        f"{notes} section 1, docs/STORAGE.md, {gone}\n"
    )
    problems = reference_problems("parataa/example.py", src, files)
    assert len(problems) == 4, problems
    assert "no heading numbered [99]" in problems[0] and f"{notes} section 1" in problems[1]
    assert notes in problems[2] and gone in problems[3]
    assert section_numbers("3-5") == [3, 4, 5] and section_numbers("1, 2 and 7") == [1, 2, 7]
