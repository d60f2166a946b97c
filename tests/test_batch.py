"""emolens batch: inputs, same results as live/predict, failures table, resume after a kill, Ray (two nodes)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import YUNET, shared_path

from emolens.batch import BatchOptions, run_batch
from emolens.batch.inputs import discover
from emolens.batch.runner import make_tasks
from emolens.cli import main
from emolens.data import DataError
from emolens.live.settings import PipelineSettings
from emolens.live.synthetic import make_clip, sample_face

pq = pytest.importorskip("pyarrow.parquet", reason="emolens batch needs pyarrow (pip install 'emolens[batch]')")

SFEW_PICK = {"Angry": 2, "Happy": 2, "Sad": 1, "Surprise": 1, "Neutral": 2, "Fear": 1, "Disgust": 1}


def _settings() -> PipelineSettings:
    if not YUNET.is_file():
        pytest.skip(f"YuNet model not found at {YUNET} (set EMOLENS_SHARED)")
    return PipelineSettings(detector="yunet", detector_model=str(YUNET), threads=1)


def _pipeline_flags() -> list[str]:
    return ["--detector", "yunet", "--detector-model", str(YUNET), "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """Real film photos (SFEW), two short videos, a corrupt video and a truncated image."""
    sfew = shared_path("data/sfew/Train")
    root = tmp_path_factory.mktemp("collection")
    photos, videos = root / "photos", root / "videos"
    photos.mkdir()
    videos.mkdir()
    picked = []
    for cls, n in SFEW_PICK.items():
        for p in sorted((sfew / cls).glob("*.png"))[:n]:
            (photos / p.name).write_bytes(p.read_bytes())
            picked.append(p)
    faces = [cv2.imread(str(p)) for p in picked[:2]]
    make_clip(faces, videos / "two_people.mp4", n_frames=24, size=(480, 360), seed=1)
    make_clip([sample_face()], videos / "one_person.mp4", n_frames=16, size=(320, 240), seed=2)
    (videos / "broken.mp4").write_bytes(b"this is not a video" * 10)
    good = (photos / picked[0].name).read_bytes()
    (photos / "truncated.png").write_bytes(good[: len(good) // 3])
    return root


def _table(path: Path) -> dict[str, list]:
    return pq.read_table(path).to_pydict()


@pytest.fixture(scope="module")
def in_process(collection, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("batch_in_process")
    run_batch([collection], BatchOptions(out=out, settings=_settings(), ray="none", progress=False, csv=True))
    return out


# ------------------------------------------------------------------ inputs
def test_discover_folders_globs_lists_and_duplicates(collection, tmp_path):
    files = discover([collection])
    names = [Path(f.path).name for f in files]
    assert len(names) == sum(SFEW_PICK.values()) + 4
    assert names.index("broken.mp4") > names.index("truncated.png")  # sorted: photos/ before videos/
    assert {f.kind for f in files if f.path.endswith(".mp4")} == {"video"}
    # a glob, then a list file (relative paths, a comment) naming files already found: no duplicates
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my files\n{collection}/videos/one_person.mp4\n")
    again = discover([str(collection / "videos" / "*.mp4"), listing, collection / "photos"])
    assert [Path(f.path).name for f in again][:3] == ["broken.mp4", "one_person.mp4", "two_people.mp4"]
    assert len(again) == len(files)
    table = tmp_path / "list.csv"
    table.write_text("id,path\n1,../x/missing.png\n")
    with pytest.raises(DataError, match="missing.png: no such file"):
        discover([table])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: folder contains no images or videos"):
        discover([tmp_path / "empty"])


def test_tasks_one_video_each_images_grouped(collection):
    files = discover([collection])
    tasks = make_tasks(files, images_per_task=4)
    sizes = sorted((t.files[0].kind, len(t.files)) for t in tasks)
    assert sizes == [("image", 3), ("image", 4), ("image", 4), ("video", 1), ("video", 1), ("video", 1)]
    assert [f for t in tasks if t.files[0].kind == "image" for f in t.files] == [f for f in files if f.kind == "image"]


# ------------------------------------------------------------------ results
def test_one_face_record_live_batch_predict_api_and_server_agree_exactly(collection, in_process, tmp_path):
    """Every output writes a face the same way (FaceResult.to_row): the batch table equals `emolens live`'s CSV
    (videos) and `emolens predict`'s JSON and CSV, `emolens.predict(...).to_pandas()` and the server's answer
    (photos), value for value (the batch table stores float32 of the same rounded numbers)."""
    import emolens

    faces = _table(in_process / "faces.parquet")
    classes = [k[2:] for k in faces if k.startswith("p_")]
    cols = ["track_id", "x", "y", "w", "h", "det_score", "label", "confidence", *[f"p_{c}" for c in classes]]

    def batch_row(i):
        return [faces[c][i] for c in cols]

    def same(a, b):
        pairs = list(zip(a, b, strict=True))
        return all(x == y or (isinstance(y, float) and np.float32(x) == np.float32(y)) for x, y in pairs)

    for video in ("two_people.mp4", "one_person.mp4"):
        src = collection / "videos" / video
        rows_csv = tmp_path / f"{video}.csv"
        assert main(["live", "--source", str(src), "--csv", str(rows_csv), *_pipeline_flags()]) == 0
        live = list(csv.DictReader(rows_csv.open()))
        mine = [i for i, f in enumerate(faces["file"]) if f == str(src)]
        assert len(live) == len(mine) > 0
        for row, i in zip(live, mine, strict=True):
            assert (int(row["frame"]), float(row["time_s"])) == (faces["frame"][i], faces["time_s"][i])
            want = [int(row["track_id"]), *(float(row[c]) for c in cols[1:6]), row["label"]]
            want += [float(row[c]) for c in cols[7:]]
            assert same(want, batch_row(i)), (want, batch_row(i))
    out, out_csv = tmp_path / "predict.json", tmp_path / "predict.csv"
    photos = collection / "photos"
    assert main(["predict", str(photos), "--json", str(out), "--csv", str(out_csv), *_pipeline_flags()]) == 1
    predict_csv = list(csv.DictReader(out_csv.open()))
    pipe = emolens.load_model(detector="yunet", detector_model=str(YUNET), threads=1)
    from fastapi.testclient import TestClient

    from emolens.serve import ServeSettings, create_app

    app = create_app(ServeSettings(data_dir=tmp_path / "srv", pipeline=_settings(), hosts=["testserver"]))
    n = 0
    with TestClient(app) as client:
        for rec in json.loads(out.read_text())["images"]:
            mine = [i for i, f in enumerate(faces["file"]) if f == rec["file"]]
            assert len(mine) == len(rec["faces"])
            if not mine:
                continue
            frame = emolens.predict(rec["file"], model=pipe).to_pandas()
            served = client.post("/v1/predict", files={"file": ("x.jpg", open(rec["file"], "rb").read())}).json()
            csv_rows = [r for r in predict_csv if r["file"] == rec["file"]]
            for k, (face, i) in enumerate(zip(rec["faces"], mine, strict=True)):
                as_row = [face["track_id"], *face["box"].values(), face["det_score"], face["label"]]
                as_row += [face["confidence"], *face["probs"].values()]
                assert same(as_row, batch_row(i)), (as_row, batch_row(i))
                assert served["faces"][k] == face  # the server's record is predict's
                assert frame.loc[k, cols[1:]].tolist() == as_row[1:] and frame.loc[k, "file"] == rec["file"]
                c = csv_rows[k]
                assert [float(c[x]) for x in "xywh"] + [c["label"], float(c["confidence"])] == as_row[1:5] + as_row[6:8]
                n += 1
    assert n >= 8  # the real photos do give faces


def test_files_and_failures_tables(collection, in_process):
    files = _table(in_process / "files.parquet")
    failures = _table(in_process / "failures.parquet")
    assert sorted(Path(f).name for f in failures["file"]) == ["broken.mp4", "truncated.png"]
    for f, err in zip(failures["file"], failures["error"], strict=True):
        assert f in err  # the error names the file
    by_name = {Path(f).name: i for i, f in enumerate(files["file"])}
    assert len(by_name) == sum(SFEW_PICK.values()) + 2
    v = by_name["two_people.mp4"]
    assert files["frames"][v] == 24 and files["tracks"][v] == 2 and files["kind"][v] == "video"
    assert files["duration_s"][v] == pytest.approx(24 / 25)
    faces = _table(in_process / "faces.parquet")
    assert files["faces"][v] == sum(f.endswith("two_people.mp4") for f in faces["file"])
    shares = [files[k][v] for k in files if k.startswith("share_")]
    assert sum(shares) == pytest.approx(1.0)
    assert sum(files["faces"]) == len(faces["file"])
    # the CSV copies hold the same rows
    assert sum(1 for _ in open(in_process / "faces.csv")) == len(faces["file"]) + 1


def test_rerun_skips_everything_and_retry_failed(collection, in_process, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(in_process, out)
    before = sorted(p.name for p in (out / "parts").glob("*.json"))
    r = run_batch([collection], BatchOptions(out=out, settings=_settings(), ray="none", progress=False))
    assert (r["processed"], r["skipped"], r["executor"]) == (0, len(discover([collection])), "nothing to do")
    assert sorted(p.name for p in (out / "parts").glob("*.json")) == before
    assert _table(out / "faces.parquet") == _table(in_process / "faces.parquet")
    other = PipelineSettings(**{**_settings().__dict__, "margin": 0.2})
    with pytest.raises(ValueError, match=r"other settings: margin \(0.0 -> 0.2\)"):
        run_batch([collection], BatchOptions(out=out, settings=other, ray="none", progress=False))
    # the detector that would run is compared, not the name asked for: "auto" without the YuNet file it had falls
    # back to Haar, and that is refused instead of mixing Haar rows with YuNet ones
    gone = PipelineSettings(**{**_settings().__dict__, "detector": "auto", "detector_model": str(tmp_path / "no.onnx")})
    with pytest.raises(ValueError, match=r"other settings: detector \('yunet [0-9a-f]+' -> 'haar'\)"):
        run_batch([collection], BatchOptions(out=out, settings=gone, ray="none", progress=False))
    r = run_batch(
        [collection], BatchOptions(out=out, settings=_settings(), ray="none", progress=False, retry_failed=True)
    )
    assert r["processed"] == 2 and r["failed_now"] == 2
    # a changed file is analysed again; its old result is replaced, not duplicated
    clip = collection / "videos" / "one_person.mp4"
    os.utime(clip, ns=(time.time_ns(), time.time_ns()))
    r = run_batch([collection], BatchOptions(out=out, settings=_settings(), ray="none", progress=False))
    assert r["processed"] == 1
    assert _table(out / "faces.parquet") == _table(in_process / "faces.parquet")


def test_killed_run_resumes_without_redoing_finished_files(collection, tmp_path):
    """SIGKILL mid-run, then the same command: finished parts stay untouched, the rest is done once."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "emolens.cli", "batch", str(collection / "photos"), str(collection / "videos")]
    cmd += ["--out", str(out), "--ray", "none", "--images-per-task", "1", *_pipeline_flags()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / "parts").glob("*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "faces.parquet").exists(), "the run finished before it could be killed"
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.json")}
    assert len(finished) >= 3
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # (broken.mp4 and truncated.png are unreadable)
    assert f"{len(finished)} already done" in done.stderr
    for name, mtime in finished.items():
        assert (out / "parts" / name).stat().st_mtime_ns == mtime
    total = len(discover([collection]))
    assert len(list((out / "parts").glob("*.json"))) == total  # one part per file, none done twice
    fresh = tmp_path / "fresh"
    run_batch([collection], BatchOptions(out=fresh, settings=_settings(), ray="none", progress=False))
    assert _table(out / "faces.parquet") == _table(fresh / "faces.parquet")


def test_batch_accounts_for_every_file_like_predict(tmp_path, capsys):
    """Faces, none, a 0-byte file and a text file named .jpg: each file in a table, counted, named once, exit 1."""
    from test_cli import _mixed_folder

    d = _mixed_folder(tmp_path / "mixed")
    args = ["batch", str(d), "--out", str(tmp_path / "out"), "--ray", "none", "--detector", "haar", "--threads", "1"]
    assert main([*args, "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ")[1] for line in err[:2]] == [str(d / "e_empty.png"), str(d / "f_notes.jpg")]
    assert err[2] == "6 file(s): 2 with faces, 2 without, 2 unreadable; 6 analysed now, 0 already done", err
    files, failures = _table(tmp_path / "out" / "files.parquet"), _table(tmp_path / "out" / "failures.parquet")
    assert [Path(f).name for f in files["file"]] == ["a_face.jpg", "b_face.png", "c_wall.jpg", "d_grey.png"]
    assert files["faces"] == [1, 1, 0, 0]
    assert [Path(f).name for f in failures["file"]] == ["e_empty.png", "f_notes.jpg"]
    assert all(e.count(f) == 1 for f, e in zip(failures["file"], failures["error"], strict=True))
    assert main(args[:-4] + ["--detector", "haar", "--threads", "1", "-q", "--csv"]) == 1  # nothing new: same rule
    assert capsys.readouterr().err.startswith("6 file(s): 2 with faces, 2 without, 2 unreadable; 0 analysed now")


def test_batch_flags_reach_the_options():
    from emolens.cli import batch_options, build_parser

    a = build_parser().parse_args(
        ["batch", "x/", "--out", "o", "--csv", "--ray", "10.0.0.5:6379", "--workers", "3", "--cpus-per-worker", "2",
         "--gpus-per-worker", "0.5", "--every", "4", "--whole-image", "--images-per-task", "8", "--retry-failed",
         "--margin", "0.1", "--detector", "haar", "--threads", "2", "-q"]
    )  # fmt: skip
    o = batch_options(a)
    assert (o.out, o.csv, o.ray, o.workers, o.cpus_per_worker, o.gpus_per_worker) == (
        "o",
        True,
        "10.0.0.5:6379",
        3,
        2,
        0.5,
    )
    assert (o.every, o.whole_image, o.images_per_task, o.retry_failed, o.progress) == (4, True, 8, True, False)
    assert (o.settings.margin, o.settings.detector, o.settings.threads) == (0.1, "haar", 2)


def test_every_and_whole_image_work_as_in_live_and_predict(collection, in_process, tmp_path):
    clip = collection / "videos" / "two_people.mp4"
    out = tmp_path / "every"
    run_batch([clip], BatchOptions(out=out, settings=_settings(), ray="none", progress=False, every=3))
    rows_csv = tmp_path / "live.csv"
    assert main(["live", "--source", str(clip), "--csv", str(rows_csv), "--every", "3", *_pipeline_flags()]) == 0
    live = list(csv.DictReader(rows_csv.open()))
    every = _table(out / "faces.parquet")
    assert [r["label"] for r in live] == every["label"] and len(live) == 2 * 24  # every face of every frame
    full = _table(in_process / "faces.parquet")
    mine = [i for i, f in enumerate(full["file"]) if f == str(clip)]
    p = {(f, t): v for f, t, v in zip(every["frame"], every["track_id"], every["p_happiness"], strict=True)}
    held = [v == p[(f - 1, t)] for (f, t), v in p.items() if f % 3]
    assert len(held) == 2 * 16 and all(held)  # frames between classified ones keep each track's probabilities
    assert every["p_happiness"][:2] == [full["p_happiness"][i] for i in mine[:2]]
    whole = tmp_path / "whole"
    run_batch(
        [collection / "photos"],
        BatchOptions(out=whole, settings=_settings(), ray="none", progress=False, whole_image=True),
    )
    faces, files = _table(whole / "faces.parquet"), _table(whole / "files.parquet")
    assert len(faces["file"]) == len(files["file"]) == sum(SFEW_PICK.values())  # one face per image: the image
    boxes = zip(faces["x"], faces["y"], faces["w"], faces["h"], strict=True)
    assert all((x, y, w, h) == (0, 0, 143, 181) for x, y, w, h in boxes)


# ------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def two_nodes():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'emolens[batch]')")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_two_node_cluster_does_the_same_work(collection, in_process, two_nodes, tmp_path):
    out = tmp_path / "ray"
    r = run_batch([collection], BatchOptions(out=out, settings=_settings(), ray=two_nodes.address, progress=False))
    assert r["workers"] == 2 and len(r["nodes"]) == 2
    files = _table(out / "files.parquet")
    assert len(set(files["node"])) == 2, "both nodes analysed files"
    assert _table(out / "faces.parquet") == _table(in_process / "faces.parquet")
    failures = _table(out / "failures.parquet")
    assert sorted(Path(f).name for f in failures["file"]) == ["broken.mp4", "truncated.png"]


def test_a_dead_worker_loses_no_file(collection, two_nodes, caplog):
    """Kill a worker mid-run: Ray restarts it and its task is done again; every file gets its result."""
    import ray

    from emolens.batch.runner import RayExecutor

    files = discover([collection])
    ex = RayExecutor(BatchOptions(out="unused", settings=_settings(), ray=two_nodes.address))
    results = {}
    try:
        for k, (_, out) in enumerate(ex.run(deque(make_tasks(files, images_per_task=2)))):
            if k == 0:
                for a in ex.actors:
                    ray.kill(a, no_restart=False)  # both workers die, whatever they are doing
            assert not isinstance(out, BaseException)
            results.update({r.file.path: r for r in out})
    finally:
        ex.close()
    assert "a worker died" in caplog.text  # the kill did cost a task, which was done again
    assert sorted(results) == sorted(f.path for f in files)
    assert sum(r.ok for r in results.values()) == len(files) - 2


def test_file_names_that_are_not_utf8_keep_a_row_each(tmp_path):
    # two names that differ only in a byte that is not UTF-8: each file keeps its own rows and faces
    d = tmp_path / "d"
    d.mkdir()
    ok, buf = cv2.imencode(".jpg", sample_face())
    for name in (b"p\xff.jpg", b"p\xfe.jpg"):
        with open(os.path.join(os.fsencode(d), name), "wb") as f:
            f.write(buf.tobytes())
    out = tmp_path / "out"
    r = run_batch([d], BatchOptions(out=out, settings=_settings(), ray="none", progress=False, images_per_task=1))
    files, faces = _table(out / "files.parquet"), _table(out / "faces.parquet")
    assert sorted(Path(f).name for f in files["file"]) == ["p\\xfe.jpg", "p\\xff.jpg"]
    assert len(faces["file"]) == 2 and len(set(faces["file"])) == 2
    assert r["faces"] == 2


def test_dangling_links_and_fifos_end_as_failed_rows_without_being_opened(tmp_path):
    """Every file batch and predict are given ends in a row: a dangling link and a FIFO named like images (a
    FIFO is never opened: reading one blocks for ever) are failed rows; a folder named like one is searched."""
    import json

    from emolens.cli import main

    d = tmp_path / "d"
    (d / "album.jpg").mkdir(parents=True)  # a folder named like an image, holding one
    cv2.imwrite(str(d / "album.jpg" / "face.jpg"), sample_face())
    cv2.imwrite(str(d / "a.jpg"), sample_face())
    (d / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (d / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    os.mkfifo(d / "pipe.jpg")
    os.mkfifo(d / "pipe.mp4")
    out = tmp_path / "out"
    r = run_batch([d], BatchOptions(out=out, settings=_settings(), ray="none", progress=False, images_per_task=1))
    files, failures = _table(out / "files.parquet"), _table(out / "failures.parquet")
    status = {Path(f).name: st for f, st in zip(files["file"], files["status"], strict=True)}
    errors = {Path(f).name: e for f, e in zip(failures["file"], failures["error"], strict=True)}
    assert status == {"a.jpg": "ok", "face.jpg": "ok"} and (r["faces"], r["failed_now"], r["files"]) == (2, 4, 6)
    assert sorted(errors) == ["gone.jpg", "gone.mp4", "pipe.jpg", "pipe.mp4"]
    assert all("dangling symbolic link" in errors[n] for n in ("gone.jpg", "gone.mp4"))
    assert all("not a regular file (FIFO)" in errors[n] for n in ("pipe.jpg", "pipe.mp4"))
    # predict: the same files, the same rows; named directly too
    j = tmp_path / "p.json"
    assert main(["predict", str(d), str(d / "gone.jpg"), "--detector", "haar", "-q", "--json", str(j)]) == 1
    images = [(Path(i["file"]).name, i["status"], i.get("error", "")) for i in json.loads(j.read_text())["images"]]
    assert [i[0] for i in images] == ["a.jpg", "face.jpg", "gone.jpg", "pipe.jpg", "gone.jpg"]
    assert [i[1] for i in images] == ["faces", "faces", "error", "error", "error"]
    assert "dangling symbolic link" in images[2][2] and "FIFO" in images[3][2]


def test_patterns_and_folders_do_not_follow_link_loops_and_a_file_is_analysed_once(tmp_path):
    d = tmp_path / "L"
    d.mkdir()
    cv2.imwrite(str(d / "a.jpg"), sample_face())
    (d / "a").symlink_to(".")  # two loops: glob.glob(recursive=True) would walk 2^40 paths
    (d / "b").symlink_to(".")
    (tmp_path / "same.jpg").symlink_to(d / "a.jpg")
    found = discover([f"{d}/**", str(d), str(tmp_path / "same.jpg"), f"{d}/a/a.jpg"])
    assert [Path(f.path).name for f in found] == ["a.jpg"]
