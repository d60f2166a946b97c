"""Inference does not load the training side, and the CLI answers --help without loading PyTorch."""

import subprocess
import sys
import time


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_inference_imports_no_training_code_nor_sklearn():
    mods = _modules_after("import emolens.live.pipeline, emolens.live.images, emolens.export, emolens.checkpoint")
    assert "emolens.live.pipeline" in mods and "emolens.checkpoint" in mods
    leaked = sorted(m for m in mods if m.startswith(("emolens.training", "emolens.evaluation", "sklearn")))
    assert leaked == []


def test_serve_imports_no_training_code():
    try:
        import fastapi  # noqa: F401
    except ImportError:
        import pytest

        pytest.skip("serve extras not installed")
    mods = _modules_after("import emolens.serve.app")
    assert not [m for m in mods if m.startswith(("emolens.training", "sklearn"))]


def test_cli_help_is_fast_and_loads_no_torch():
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "emolens.cli", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--extra-data" in r.stdout
    assert time.perf_counter() - t < 10.0  # generous (about 0.3 s idle): --help must not load PyTorch (below)
    mods = _modules_after(
        "import sys; sys.argv = ['emolens', '--help']\nfrom emolens.cli import build_parser\nbuild_parser()"
    )
    assert "torch" not in mods


def _import_graph() -> dict[str, set[str]]:
    """Every ``emolens`` module -> the ``emolens`` modules it imports anywhere in its file (deferred imports
    inside functions included), read from the source with :mod:`ast`."""
    import ast
    from pathlib import Path

    import emolens

    src = Path(emolens.__file__).parent.parent
    files = {}
    for p in (src / "emolens").rglob("*.py"):
        parts = list(p.relative_to(src).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("emolens")}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".")
                base = base if node.level else node.module or ""
                if base.startswith("emolens"):
                    deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[mod] = deps - {mod}
    return graph


def test_inference_layers_import_neither_datasets_nor_evaluation_even_deferred():
    graph = _import_graph()
    assert "emolens.imageio" in graph["emolens.live.images"]  # the reader sees real imports
    wrong = {
        m: sorted(d for d in deps if d.startswith(("emolens.data", "emolens.evaluation", "emolens.training")))
        for m, deps in graph.items()
        if m.startswith(("emolens.live", "emolens.batch", "emolens.serve"))
    }
    assert {m: d for m, d in wrong.items() if d} == {}


def test_the_package_has_no_import_cycle():
    import graphlib

    graph = _import_graph()
    try:
        graphlib.TopologicalSorter({m: {d for d in deps if d in graph} for m, deps in graph.items()}).prepare()
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_no_module_is_over_500_lines():
    from pathlib import Path

    import emolens

    src = Path(emolens.__file__).parent
    long = {str(p.relative_to(src)): n for p in src.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
