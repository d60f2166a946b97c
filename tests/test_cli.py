import csv
import dataclasses
import json

import cv2
import pytest
from conftest import REPO, YUNET, make_folder_dataset

from emolens.cli import main
from emolens.live.synthetic import sample_face


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("paper_cnn", "resnet18", "fernet"):
        assert name in out
    bundled = out.split("bundled models")[1]
    lines = [" ".join(line.split()) for line in bundled.splitlines()[1:]]
    assert lines == ["fernet_v3 48px fernet_wide, 8 classes (default)", "faceres_v2 112px faceres_mobilenet, 8 classes"]


def test_predict_with_a_bundled_model_by_name(capsys):
    """``--checkpoint faceres_v2`` runs the opt-in bundled model: the sample face is happy."""
    face = REPO / "src/emolens/assets/astronaut_face.jpg"
    assert main(["predict", str(face), "--checkpoint", "faceres_v2", "-q", "--threads", "1"]) == 0
    assert "astronaut_face.jpg: happiness" in capsys.readouterr().out


def test_every_subcommand_is_one_registered_cmd_function_and_in_help(capsys, monkeypatch):
    """Each subcommand is one :data:`~emolens.cli.COMMANDS` entry: its ``cmd_*`` function (and every ``cmd_*`` has
    one), run as its parser's ``func``, and listed with its help line in ``emolens --help``."""
    import inspect
    import re

    from emolens import cli

    assert cli.COMMANDS
    defined = {name for name, f in inspect.getmembers(cli, inspect.isfunction) if name.startswith("cmd_")}
    assert defined == {c.run.__name__ for c in cli.COMMANDS.values()}, "a cmd_* function that is not a subcommand"
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == list(cli.COMMANDS)
    for name, c in cli.COMMANDS.items():
        assert getattr(cli, "cmd_" + name.replace("-", "_"), None) is c.run, name
        assert sub.choices[name].get_default("func") is c.run, name
    monkeypatch.setenv("COLUMNS", "1000")  # help lines unwrapped
    assert main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "{" + ",".join(cli.COMMANDS) + "}" in lines[0]
    listed = {}  # "    train    train a model on a dataset" (a long name: its help on the next line)
    for i, line in enumerate(lines):
        if m := re.match(r"^    (\S+)(?: +(.+))?$", line):
            listed[m[1]] = m[2] or lines[i + 1].strip()
    assert listed == {name: c.help for name, c in cli.COMMANDS.items()}
    assert list(listed) == list(cli.COMMANDS)


def test_live_on_bundled_sample_writes_video_and_csv(tmp_path, capsys, monkeypatch):
    from emolens.live import render

    fps_drawn = []
    monkeypatch.setattr(render, "draw_fps", lambda frame, fps: fps_drawn.append(fps) or frame)
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
    out, err = capsys.readouterr()
    brief = json.loads(out.strip().splitlines()[-1])
    assert brief["frames_read"] == 75 and set(brief["tracks"].values()) == {"happiness"}
    rows = list(csv.DictReader(open(tmp_path / "faces.csv")))
    assert len(rows) >= 75 * 3 * 0.9 and (tmp_path / "out.mp4").stat().st_size > 10_000
    assert json.loads((tmp_path / "sum" / "summary.json").read_text())["frames"] == 75
    # the sample clip is written beside the outputs, and its path printed
    clip = tmp_path / "emolens_sample.mp4"
    assert clip.stat().st_size > 10_000 and f"sample clip (made from the bundled face): {clip}" in err
    assert fps_drawn == []  # no FPS counter burned into the saved video


def test_draw_fps_burns_the_counter_into_the_video_and_the_sample_clip_goes_to_the_cache(tmp_path, monkeypatch):
    from emolens.live import render

    fps_drawn = []
    monkeypatch.setattr(render, "draw_fps", lambda frame, fps: fps_drawn.append(fps) or frame)
    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    args = ["live", "--source", "sample", "--detector", "haar", "--max-frames", "3", "-q"]
    assert main([*args, "--output", "emolens_sample.mp4", "--draw-fps"]) == 0
    assert len(fps_drawn) == 3
    assert (tmp_path / "cache" / "emolens_sample.mp4").is_file()  # not over the output of the same name
    assert main(args) == 0  # no outputs: the cache folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "emolens_sample.mp4"]


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
    # --tta reaches the classifier: same faces, other probabilities
    assert main([*args, "--tta", "shift-flip", "--json", str(tmp_path / "t.json")]) == 0
    tta = json.loads((tmp_path / "t.json").read_text())
    one, ten = res["images"][0]["faces"][0], tta["images"][0]["faces"][0]
    assert one["box"] == ten["box"] and ten["label"] == "happiness"
    assert one["probs"] != ten["probs"]


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


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--root", "x", "--model", "nope", "--out", "{tmp}/r"], "unknown model 'nope'"),
        (["train", "--root", "{tmp}", "--dataset", "nope", "--out", "{tmp}/r2"], "--dataset must be one of ferplus,"),
        (["train", "--root", "x", "--optimizer", "adam", "--out", "{tmp}/r3"], "--optimizer must be one of adamw, sgd"),
        (["train", "--out", "{tmp}/r4"], "--root is required"),
        (["evaluate", "--dataset", "folder", "--root", "{tmp}/none"], "dataset root not found"),
        (["predict", "{tmp}/missing.jpg"], "no such file or folder"),
        (["live", "--source", "0", "--detector", "yunet", "--detector-model", "{tmp}/no.onnx"], "no.onnx"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"emolens {args[0]}: error: ") and message in err[0], err


def test_predict_offline_uses_the_bundled_yunet_without_a_warning(tmp_path, monkeypatch, capsys):
    """No network, no $EMOLENS_YUNET: `emolens predict` on a real photo runs YuNet (no download, no warning)."""
    import urllib.request

    from emolens.live import detectors

    def no_network(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.delenv("EMOLENS_YUNET", raising=False)
    made = []
    real = detectors.YuNetDetector.__init__

    def spy(self, *a, **k):
        made.append(self)
        real(self, *a, **k)

    monkeypatch.setattr(detectors.YuNetDetector, "__init__", spy)
    photo = REPO / "src" / "emolens" / "assets" / "astronaut_face.jpg"
    rc = main(["predict", str(photo), "--csv", str(tmp_path / "p.csv"), "-q"])
    err = capsys.readouterr().err
    assert rc == 0 and made and "Haar" not in err and "warning" not in err.lower(), err
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 2  # header + the one face


def test_resume_reads_the_run_config_and_evaluate_defaults_to_the_bundled_model(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "d", per_class=12, size=32, split_dirs=True)
    run = tmp_path / "run"
    common = ["--model", "fernet_tiny", "--image-size", "32", "--workers", "0", "--no-progress", "--no-cache"]
    assert main(["train", "--root", str(root), "--dataset", "folder", "--epochs", "1", "--out", str(run), *common]) == 0
    # continue the run to 2 epochs without repeating --root/--dataset/--model: they come from RUN/config.json
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2"]) == 0
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    capsys.readouterr()
    assert main(["evaluate", "--dataset", "folder", "--root", str(root)]) == 0
    assert capsys.readouterr().out.startswith("fernet_wide on folder/test")  # the bundled model


def test_align_with_haar_warns(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.jpg"), sample_face())
    assert main(["predict", str(tmp_path / "a.jpg"), "--detector", "haar", "--align", "-q"]) == 0
    assert "--align needs YuNet" in capsys.readouterr().err


def test_label_of_a_box_at_the_top_edge_stays_inside_its_box():
    import numpy as np

    from emolens.live.pipeline import FaceResult
    from emolens.live.render import draw_faces

    frame = np.zeros((400, 200, 3), np.uint8)
    r = FaceResult(np.array([20, 0, 150, 150], np.float32), 1, np.eye(8)[1], "happiness", 0.9)
    draw_faces(frame, [r], [str(i) for i in range(8)])
    painted_rows = np.nonzero(frame[:, 30:160].max(axis=(1, 2)) > 0)[0]
    assert painted_rows.max() <= 150 + 4  # nothing drawn below the box, where another face may be


def test_threads_and_device_flags(tmp_path, capsys):
    import torch

    cv2.imwrite(str(tmp_path / "a.jpg"), sample_face())
    before = torch.get_num_threads()
    try:
        assert main(["predict", str(tmp_path / "a.jpg"), "--detector", "haar", "--threads", "1", "-q"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["predict", str(tmp_path / "a.jpg"), "--detector", "haar", "--device", "tpu9", "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("emolens predict: error:") and "tpu9" in err[-1]
    finally:
        torch.set_num_threads(before)


def test_cli_python_and_serve_share_one_settings_object(monkeypatch):
    import dataclasses

    from emolens.cli import build_parser
    from emolens.live.settings import PipelineSettings
    from emolens.serve.settings import ServeSettings, settings_env

    p = build_parser()
    for args in (["live"], ["serve"], ["predict", "x.jpg"]):
        got = PipelineSettings.from_namespace(p.parse_args(args))
        want = PipelineSettings(smooth="none") if args[0] == "predict" else PipelineSettings()  # stills: no smoothing
        assert got == want, args
    assert ServeSettings().pipeline == PipelineSettings()
    custom = ServeSettings(pipeline=PipelineSettings(detector="haar", margin=0.2, threads=1), workers=3)
    env = settings_env(custom)
    monkeypatch.setattr("emolens.serve.app.create_app", lambda s: s)
    monkeypatch.setenv("EMOLENS_SERVE_SETTINGS", env["EMOLENS_SERVE_SETTINGS"])
    from emolens.serve.app import app_from_env

    back = app_from_env()
    assert dataclasses.asdict(back) == dataclasses.asdict(custom)


def test_predict_keeps_going_and_keeps_results(tmp_path, monkeypatch, capsys):
    """Odd files (non-UTF-8 name, tiny image, a crash inside the pipeline) become error rows, not the end of the
    batch; a run interrupted at image N keeps the N-1 results before it."""
    import os

    from emolens.live.pipeline import Pipeline

    d = tmp_path / "imgs"
    d.mkdir()
    face = sample_face()
    cv2.imwrite(str(d / "a.jpg"), face)
    ok, buf = cv2.imencode(".jpg", face)
    with open(os.path.join(os.fsencode(d), b"caf\xe9.jpg"), "wb") as f:  # not valid UTF-8
        f.write(buf.tobytes())
    cv2.imwrite(str(d / "tiny.png"), cv2.resize(face, (32, 25)))
    cv2.imwrite(str(d / "z.jpg"), face)
    real = Pipeline.process

    def flaky(self, frame, *a, **k):
        if frame.shape[:2] == (25, 32):
            raise OverflowError("cannot convert float infinity to integer")
        return real(self, frame, *a, **k)

    monkeypatch.setattr(Pipeline, "process", flaky)
    args = [
        "predict",
        str(d),
        "--detector",
        "haar",
        "-q",
        "--json",
        str(tmp_path / "r.json"),
        "--csv",
        str(tmp_path / "r.csv"),
    ]
    assert main([*args, "--annotate", str(tmp_path / "ann")]) == 1  # one image could not be analysed
    res = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["images"]
    assert [len(r["faces"]) for r in res] == [1, 1, 0, 1]
    assert [r["status"] for r in res] == ["faces", "faces", "error", "faces"]
    assert "caf\\xe9.jpg" in res[1]["file"] and "OverflowError" in res[2]["error"]
    assert len(list((tmp_path / "ann").iterdir())) == 3
    assert not (tmp_path / "r.json.partial.jsonl").exists()

    calls = {"n": 0}

    def dies(self, frame, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, frame, *a, **k)

    monkeypatch.setattr(Pipeline, "process", dies)
    assert main(args) == 130
    kept = (tmp_path / "r.json.partial.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(kept) == 2 and len(list(csv.DictReader(open(tmp_path / "r.csv", encoding="utf-8")))) == 2


def test_resume_refuses_flags_that_change_the_run(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "d", per_class=12, size=32, split_dirs=True)
    run = tmp_path / "run"
    common = ["--model", "fernet_tiny", "--image-size", "32", "--workers", "0", "--no-progress", "--no-cache"]
    assert main(["train", "--root", str(root), "--dataset", "folder", "--epochs", "1", "--out", str(run), *common]) == 0
    before = (run / "config.json").read_text()
    changes = (
        (["--lr", "0.5"], "--lr (0.001 -> 0.5)"),
        (["--optimizer", "sgd"], "--optimizer"),
        (["--loss", "logit_adjusted"], "--loss ('ce' -> 'logit_adjusted')"),
        (["--kd-balance", "0.5"], "--kd-balance (0.0 -> 0.5)"),
    )
    for flags, named in changes:
        capsys.readouterr()
        assert main(["train", "--resume", "--out", str(run), "--epochs", "2", *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], err
        assert (run / "config.json").read_text() == before  # nothing overwritten


def test_cache_build_cleans_up_after_a_killed_build(tmp_path):
    from emolens.data import open_dataset
    from emolens.data.cache import attach_cache, cache_key

    root = make_folder_dataset(tmp_path / "d", per_class=5, size=32)
    ds = open_dataset("folder", root, "train", image_size=32)
    stale = tmp_path / "c" / f"{cache_key(ds)}.tmp999999.npy"  # a build by a process that no longer exists
    stale.parent.mkdir()
    stale.write_bytes(b"x" * 1000)
    path = attach_cache(ds, tmp_path / "c", progress=False)
    assert path.is_file() and not stale.exists()


def test_export_without_onnx_and_unknown_split_are_one_line_errors(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # as after a plain `pip install emolens`
    assert main(["export", "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'emolens[onnx]'" in err[0]
    root = make_folder_dataset(tmp_path / "d", per_class=4, size=32)
    assert main(["evaluate", "--dataset", "folder", "--root", str(root), "--split", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["emolens evaluate: error: --split must be one of train, val, test (got 'nope')"]


def test_run_config_records_absolute_data_paths(tmp_path, monkeypatch):
    make_folder_dataset(tmp_path / "d", per_class=12, size=32, split_dirs=True)
    monkeypatch.chdir(tmp_path)
    common = ["--model", "fernet_tiny", "--image-size", "32", "--workers", "0", "--no-progress", "--no-cache"]
    args = ["train", "--root", "d", "--dataset", "folder", "--extra-data", "folder=d*2", "--epochs", "1"]
    assert main([*args, "--out", "run", *common]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["root"] == str(tmp_path / "d") and cfg["extra_data"] == [f"folder={tmp_path / 'd'}*2"]
    monkeypatch.chdir(tmp_path / "d")  # resume from elsewhere: the data is still found
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--epochs", "2", "--root", "."]) == 0


# ------------------------------------------------------------------ every option value checked as it is parsed
#: What each command needs besides the flag under test.
REQUIRED = {
    "live": [],
    "predict": ["x.jpg"],
    "batch": ["x/", "--out", "o"],
    "serve": [],
    "train": [],
    "evaluate": ["--dataset", "folder", "--root", "."],
}
#: Flags whose values are free text (files, folders, names, addresses, keys): checked when used, each with a
#: one-line error (test_bad_input_exits_2_with_named_error, test_user_errors_are_one_line_and_exit_2).
FREE_TEXT = {
    "--source", "--output", "--csv", "--jsonl", "--summary", "--checkpoint", "--onnx", "--detector-model",
    "--json", "--annotate", "--out", "--host", "--data-dir", "--api-key", "--allow-origin", "--allowed-host",
    "--config", "--root", "--extra-data", "--model", "--weights", "--init", "--teacher", "--teacher-for",
}  # fmt: skip


def _options(command: str):
    from emolens.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return [a for a in sub.choices[command]._actions if a.option_strings and a.nargs != 0 and a.dest != "help"]


def _bad_cases():
    for command in REQUIRED:
        for action in _options(command):
            limit = getattr(action.type, "limit", None)
            for bad in limit.bad_values() if limit else ():
                yield pytest.param(command, action.option_strings[-1], bad, id=f"{command} {action.dest} {bad}")


def test_every_value_flag_is_checked_and_says_its_range():
    """Each option that takes a value either is checked as it is parsed (its range in --help) or is free text."""
    from emolens.options import OneOf

    for command in REQUIRED:
        for action in _options(command):
            flag = action.option_strings[-1]
            limit = getattr(action.type, "limit", None)
            if limit is None:
                assert flag in FREE_TEXT, f"emolens {command} {flag}: no range and not listed as free text"
            elif isinstance(limit, OneOf):
                assert list(action.choices) == [v for v in limit.values if v is not None], (command, flag)
            else:
                assert limit.describe() in action.help, (command, flag, action.help)


@pytest.mark.parametrize("command,flag,bad", list(_bad_cases()))
def test_a_refused_value_is_one_line_and_exit_2(command, flag, bad, capsys):
    assert main([command, *REQUIRED[command], flag, bad]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"emolens {command}: error: {flag} must be ") and lines[0].endswith(")"), lines


def test_refusals_read_as_documented(capsys):
    for args, line in [
        (["live", "--every", "0"], "emolens live: error: --every must be >= 1 (got 0)"),
        (["live", "--smooth", "window", "--window", "0"], "emolens live: error: --window must be >= 1 (got 0)"),
        (["predict", "a.jpg", "--margin", "-3"], "emolens predict: error: --margin must be >= 0 and <= 1 (got -3)"),
        (["batch", "a/", "--out", "o", "--every", "-1"], "emolens batch: error: --every must be >= 1 (got -1)"),
        (["live", "--alpha", "7"], "emolens live: error: --alpha must be > 0 and <= 1 (got 7)"),
        (["train", "--epochs", "x"], "emolens train: error: --epochs must be an integer >= 1 (got 'x')"),
    ]:
        assert main(args) == 2
        assert capsys.readouterr().err.splitlines() == [line]


def test_python_entry_points_share_the_checks(tmp_path):
    import emolens
    from emolens.batch import BatchOptions
    from emolens.live.settings import PipelineSettings
    from emolens.live.smoothing import Smoother
    from emolens.options import PIPELINE, SERVE
    from emolens.training.config import LIMITS, TrainConfig

    with pytest.raises(ValueError, match=r"^margin must be >= 0 and <= 1 \(got -3\)$"):
        emolens.load_model(margin=-3)  # refused before any model is loaded
    with pytest.raises(ValueError, match=r"^window must be >= 1 \(got 0\)$"):
        PipelineSettings(smooth="window", window=0)
    with pytest.raises(ValueError, match="^window must be"):
        Smoother("window", window=0)
    with pytest.raises(ValueError, match=r"^every must be >= 1 \(got 0\)$"):
        emolens.stream("clip.mp4", every=0)
    with pytest.raises(ValueError, match="^every must be >= 1"):
        BatchOptions(out=tmp_path, every=0)
    with pytest.raises(ValueError, match=r"^epochs must be >= 1 \(got 0\)$"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(ValueError, match="^optimizer must be one of adamw, sgd"):
        TrainConfig.from_dict({"optimizer": "adam"}).validate()
    TrainConfig().validate()
    PipelineSettings(margin=0.2, alpha=1, threads=2, device="cuda:1")
    assert set(LIMITS) <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(PIPELINE) <= {f.name for f in dataclasses.fields(PipelineSettings)}
    pytest.importorskip("fastapi")
    from emolens.serve import ServeSettings

    assert set(SERVE) <= {f.name for f in dataclasses.fields(ServeSettings)}
    with pytest.raises(ValueError, match=r"^max_pending must be >= 1 and <= 1000000 \(got 0\)$"):
        ServeSettings(max_pending=0)


# ------------------------------------------------------------------ a broken install says so
def _run_with(tmp_path, package: str, body: str, *args: str):
    """``emolens ARGS`` in a fresh interpreter where ``import PACKAGE`` runs ``body`` (a broken install)."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "site-packages" / package
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), *sys.path])}
    cmd = [sys.executable, "-m", "emolens.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_torchvision_built_for_another_torch_is_one_line(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), sample_face())
    body = "raise RuntimeError('operator torchvision::nms does not exist')\n"
    r = _run_with(tmp_path, "torchvision", body, "predict", str(tmp_path / "a.jpg"), "--detector", "haar", "-q")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert err[0].startswith("emolens predict: error: broken install: torchvision ")
    assert "does not match torch" in err[0] and "pip install --force-reinstall torch torchvision" in err[0]


def test_opencv_that_cannot_load_is_one_line(tmp_path):
    body = "raise ImportError('libGL.so.1: cannot open shared object file: No such file or directory')\n"
    r = _run_with(tmp_path, "cv2", body, "live", "--source", "sample", "--detector", "haar", "-q")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "broken install: OpenCV (cv2)" in err[0] and "libGL.so.1" in err[0]
    assert "pip install --force-reinstall opencv-python-headless" in err[0]


def test_install_problem_tells_a_broken_install_from_other_errors():
    from emolens.cli import install_problem

    missing = ModuleNotFoundError("No module named 'torch'", name="torch")
    assert "torch is not installed; install it: pip install torch torchvision" in install_problem(missing)
    try:
        try:
            raise RuntimeError("operator torchvision::nms does not exist")
        except RuntimeError as inner:
            raise ImportError("could not load the model") from inner
    except ImportError as e:
        assert "does not match torch" in install_problem(e)  # found on the chain
    assert install_problem(ModuleNotFoundError("No module named 'onnx'", name="onnx")) is None  # an extra
    assert install_problem(FileNotFoundError("x.pt")) is None
    assert install_problem(RuntimeError("CUDA out of memory")) is None


# ------------------------------------------------------------------ every input accounted for
def _mixed_folder(root):
    """Two photos with a face, two without, a 0-byte PNG and a text file named .jpg."""
    import numpy as np

    from emolens.live.synthetic import background

    root.mkdir()
    framed = cv2.copyMakeBorder(sample_face(), 40, 40, 60, 60, cv2.BORDER_CONSTANT, value=(90, 90, 90))
    cv2.imwrite(str(root / "a_face.jpg"), framed)
    cv2.imwrite(str(root / "b_face.png"), cv2.flip(framed, 1))
    cv2.imwrite(str(root / "c_wall.jpg"), background((160, 120), seed=3))
    cv2.imwrite(str(root / "d_grey.png"), np.full((90, 120, 3), 128, np.uint8))
    (root / "e_empty.png").write_bytes(b"")
    (root / "f_notes.jpg").write_text("not a photo at all\n")
    return root


def test_predict_accounts_for_every_file(tmp_path, capsys):
    d = _mixed_folder(tmp_path / "mixed")
    out = ["--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")]
    assert main(["predict", str(d), "--detector", "haar", "-q", *out]) == 1  # (documented: any unreadable -> 1)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "6 image(s): 2 with faces, 2 without, 2 unreadable"
    assert sorted(err[:-1]) == [
        f"{d / 'e_empty.png'}: image file is empty",
        f"{d / 'f_notes.jpg'}: not a readable image (corrupt or unsupported format)",
    ]  # each unreadable file named once, also when the results go to files
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [(r["file"].rsplit("/", 1)[1], r["status"]) for r in rows] == [
        ("a_face.jpg", "faces"),
        ("b_face.png", "faces"),
        ("c_wall.jpg", "no face found"),
        ("d_grey.png", "no face found"),
        ("e_empty.png", "error"),
        ("f_notes.jpg", "error"),
    ]
    assert rows[0]["label"] == "happiness" and rows[2]["label"] == rows[4]["label"] == ""
    assert rows[4]["error"] == "image file is empty"
    images = json.loads((tmp_path / "r.json").read_text())["images"]
    assert [r["status"] for r in images] == [r["status"] for r in rows]
    # on the console: one line per image, each naming it once; every file read -> exit 0
    assert main(["predict", str(d / "a_face.jpg"), str(d / "c_wall.jpg"), "--detector", "haar", "-q"]) == 0
    cap = capsys.readouterr()
    assert cap.out.splitlines()[1] == f"{d / 'c_wall.jpg'}: no face found"
    assert cap.err.strip() == "2 image(s): 1 with faces, 1 without, 0 unreadable"
    assert main(["predict", str(d / "e_empty.png"), "--detector", "haar", "-q"]) == 1
    assert capsys.readouterr().out.strip() == f"{d / 'e_empty.png'}: image file is empty"


def test_predict_and_batch_state_one_exit_status_rule(capsys):
    from emolens.cli import EXIT_STATUS

    for command in (["predict", "x"], ["batch", "x", "--out", "o"]):
        assert main([*command[:1], "--help"]) == 0
        assert " ".join(EXIT_STATUS.split()) in " ".join(capsys.readouterr().out.split())


def test_predict_goes_on_past_a_file_the_os_will_not_read(tmp_path, monkeypatch, capsys):
    # as a non-root user with one `chmod 000` image (root reads anything, so the refusal is simulated)
    import numpy as np

    import emolens.data.base as base

    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("a.jpg", "b_locked.jpg", "c.jpg"):
        cv2.imwrite(str(d / name), sample_face())
    real = np.fromfile

    def fromfile(path, *a, **k):
        if str(path).endswith("b_locked.jpg"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(base.np, "fromfile", fromfile)
    out = tmp_path / "o.json"
    assert main(["predict", str(d), "--detector", "haar", "-q", "--json", str(out)]) == 1  # 1: some files failed
    images = {r["file"].rsplit("/", 1)[1]: r for r in json.loads(out.read_text())["images"]}
    assert list(images) == ["a.jpg", "b_locked.jpg", "c.jpg"]
    assert images["b_locked.jpg"]["status"] == "error" and "Permission denied" in images["b_locked.jpg"]["error"]
    assert images["c.jpg"]["status"] == "faces"


@pytest.mark.parametrize("flag", ["--max-image-mb", "--max-video-mb", "--max-disk-gb", "--keep-hours"])
def test_serve_limits_past_any_real_use_are_refused_in_one_line(flag, capsys):
    assert main(["serve", flag, "1e308"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "<=" in err[0], err
