"""Every bundled model exported to ONNX runs with ``--onnx`` alone in predict, live, batch and serve, and answers as
its PyTorch checkpoint does; an ONNX file without emolens metadata is refused in one line."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from emolens.checkpoint import BUNDLED  # noqa: E402
from emolens.cli import main  # noqa: E402
from emolens.export import export_onnx, read_onnx_metadata  # noqa: E402
from emolens.labels import CLASSES  # noqa: E402
from emolens.live.synthetic import sample_face  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(BUNDLED))
def exported(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"onnx_{request.param}")
    info = export_onnx(_bundled_path(request.param), d / "m.onnx")
    assert info["max_abs_diff"] < TOL
    return request.param, d / "m.onnx"


def _bundled_path(name: str):
    from emolens.checkpoint import bundled_checkpoint

    return bundled_checkpoint(name)


def _photo(tmp_path):
    img = cv2.copyMakeBorder(sample_face(), 40, 40, 60, 60, cv2.BORDER_CONSTANT, value=(90, 110, 100))
    cv2.imwrite(str(tmp_path / "face.jpg"), img)
    return tmp_path / "face.jpg"


def _probs(rows) -> np.ndarray:
    """The probability columns of live's (``p_<class>``) or batch's CSV rows."""
    return np.array([[float(r[f"p_{c}"] if f"p_{c}" in r else r[c]) for c in CLASSES] for r in rows])


def test_export_records_what_a_runtime_needs(exported):
    name, onnx = exported
    from emolens.checkpoint import load_checkpoint

    ckpt = load_checkpoint(_bundled_path(name))
    meta = read_onnx_metadata(onnx)
    assert meta["classes"] == list(ckpt["classes"]) and meta["model"] == ckpt["model"]
    pre = ckpt["preprocess"]
    assert meta["input"]["size"] == pre["image_size"] and meta["input"]["channels"] == pre["channels"]
    assert meta["input"]["colour"] == ("RGB" if pre["channels"] == 3 else "grey")
    assert meta["input"]["mean"] == list(pre["mean"]) and meta["input"]["std"] == list(pre["std"])
    assert meta["crop"]["rule"] == "fer-square"


def test_predict_with_onnx_alone_answers_as_the_checkpoint(exported, tmp_path, capsys):
    name, onnx = exported
    photo = _photo(tmp_path)
    assert main(["predict", str(photo), "--onnx", str(onnx), "--json", str(tmp_path / "o.json"), "-q"]) == 0
    assert main(["predict", str(photo), "--checkpoint", name, "--json", str(tmp_path / "t.json"), "-q"]) == 0
    o, t = (json.loads((tmp_path / f).read_text())["images"][0]["faces"] for f in ("o.json", "t.json"))
    assert len(o) == len(t) == 1
    assert max(abs(o[0]["probs"][c] - t[0]["probs"][c]) for c in CLASSES) < TOL
    assert o[0]["label"] == t[0]["label"] == "happiness"


def test_live_and_batch_with_onnx_alone_answer_as_the_checkpoint(exported, tmp_path):
    name, onnx = exported
    for tag, flag in (("o", ["--onnx", str(onnx)]), ("t", ["--checkpoint", name])):
        args = ["live", "--source", "sample", "--max-frames", "4", "--csv", str(tmp_path / f"{tag}.csv"), "-q"]
        assert main(args + flag) == 0
    o, t = (list(csv.DictReader(open(tmp_path / f"{tag}.csv"))) for tag in "ot")
    assert len(o) == len(t) > 0
    assert np.abs(_probs(o) - _probs(t)).max() < TOL

    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos)
    for tag, flag in (("o", ["--onnx", str(onnx)]), ("t", ["--checkpoint", name])):
        args = ["batch", str(photos), "--out", str(tmp_path / f"b{tag}"), "--ray", "none", "--csv", "-q"]
        assert main(args + flag) == 0
    o, t = (list(csv.DictReader(open(tmp_path / f"b{tag}" / "faces.csv"))) for tag in "ot")
    assert len(o) == len(t) == 1
    assert np.abs(_probs(o) - _probs(t)).max() < TOL


def test_serve_with_onnx_alone_answers_as_the_checkpoint(exported, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from emolens.live.settings import PipelineSettings
    from emolens.serve import ServeSettings, create_app

    name, onnx = exported
    jpeg = cv2.imencode(".jpg", cv2.imread(str(_photo(tmp_path))))[1].tobytes()
    answers = []
    for i, ps in enumerate((PipelineSettings(onnx=str(onnx)), PipelineSettings(checkpoint=name))):
        app = create_app(ServeSettings(data_dir=tmp_path / f"d{i}", pipeline=ps, hosts=["testserver"]))
        with TestClient(app) as c:
            r = c.post("/v1/predict", files={"file": ("a.jpg", jpeg, "image/jpeg")})
            assert r.status_code == 200, r.text
            answers.append(r.json()["faces"])
    o, t = answers
    assert len(o) == len(t) == 1
    assert max(abs(o[0]["probs"][c] - t[0]["probs"][c]) for c in CLASSES) < TOL


def test_an_onnx_file_without_metadata_is_refused_in_one_line(exported, tmp_path, capsys):
    import onnx

    _, path = exported
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    photo = _photo(tmp_path)
    assert main(["predict", str(photo), "--onnx", str(tmp_path / "bare.onnx"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bare.onnx: no emolens metadata" in err[0] and "emolens export" in err[0]
    # a file with the key but not every field names the missing ones
    entry = proto.metadata_props.add()
    entry.key, entry.value = "emolens", json.dumps({"model": "x", "classes": ["a"], "crop": {"rule": "fer-square"}})
    onnx.save(proto, str(tmp_path / "half.onnx"))
    assert main(["live", "--source", "sample", "--max-frames", "1", "--onnx", str(tmp_path / "half.onnx"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "half.onnx: emolens metadata lacks input, input.size" in err


# ------------------------------------------------------------------ --runtime auto: the cached export
def test_auto_runtime_runs_the_cached_export_and_answers_as_pytorch(tmp_path, monkeypatch):
    """The default runtime on the CPU is ONNX Runtime on an export made once per checkpoint: a second classifier
    reuses the file, a changed checkpoint gets its own, and the answers are PyTorch's."""
    import shutil

    import emolens.export as export
    from emolens.live.classifier import EmotionClassifier

    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path / "cache"))
    calls = []
    real = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: calls.append(a) or real(*a, **k))
    ckpt = tmp_path / "model.pt"
    shutil.copy(_bundled_path("faceres_v2"), ckpt)
    first = EmotionClassifier(ckpt)
    assert first.backend == "onnx" and first.checkpoint == ckpt and len(calls) == 1
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    second = EmotionClassifier(ckpt)
    assert second.backend == "onnx" and len(calls) == 1  # read from the cache, not exported again
    faces = np.random.default_rng(0).integers(0, 255, (5, 112, 112, 3), dtype=np.uint8)
    torch_probs = EmotionClassifier(ckpt, backend="torch").predict(faces)
    assert np.abs(second.predict(faces) - torch_probs).max() < TOL
    shutil.copy(_bundled_path("fernet_v3"), ckpt)  # other bytes, same path: a new export
    third = EmotionClassifier(ckpt)
    assert len(calls) == 2 and third.preprocess.image_size == 48
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2


def test_auto_runtime_falls_back_to_pytorch_where_onnx_cannot_serve(tmp_path, monkeypatch):
    """Views (tta), a missing ONNX Runtime and a failed export all leave the classifier in PyTorch; asking
    for ONNX Runtime explicitly raises instead of falling back."""
    import emolens.export as export
    import emolens.live.classifier as classifier_module
    from emolens.live.classifier import EmotionClassifier
    from emolens.live.settings import PipelineSettings

    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path / "cache"))
    assert EmotionClassifier(tta="flip").backend == "torch"
    assert PipelineSettings(runtime="torch").classifier().backend == "torch"
    assert PipelineSettings().classifier().backend == "onnx"
    monkeypatch.setattr(classifier_module, "onnx_available", lambda: False)
    assert EmotionClassifier().backend == "torch"
    monkeypatch.undo()
    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path / "cache2"))

    def broken(*a, **k):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(export, "export_onnx", broken)
    with pytest.warns(UserWarning, match="exporter broke"):
        assert EmotionClassifier().backend == "torch"
    with pytest.raises(RuntimeError, match="exporter broke"):
        EmotionClassifier(backend="onnx")
    assert not list((tmp_path / "cache2" / "onnx").glob("*"))  # nothing half-written is left


def test_cached_export_refuses_an_export_that_differs_from_pytorch(tmp_path, monkeypatch):
    import emolens.export as export

    real = export.export_onnx

    def drifting(*a, **k):
        return {**real(*a, **k), "max_abs_diff": 0.2}

    monkeypatch.setattr(export, "export_onnx", drifting)
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export.cached_export(_bundled_path("fernet_v3"), cache_dir=tmp_path)
    assert not list(tmp_path.glob("*"))


def test_the_runtime_flag_reaches_the_classifier(tmp_path, monkeypatch):
    """`emolens predict --runtime X` builds the classifier X names; without the flag, auto picks ONNX Runtime."""
    from emolens.live.classifier import EmotionClassifier

    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path / "cache"))
    used = []
    real_init = EmotionClassifier.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        used.append(self.backend)

    monkeypatch.setattr(EmotionClassifier, "__init__", init)
    photo = _photo(tmp_path)
    for flags in (["--runtime", "torch"], ["--runtime", "onnxruntime"], []):
        assert main(["predict", str(photo), *flags, "--json", str(tmp_path / "p.json"), "-q"]) == 0
    assert used == ["torch", "onnx", "onnx"]
