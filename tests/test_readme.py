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


def test_readme_is_a_short_guide_with_the_two_set_up_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    bash = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert "pip install -e .\nemolens live --source sample" in bash[0]
    assert bash[1] == "pip install -e .[dev]\npytest\n"


def test_the_command_reference_and_the_results_page_are_current():
    """docs/cli.md is every subcommand's --help; docs/results.md and the README's model table come from
    benchmarks/results/*.json: both generators, in --check mode, find nothing to change."""
    import subprocess
    import sys

    for script in ("docs/make_cli_md.py", "benchmarks/results_md.py"):
        r = subprocess.run([sys.executable, str(REPO / script), "--check"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_every_train_option_has_a_group_and_help_and_the_recipes_are_the_bundled_models():
    import dataclasses
    import json

    import torch

    from emolens.training.config import GROUPS, HELP, REMOVED, TrainConfig

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    grouped = [n for g in GROUPS.values() for n in g]
    assert sorted(grouped) == sorted(names) and len(set(grouped)) == len(grouped) and set(HELP) == set(names)
    for model in ("fernet_v3", "faceres_v2"):
        recipe = json.loads((REPO / "recipes" / f"{model}.json").read_text())
        TrainConfig.from_dict(recipe).validate()  # "_about" keys are comments
        trained = torch.load(REPO / "src/emolens/weights" / f"{model}.pt", map_location="cpu", weights_only=False)
        kept = {k: v for k, v in trained["config"].items() if k in names and k not in REMOVED}
        paths = ("root", "extra_data", "init", "teacher", "out", "progress", "device", "workers")
        assert {k: recipe[k] for k in kept if k not in paths} == {k: v for k, v in kept.items() if k not in paths}
