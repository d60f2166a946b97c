"""The README's Python examples run, on the bundled sample face and clip."""

import re

import cv2
from conftest import REPO, shared_path

from emolens.live.synthetic import sample_face, sample_video


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys, yunet_model):
    monkeypatch.setenv("EMOLENS_YUNET", str(yunet_model))
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), cv2.copyMakeBorder(sample_face(), 60, 60, 90, 90, cv2.BORDER_CONSTANT, value=(90, 90, 90)))
    code = _blocks()[0].replace('"photo.jpg"', repr(str(photo))).replace('"clip.mp4"', repr(str(sample_video())))
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("happiness ") and "'x':" in lines[0]  # the sample face smiles
    assert len(lines) == 1 + 30 and lines[1].startswith("0 [(")


def test_readme_training_example_runs():
    root = shared_path("data")
    code = _blocks()[1].replace("../shared/data", str(root))
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["ds"].name == "ckplus:test+sfew" and len(ns["ds"]) == 195 + 178
