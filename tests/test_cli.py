import csv
import json

import cv2
import pytest
from conftest import YUNET, make_folder_dataset

from emolens.cli import main
from emolens.live.synthetic import sample_face


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("paper_cnn", "resnet18", "fernet"):
        assert name in out


def test_live_on_bundled_sample_writes_video_and_csv(tmp_path, capsys):
    rc = main(
        [
            "live",
            "--source",
            "sample",
            "--detector",
            "haar",
            "--output",
            str(tmp_path / "out.mp4"),
            "--csv",
            str(tmp_path / "faces.csv"),
            "--summary",
            str(tmp_path / "sum"),
            "-q",
        ]
    )
    assert rc == 0
    brief = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert brief["frames_read"] == 75 and set(brief["tracks"].values()) == {"happiness"}
    rows = list(csv.DictReader(open(tmp_path / "faces.csv")))
    assert len(rows) >= 75 * 3 * 0.9 and (tmp_path / "out.mp4").stat().st_size > 10_000
    assert json.loads((tmp_path / "sum" / "summary.json").read_text())["frames"] == 75


def test_predict_folder_json_csv(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "a.jpg"), sample_face())
    cv2.imwrite(str(d / "b.png"), cv2.flip(sample_face(), 1))
    args = ["predict", str(d), "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"), "-q"]
    if YUNET.is_file():
        args += ["--detector", "yunet", "--detector-model", str(YUNET)]
    else:
        args += ["--detector", "haar"]
    assert main(args) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert [len(r["faces"]) for r in res["images"]] == [1, 1]
    assert res["images"][0]["faces"][0]["label"] == "happiness"
    assert len(list(csv.DictReader(open(tmp_path / "r.csv")))) == 2


def test_train_and_evaluate_cli(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "data", per_class=12, split_dirs=True)
    rc = main(
        [
            "train",
            "--dataset",
            "folder",
            "--root",
            str(root),
            "--model",
            "fernet_tiny",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--no-progress",
            "--no-cache",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 0 and (tmp_path / "run" / "best.pt").is_file()
    rc = main(
        [
            "evaluate",
            str(tmp_path / "run" / "best.pt"),
            "--dataset",
            "folder",
            "--root",
            str(root),
            "--out",
            str(tmp_path / "ev"),
        ]
    )
    assert rc == 0 and "accuracy=" in capsys.readouterr().out
    assert (tmp_path / "ev" / "report.md").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["evaluate", "missing.pt", "--dataset", "folder", "--root", "."], "missing.pt: checkpoint file not found"),
        (["live", "--source", "nope.mp4", "--detector", "haar"], "nope.mp4: video file not found"),
        (["predict", "nowhere.jpg", "--detector", "haar"], "nowhere.jpg: no such file or folder"),
        (["train", "--dataset", "folder", "--root", "does/not/exist"], "does/not/exist: dataset root not found"),
    ],
)
def test_bad_input_exits_2_with_named_error(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err
