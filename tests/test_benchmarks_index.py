"""benchmarks/README.md lists every benchmark, experiment and result file; the docs name only existing results."""

import re

from conftest import REPO

BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
DOCS = [REPO / "README.md", REPO / "src/emolens/weights/MODEL_CARD.md", *(REPO / "docs").glob("*.md")]


def _scripts() -> list[str]:
    top = [p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_")]
    return top + [p.stem for p in (BENCH / "experiments").glob("*.py")]


def test_every_result_file_and_script_is_listed():
    index = (BENCH / "README.md").read_text()
    assert not [p.name for p in RESULTS.glob("*.json") if f"`{p.name}`" not in index]
    assert not [s for s in _scripts() if f"`{s}.py`" not in index]


def test_result_files_are_named_after_their_writer():
    scripts = _scripts()
    assert not [p.name for p in RESULTS.glob("*.json") if not any(p.stem.startswith(s) for s in scripts)]


def test_result_files_named_in_the_docs_exist():
    scripts = tuple(_scripts())
    for doc in [BENCH / "README.md", *DOCS]:
        text = doc.read_text()
        named = set(re.findall(r"benchmarks/results/(\w+)\.json", text))
        named |= {n for n in re.findall(r"\b(\w+)\.json\b", text) if n.startswith(scripts)}
        assert not [n for n in sorted(named) if not (RESULTS / f"{n}.json").exists()], doc.name
