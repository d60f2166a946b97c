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
