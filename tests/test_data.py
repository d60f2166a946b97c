import csv

import cv2
import numpy as np
import pytest
from conftest import make_affectnet_yolo, make_folder_dataset, shared_path, yolo_face

from emolens.data import (
    DataError,
    FaceDataset,
    Sample,
    attach_cache,
    dataset_samples,
    group_split,
    open_dataset,
    parse_data_spec,
    read_image,
    stratified_split,
)
from emolens.labels import CLASSES, CLASSES_7


# ---------------------------------------------------------------- AffectNet, official layout
def _affectnet_official(root, rows):
    img_dir = root / "Manually_Annotated_Images" / "1"
    img_dir.mkdir(parents=True)
    header = [
        "subDirectory_filePath",
        "face_x",
        "face_y",
        "face_width",
        "face_height",
        "facial_landmarks",
        "expression",
        "valence",
        "arousal",
    ]
    for name in ("training.csv", "validation.csv"):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i, expr in enumerate(rows):
                img = np.zeros((100, 120, 3), np.uint8)
                img[20:60, 30:70] = (0, 0, 255)  # a red face box: after cropping the face is all red
                cv2.imwrite(str(img_dir / f"{name[:3]}{i}.jpg"), img)
                w.writerow([f"1/{name[:3]}{i}.jpg", 30, 20, 40, 40, "", expr, 0.5, -0.25])
    return root


def test_affectnet_official_crops_face_and_drops_8_to_10(tmp_path):
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 4
    root = _affectnet_official(tmp_path, labels)
    ds = open_dataset("affectnet", root, "val", protocol="official", image_size=16, channels=3)
    assert len(ds) == 32 and ds.classes == CLASSES
    face = ds.load_face(0)
    assert face.shape == (16, 16, 3)
    assert face[8, 8, 0] > 200 and face[8, 8, 2] < 40  # RGB order: red channel first
    assert ds.samples[0].valence == 0.5 and ds.samples[0].arousal == -0.25
    # paper protocol: 80/10/10 of the training pool, disjoint
    parts = [open_dataset("affectnet", root, s, seed=3).samples for s in ("train", "val", "test")]
    names = [{s.path for s in p} for p in parts]
    assert [len(p) for p in parts] == [25, 3, 4] or sum(len(p) for p in parts) == 32
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])


def test_affectnet_missing_column_names_file(tmp_path):
    (tmp_path / "training.csv").write_text("subDirectory_filePath,expression\nx.jpg,1\n")
    with pytest.raises(DataError, match=r"training\.csv: missing column\(s\)"):
        open_dataset("affectnet", tmp_path, "train")


# ---------------------------------------------------------------- AffectNet, the paper's layout
def test_affectnet_paper_layout(tmp_path):
    for split in ("train_set", "val_set"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "annotations").mkdir()
        for i in range(20):
            cv2.imwrite(str(tmp_path / split / "images" / f"{i}.jpg"), np.full((40, 40, 3), 9 * i, np.uint8))
            np.save(tmp_path / split / "annotations" / f"{i}_exp.npy", np.array(str(i % 9)))  # AffectNet stores str
            np.save(tmp_path / split / "annotations" / f"{i}_val.npy", np.array(str(0.1 * i)))
            np.save(tmp_path / split / "annotations" / f"{i}_aro.npy", np.array("-0.3"))
    ds = open_dataset("affectnet", tmp_path, "test", protocol="official", image_size=20)
    assert len(ds) == 20 - 2  # label 8 dropped for i = 8, 17
    assert sorted({s.label for s in ds.samples}) == list(range(8))
    s = next(s for s in ds.samples if s.path.endswith("/3.jpg"))
    assert s.label == 3 and s.valence == pytest.approx(0.3) and s.arousal == pytest.approx(-0.3)
    assert ds.load_face(0).shape == (20, 20)


# ---------------------------------------------------------------- AffectNet, the Kaggle YOLO re-pack
def test_affectnet_yolo_maps_classes_by_name_and_cuts_the_face_from_the_box(tmp_path):
    from emolens.data.affectnet import AFFECTNET_FACE

    base = make_affectnet_yolo(tmp_path, per_class=2, dups=0, splits=("train", "valid"), ffhq=3)
    # a face box that is not the whole image: the right half of image 1 (class 0 of data.yaml: "Sad")
    (base / "valid" / "labels" / "image0000001.txt").write_text("0 0.75 0.5 0.5 1\n")
    for root in (tmp_path, base):  # the folder above YOLO_format/ or YOLO_format/ itself
        ds = open_dataset("affectnet", root, "val", protocol="official", image_size=24, channels=3)
        assert len(ds) == 16 and ds.classes == CLASSES  # the 3 FFHQ images are left out
        by_stem = {s.path.rsplit("/", 1)[1]: s for s in ds.samples}
        # label = position in data.yaml's names, mapped by name: id 0 "Sad" -> sadness, 5 "Happy" -> happiness
        assert CLASSES[by_stem["image0000000.jpg"].label] == "sadness"
        assert CLASSES[by_stem["image0000010.jpg"].label] == "happiness"
        assert [CLASSES[by_stem[f"image{2 * k:07d}.jpg"].label] for k in range(8)] == [
            "sadness",
            "anger",
            "contempt",
            "disgust",
            "fear",
            "happiness",
            "neutral",
            "surprise",
        ]
        fx, fy, fw, fh = AFFECTNET_FACE
        whole = by_stem["image0000000.jpg"].face
        assert whole == pytest.approx(((fx - fw / 2) * 96, (fy - fh / 2) * 96, fw * 96, fh * 96))
        half = by_stem["image0000001.jpg"].face  # the same fractions of the box [48, 96) x [0, 96)
        assert half == pytest.approx((48 + (fx - fw / 2) * 48, (fy - fh / 2) * 96, fw * 48, fh * 96))
    # official test falls back to valid/ when the tree has no test/
    assert len(open_dataset("affectnet", base, "test", protocol="official").samples) == 16


def test_affectnet_yolo_bad_names_and_labels_name_the_file(tmp_path):
    base = make_affectnet_yolo(tmp_path, per_class=1, dups=0)
    (base / "train" / "labels" / "image0000003.txt").write_text("9 0.5 0.5 1 1\n")
    with pytest.raises(DataError, match=r"image0000003\.txt: class 9 out of range"):
        dataset_samples("affectnet", base, "train", protocol="official")
    (base / "train" / "labels" / "image0000003.txt").write_text("three\n")
    with pytest.raises(DataError, match=r"image0000003\.txt: expected one line"):
        dataset_samples("affectnet", base, "train", protocol="official")
    (base / "data.yaml").write_text("names: [Sad, Bored]\n")
    with pytest.raises(DataError, match=r"data\.yaml: unknown emotion class name 'Bored'"):
        dataset_samples("affectnet", base, "train", protocol="official")


def test_affectnet_yolo_split_keeps_each_near_duplicate_group_on_one_side(tmp_path):
    base = make_affectnet_yolo(tmp_path, per_class=12, dups=12)
    parts = {s: dataset_samples("affectnet", base, s)[0] for s in ("train", "val", "test")}
    stems = {s: {p.path.rsplit("/", 1)[1][:-4] for p in v} for s, v in parts.items()}
    assert sum(len(v) for v in stems.values()) == 8 * 12 + 12 and not (stems["train"] & stems["val"])
    assert not (stems["train"] & stems["test"]) and not (stems["val"] & stems["test"])
    assert 70 <= len(stems["train"]) <= 95 and stems["val"] and stems["test"]
    for n in range(12):  # the mirrored, re-cropped copy lands beside its original
        side = [s for s, v in stems.items() if f"image{n:07d}" in v]
        assert f"dup{n:02d}" in stems[side[0]], n
    # the seed is fixed in code: the same split every time, whatever --seed says
    again = dataset_samples("affectnet", base, "val", seed=5)[0]
    assert [s.path for s in again] == [s.path for s in parts["val"]]


def test_near_duplicate_groups_join_crops_and_mirrors_not_other_images(tmp_path):
    from emolens.data.dedup import near_duplicate_groups

    img = yolo_face(3, seed=1)
    variants = {
        "a.png": img,
        "mirror.png": img[:, ::-1],
        "tighter.png": cv2.resize(img[4:-4, 2:-6], (96, 96)),
        "other.png": yolo_face(3, seed=2),  # same class pattern, another texture
        "other_mirror.png": yolo_face(3, seed=2)[:, ::-1],
        "third.png": yolo_face(5, seed=3),
    }
    paths = []
    for name, im in variants.items():
        cv2.imwrite(str(tmp_path / name), im)
        paths.append(str(tmp_path / name))
    assert near_duplicate_groups(paths).tolist() == [0, 0, 0, 1, 1, 2]


def test_affectnet_yolo_real_carve(tmp_path):
    root = shared_path("data/affectnet_yolo")
    parts = {s: dataset_samples("affectnet", root, s)[0] for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [9623, 1203, 1203]
    assert set(np.bincount([s.label for s in parts["val"]], minlength=8)[:8] > 25) == {True}  # every class there
    paths = [{p.path for p in v} for v in parts.values()]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])


# ---------------------------------------------------------------- FER+
def test_ferplus_majority_vote_on_fake_tree(tmp_path):
    d = tmp_path / "data" / "FER2013Train"
    d.mkdir(parents=True)
    rows = [
        ["a.png", "(0, 0, 48, 48)", 4, 0, 0, 1, 3, 2, 0, 0, 0, 0],  # neutral
        ["b.png", "(0, 0, 48, 48)", 0, 0, 0, 0, 0, 0, 0, 6, 2, 2],  # contempt
        ["c.png", "(0, 0, 48, 48)", 0, 0, 0, 0, 0, 0, 0, 0, 9, 1],  # unknown wins: dropped
        ["d.png", "(0, 0, 48, 48)", 5, 5, 0, 0, 0, 0, 0, 0, 0, 0],  # tie: dropped
        ["e.png", "(0, 0, 48, 48)", 0, 0, 2, 8, 0, 0, 0, 0, 0, 0],  # FER+ column 3 = sadness
    ]
    with open(d / "label.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    for r in rows:
        cv2.imwrite(str(d / r[0]), np.zeros((48, 48), np.uint8))
    ds = open_dataset("ferplus", tmp_path, "train")
    assert [CLASSES[s.label] for s in ds.samples] == ["neutral", "contempt", "sadness"]
    soft = ds.soft_target(2)
    assert soft[CLASSES.index("sadness")] == pytest.approx(0.8) and soft[CLASSES.index("surprise")] == pytest.approx(
        0.2
    )
    _, y, s = ds[0]
    assert y == 0 and s.sum().item() == pytest.approx(1.0)


def test_ferplus_real(ferplus_root):
    ds = open_dataset("ferplus", ferplus_root, "test")
    assert 3000 < len(ds) < 3589  # 3,589 test images minus unknown/NF/ties
    first = next(s for s in ds.samples if s.path.endswith("fer0032220.png"))
    row = next(r for r in csv.reader(open(ferplus_root / "data/FER2013Test/label.csv")) if r[0] == "fer0032220.png")
    votes = [int(v) for v in row[2:10]]
    from emolens.labels import FERPLUS_COLUMNS

    assert CLASSES[first.label] == FERPLUS_COLUMNS[int(np.argmax(votes))]
    img, label, _ = ds[0]
    assert img.shape == (1, 48, 48) and img.dtype.is_floating_point is False


# ---------------------------------------------------------------- FER2013
def test_fer2013_folder_real_splits(fer2013_root):
    # the shared copy holds the test part only (PublicTest + PrivateTest): its training faces are FER+'s
    sizes = {s: len(open_dataset("fer2013", fer2013_root, s).samples) for s in ("val", "test")}
    assert sizes == {"val": 3589, "test": 3589}
    if not (fer2013_root / "train").is_dir():
        with pytest.raises(DataError, match="nor a train/ folder"):
            open_dataset("fer2013", fer2013_root, "train")
    ds = open_dataset("fer2013", fer2013_root, "test")
    assert ds.classes == CLASSES_7
    assert all("PrivateTest" in s.path for s in ds.samples)
    happy = [s for s in ds.samples if "/happy/" in s.path]
    assert happy and all(s.label == CLASSES_7.index("happiness") for s in happy)


def test_fer2013_csv(tmp_path):
    px = " ".join(["128"] * 48 * 48)
    (tmp_path / "fer2013.csv").write_text(
        f"emotion,pixels,Usage\n3,{px},Training\n0,{px},PrivateTest\n6,{px},PrivateTest\n"
    )
    ds = open_dataset("fer2013", tmp_path, "test")
    assert [CLASSES_7[s.label] for s in ds.samples] == ["anger", "neutral"]
    assert ds.load_face(0).shape == (48, 48) and ds.load_face(0)[0, 0] == 128
    (tmp_path / "fer2013.csv").write_text(f"emotion,pixels,Usage\n9,{px},Training\n")
    with pytest.raises(DataError, match=r"fer2013\.csv:2: emotion 9 out of range"):
        open_dataset("fer2013", tmp_path, "train")
    (tmp_path / "fer2013.csv").write_text("emotion,Usage\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['pixels'\]"):
        open_dataset("fer2013", tmp_path, "train")


# ---------------------------------------------------------------- class-per-folder
def test_folder_split_is_stratified_seeded_and_disjoint(tmp_path):
    root = make_folder_dataset(tmp_path, classes=("Neutral", "happy", "ANGRY"), per_class=20)
    parts = {s: open_dataset("folder", root, s, seed=1) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [48, 6, 6]
    assert list(np.bincount(parts["val"].targets, minlength=8)[[0, 1, 6]]) == [2, 2, 2]
    again = open_dataset("folder", root, "val", seed=1)
    assert [s.path for s in again.samples] == [s.path for s in parts["val"].samples]
    assert {s.path for s in parts["train"].samples}.isdisjoint({s.path for s in parts["test"].samples})


def test_folder_with_split_dirs_and_bad_class(tmp_path):
    root = make_folder_dataset(tmp_path, per_class=3, split_dirs=True)
    assert len(open_dataset("folder", root, "test")) == 9
    (root / "train" / "bored").mkdir()
    with pytest.raises(DataError, match="bored"):
        open_dataset("folder", root, "train")


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_dataset("folder", tmp_path / "nope", "train")
    (tmp_path / "happy").mkdir()
    with pytest.raises(DataError, match="contain no images"):
        open_dataset("folder", tmp_path, "train")


def test_stratified_split_proportions():
    y = [0] * 80 + [1] * 20
    s = stratified_split(y, seed=0)
    assert len(s["train"]) == 80 and len(s["val"]) == 10 and len(s["test"]) == 10
    assert sum(y[i] for i in s["test"]) == 2
    assert stratified_split(y, seed=0)["test"].tolist() == s["test"].tolist()
    assert stratified_split(y, seed=1)["test"].tolist() != s["test"].tolist()


# ---------------------------------------------------------------- bad images, cache
def _ds_with_corrupt(tmp_path, on_error):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((10, 10), 50, np.uint8))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    samples = [Sample(0, str(good)), Sample(1, str(bad)), Sample(0, str(good))]
    return FaceDataset(samples, CLASSES, image_size=8, on_error=on_error), bad


def test_corrupt_image_raise_names_file(tmp_path):
    ds, bad = _ds_with_corrupt(tmp_path, "raise")
    with pytest.raises(DataError, match=f"{bad}: not a readable image"):
        ds[1]


def test_corrupt_image_skip_is_counted(tmp_path):
    ds, bad = _ds_with_corrupt(tmp_path, "skip")
    img, label, _ = ds[1]
    assert label == 0 and img.shape == (1, 8, 8)  # next readable sample served instead
    assert list(ds.bad_files) == [str(bad)]


def test_label_out_of_range_is_an_error(tmp_path):
    with pytest.raises(DataError, match="label 9 out of range"):
        FaceDataset([Sample(9, str(tmp_path / "x.png"))], CLASSES)


def test_read_image_handles_grey_rgba_16bit(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.full((5, 5, 4), (10, 20, 30, 255), np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.full((5, 5), 65535, np.uint16))
    assert read_image(tmp_path / "a.png", 3)[0, 0].tolist() == [30, 20, 10]  # BGRA file -> RGB
    assert read_image(tmp_path / "b.png", 1)[0, 0] == 255
    with pytest.raises(DataError, match="empty"):
        (tmp_path / "c.png").write_bytes(b"")
        read_image(tmp_path / "c.png")


def test_cache_gives_identical_faces(tmp_path):
    root = make_folder_dataset(tmp_path / "d", per_class=5)
    plain = open_dataset("folder", root, "train", image_size=24)
    cached = open_dataset("folder", root, "train", image_size=24)
    path = attach_cache(cached, tmp_path / "cache", progress=False)
    assert path.is_file()
    for i in range(len(plain)):
        assert np.array_equal(plain.load_face(i), cached.load_face(i))


def test_cache_progress_bar_follows_the_progress_switch(tmp_path, capsys):
    """``emolens train --no-progress`` (logs of background runs) builds its cache without a progress bar."""
    root = make_folder_dataset(tmp_path / "d", per_class=3)
    open_dataset("folder", root, "train", image_size=24, cache=tmp_path / "c1", progress=False)
    assert "caching" not in capsys.readouterr().err
    open_dataset("folder", root, "train", image_size=24, cache=tmp_path / "c2")
    assert "caching folder:train" in capsys.readouterr().err


# ------------------------------------------------------------------ CK+, SFEW, several datasets at once
def test_group_split_never_shares_a_group_and_is_seeded():
    rng = np.random.default_rng(0)
    groups = [f"S{g:03d}" for g in rng.integers(0, 60, 900)]
    labels = rng.integers(0, 7, 900).tolist()
    a = group_split(labels, groups, (0.7, 0.1, 0.2), seed=0)
    b = group_split(labels, groups, (0.7, 0.1, 0.2), seed=0)
    c = group_split(labels, groups, (0.7, 0.1, 0.2), seed=1)
    g = np.asarray(groups)
    sets = {k: set(g[v]) for k, v in a.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(900))
    assert all((a[k] == b[k]).all() for k in a) and any(len(a[k]) != len(c[k]) or (a[k] != c[k]).any() for k in a)
    assert 0.1 < len(a["test"]) / 900 < 0.3
    with pytest.raises(ValueError, match="too few"):
        group_split([0, 1], ["a", "b"])


def test_ckplus_real_splits_by_subject():
    from emolens.data.ckplus import subject_of

    root = shared_path("data/ckplus")
    splits = {s: dataset_samples("ckplus", root, s)[0] for s in ("train", "val", "test")}
    subjects = {s: {subject_of(x.path) for x in v} for s, v in splits.items()}
    assert not (subjects["train"] & subjects["test"] or subjects["val"] & subjects["test"])
    assert not subjects["train"] & subjects["val"]
    assert sum(len(v) for v in splits.values()) == 981
    # the split is fixed in code: these are the same held-out subjects on every machine
    assert len(splits["test"]) == 195 and sorted(subjects["test"])[:3] == ["S058", "S062", "S067"]
    test_counts = np.bincount([x.label for x in splits["test"]], minlength=8)
    assert test_counts[CLASSES.index("neutral")] == 0 and test_counts[CLASSES.index("contempt")] > 0
    ds = open_dataset("ckplus", root, "test", image_size=48, channels=1)
    x, y, _ = ds[0]
    assert x.shape == (1, 48, 48) and CLASSES[y] != "neutral"


def test_sfew_real_splits_by_film_and_cuts_the_fer_like_crop():
    from emolens.data.sfew import film_of, sfew_face_box

    root = shared_path("data/sfew")
    splits = {s: dataset_samples("sfew", root, s)[0] for s in ("train", "val", "test")}
    films = {s: {film_of(x.path) for x in v} for s, v in splits.items()}
    assert not (films["train"] & films["test"] or films["val"] & films["test"] or films["train"] & films["val"])
    assert sum(len(v) for v in splits.values()) == 860 and len(films["test"]) >= 5
    assert all(x.label != CLASSES.index("contempt") for v in splits.values() for x in v)
    # the face box is where YuNet finds the face in SFEW's aligned images; the crop goes past the
    # image's left/right edges (the face fills the frame) and that part is black
    x0, y0, w, h = sfew_face_box()
    assert w > 143 and 170 < h < 185
    face = open_dataset("sfew", root, "test", image_size=48, channels=1).load_face(0)
    assert face.shape == (48, 48) and (face[:, 0] == 0).all() and face[:, 20:28].mean() > 20


def test_several_datasets_in_one_label_space(tmp_path, fer2013_root):
    folder = make_folder_dataset(tmp_path / "mine", classes=("contempt", "happy"), per_class=10)
    ds = open_dataset("fer2013", fer2013_root, "val", extra=[f"folder={folder}*3"])
    assert ds.classes == CLASSES and ds.name == "fer2013:val+folder"
    n7 = len(open_dataset("fer2013", fer2013_root, "val"))
    counts = ds.class_counts()
    assert len(ds) == n7 + 2 and counts[CLASSES.index("contempt")] == 1  # val: 10% of the folder, no repeat
    train = open_dataset("folder", folder, "train", extra=[f"folder={folder}*3"])
    n = len(open_dataset("folder", folder, "train"))
    assert len(train) == 4 * n  # the extra one repeated 3x
    assert train.parts == [("folder", 0, n), ("folder2", n, 4 * n)]  # each dataset's span, names kept apart
    assert ds.parts == [("fer2013", 0, n7), ("folder", n7, n7 + 2)]
    assert open_dataset("folder", folder, "train").parts == [("folder", 0, n)]
    for bad in ("ckplus", "nope=/x", "=x"):
        with pytest.raises(ValueError, match="KIND=ROOT|unknown dataset kind"):
            parse_data_spec(bad)
    assert parse_data_spec("sfew=/a*b/c*4") == ("sfew", "/a*b/c", 4)
    assert parse_data_spec("sfew=/a*0.25") == ("sfew", "/a", 0.25)
    with pytest.raises(ValueError, match="above 0"):
        parse_data_spec("sfew=/a*0")


def test_a_share_below_one_keeps_a_fixed_subset_of_training_faces(tmp_path):
    from emolens.checkpoint import train_counts

    folder = make_folder_dataset(tmp_path / "mine", classes=("contempt", "happy"), per_class=20)
    full = open_dataset("folder", folder, "train")
    half = open_dataset("folder", folder, "train", extra=[f"folder={folder}*0.5"])
    again = open_dataset("folder", folder, "train", extra=[f"folder={folder}*.5"])
    n = len(full)
    assert len(half) == n + round(n / 2) and half.parts[1] == ("folder2", n, len(half))
    extra = [s.path for s in half.samples[n:]]
    assert extra == [s.path for s in again.samples[n:]]  # the same subset on every run
    assert len(set(extra)) == len(extra) and set(extra) < {s.path for s in full.samples}
    assert extra == sorted(extra, key=[s.path for s in full.samples].index)  # in the set's own order
    val = open_dataset("folder", folder, "val", extra=[f"folder={folder}*0.5"])
    assert len(val) == 2 * len(open_dataset("folder", folder, "val"))  # validation is never subsampled
    # a checkpoint's class counts re-counted from its config see the same subset
    cfg = {"dataset": "folder", "root": str(folder), "extra_data": [f"folder={folder}*0.5"]}
    counts = train_counts({"classes": list(full.classes), "config": cfg})
    assert counts.sum() == len(half) and (counts == half.class_counts()).all()


def test_every_decoder_path_checks_the_pixel_limit_from_the_header(monkeypatch):
    """Radiance HDR and PFM, which OpenCV decodes and Pillow cannot size, are sized from their own headers; a file
    no header reader knows is refused; none of them reaches the decoder when refused."""
    from emolens.data.base import ImageTooLarge, decode_image

    calls = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(1))
    hdr = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 4000 +X 32000\n" + b"\x02\x02" * 64
    with pytest.raises(ImageTooLarge, match="32000x4000"):
        decode_image(hdr, "bomb.png")
    with pytest.raises(ImageTooLarge, match="30000x5000"):
        decode_image(b"PF\n30000 5000\n-1.0\n" + b"\x00" * 64, "bomb.pfm")
    with pytest.raises(ImageTooLarge):  # a Radiance file without a size line is never decoded
        decode_image(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n" + b"\x00" * 64, "odd.hdr")
    with pytest.raises(DataError, match="corrupt or unsupported format"):
        decode_image(b"\x00\x01\x02\x03" * 64, "mystery.bin")
    assert calls == []
    # a small real HDR still decodes
    monkeypatch.undo()
    ok, buf = cv2.imencode(".hdr", np.full((8, 12, 3), 0.5, np.float32))
    assert decode_image(buf.tobytes(), "small.hdr").shape[:2] == (8, 12)
