import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO, make_affectnet_yolo, make_folder_dataset, make_rafdb

import emolens.checkpoint as checkpoint_module
from emolens.checkpoint import build_from_checkpoint, unwrap
from emolens.evaluation.evaluate import evaluate
from emolens.evaluation.inference import predict_loader
from emolens.runtime import native_bf16
from emolens.training import CheckpointError, TrainConfig, Trainer, load_checkpoint, train
from emolens.training.adapters import per_set_metrics


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_folder_dataset(
        tmp_path_factory.mktemp("tiny"),
        classes=("neutral", "happy", "sad", "angry"),
        per_class=30,
        size=32,
        split_dirs=True,
    )


def _cfg(root, out, **kw):
    base = dict(
        dataset="folder",
        root=str(root),
        model="fernet_tiny",
        out=str(out),
        image_size=32,
        epochs=3,
        batch_size=16,
        lr=3e-3,
        workers=0,
        progress=False,
        cache=False,
        augment="light",
        amp=False,  # float32 on every CPU: the thresholds below must not depend on the machine's bf16 units
    )
    base.update(kw)
    return TrainConfig(**base)


def test_training_learns_and_writes_run_folder(tiny_root, tmp_path):
    out = train(_cfg(tiny_root, tmp_path / "run", epochs=4))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_accuracy"] >= 0.9  # the bar position is trivially learnable
    assert (out / "plots" / "learning_curves.png").stat().st_size > 1000
    assert TrainConfig.load(out / "config.json").epochs == 4
    ck = load_checkpoint(out / "best.pt", expect_model="fernet_tiny", expect_classes=8)
    assert ck["preprocess"]["image_size"] == 32
    m = evaluate(out / "best.pt", "folder", tiny_root, "test", out=tmp_path / "eval", progress=False)
    assert m["accuracy"] >= 0.9
    assert sum(map(sum, m["confusion"])) == m["n"] == 120
    for f in (
        "metrics.json",
        "per_class.csv",
        "confusion.csv",
        "confusion_ratio.csv",
        "confusion.png",
        "confusion_ratio.png",
        "per_class.png",
        "class_distribution.png",
        "learning_curves.png",
        "report.md",
        "report.html",
    ):
        assert (tmp_path / "eval" / f).is_file(), f


def test_resume_gives_identical_weights(tiny_root, tmp_path):
    straight = Trainer(_cfg(tiny_root, tmp_path / "a", epochs=3, balanced_sampler=True))
    straight.fit()
    first = Trainer(_cfg(tiny_root, tmp_path / "b", epochs=3, balanced_sampler=True))
    first.fit(stop_after=2)  # "killed" after epoch 2: last.pt holds epoch 2
    resumed = Trainer(_cfg(tiny_root, tmp_path / "b", epochs=3, balanced_sampler=True))
    assert resumed.resume() and resumed.start_epoch == 2
    resumed.fit()
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


def test_checkpoint_mismatch_errors(tiny_root, tmp_path):
    out = train(_cfg(tiny_root, tmp_path / "run", epochs=1))
    with pytest.raises(CheckpointError, match="best.pt: checkpoint is for model 'fernet_tiny', not 'resnet18'"):
        load_checkpoint(out / "best.pt", expect_model="resnet18")
    with pytest.raises(CheckpointError, match="has 8 classes, expected 7"):
        load_checkpoint(out / "best.pt", expect_classes=7)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(junk)
    other = Trainer(_cfg(tiny_root, tmp_path / "run", model="paper_cnn", epochs=2))
    with pytest.raises(CheckpointError, match="not 'paper_cnn'"):
        other.resume()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"optimizer must be one of adamw, sgd \(got 'adam'\)"):
        TrainConfig(optimizer="adam").validate()
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"epochz": 3})
    # a run folder of an earlier version: removed settings load where they were off, and are refused where on
    assert TrainConfig.from_dict({"epochs": 3, "ema": 0.0, "sam": 0.0, "keep_epochs": False}).epochs == 3
    with pytest.raises(ValueError, match=r"were removed .*ema=0\.999"):
        TrainConfig.from_dict({"ema": 0.999})


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from emolens.training import TrainConfig, Trainer
    from emolens.checkpoint import unwrap
    root, out = sys.argv[1], sys.argv[2]
    kd = dict(teacher=sys.argv[3], teacher_views="flip", teacher_offline=True) if len(sys.argv) > 3 else {}
    t = Trainer(TrainConfig(dataset="folder", root=root, model="fernet_tiny", out=out, image_size=32, epochs=2,
                            batch_size=16, lr=3e-3, workers=0, progress=False, cache=False, augment="light", **kd))
    hist = t.fit()
    torch.save({"state": unwrap(t.model).state_dict(), "hist": hist}, f"{out}/rank{dist.get_rank()}.pt")
    dist.destroy_process_group()
""")


@pytest.mark.parametrize("offline_teacher", [False, True], ids=["plain", "offline-teacher"])
def test_ddp_two_cpu_processes_agree(tiny_root, tmp_path, offline_teacher):
    """Two processes end with the same weights, also with --teacher-offline (rank 0 computes the held answers,
    behind a barrier, and rank 1 reads them)."""
    teacher = []
    if offline_teacher:
        teacher = [str(train(_cfg(tiny_root, tmp_path / "teacher", epochs=1)) / "best.pt")]
        tmp_path = tmp_path / "run"
        tmp_path.mkdir()
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        str(script),
        str(tiny_root),
        str(tmp_path),
        *teacher,
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in (0, 1))
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    assert a["hist"][-1]["train_loss"] < a["hist"][0]["train_loss"]
    assert (tmp_path / "best.pt").is_file() and len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "teacher_targets.pt").is_file() == offline_teacher
    assert unwrap  # imported for the script's API


def test_existing_run_is_never_overwritten(tiny_root, tmp_path):
    out = train(_cfg(tiny_root, tmp_path / "run", epochs=1))
    before = (out / "best.pt").read_bytes()
    with pytest.raises(FileExistsError, match="last.pt: this run folder already holds a training run"):
        train(_cfg(tiny_root, tmp_path / "run", epochs=1))
    assert (out / "best.pt").read_bytes() == before
    train(_cfg(tiny_root, tmp_path / "run", epochs=2), resume=True)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_init_from_checkpoint_and_logit_adjusted_training(tiny_root, tmp_path):
    first = train(_cfg(tiny_root, tmp_path / "a", epochs=2))
    cfg = _cfg(tiny_root, tmp_path / "b", epochs=1, init=str(first / "best.pt"), loss="logit_adjusted", lr=1e-9)
    t = Trainer(cfg)
    start = load_checkpoint(first / "best.pt")["state_dict"]
    assert all(torch.equal(v, start[k]) for k, v in t.model.state_dict().items())
    t.fit()
    assert load_checkpoint(tmp_path / "b" / "best.pt")["val_metrics"]["accuracy"] >= 0.9  # kept what it knew
    with pytest.raises(CheckpointError, match="fernet"):
        Trainer(_cfg(tiny_root, tmp_path / "c", model="fernet", init=str(first / "best.pt")))
    with pytest.raises(CheckpointError, match="input"):
        Trainer(_cfg(tiny_root, tmp_path / "d", channels=3, init=str(first / "best.pt")))
    # another input size: a globally pooled net starts from the same weights; a net whose shapes depend on it fails
    bigger = Trainer(_cfg(tiny_root, tmp_path / "e", image_size=48, init=str(first / "best.pt")))
    assert bigger.pre.image_size == 48
    assert all(torch.equal(v, start[k]) for k, v in bigger.model.state_dict().items())
    cnn = train(_cfg(tiny_root, tmp_path / "f", model="paper_cnn", epochs=1))
    with pytest.raises(CheckpointError, match="do not fit this run's model"):
        Trainer(_cfg(tiny_root, tmp_path / "g", model="paper_cnn", image_size=64, init=str(cnn / "best.pt")))


def test_init_from_a_checkpoint_of_more_classes_answers_as_it_did_in_the_runs_classes(tiny_root, tmp_path):
    # an 8-class net (the common label space) starts a 7-class RAF-DB run, as faceres_v2 starts a RAF-DB fine-tune
    first = train(_cfg(tiny_root, tmp_path / "a", epochs=1, channels=3))
    ckpt = load_checkpoint(first / "best.pt")
    raf, _ = make_rafdb(tmp_path / "raf", "kaggle")
    t = Trainer(_cfg(raf, tmp_path / "b", dataset="rafdb", channels=3, epochs=1, init=str(first / "best.pt")))
    assert len(ckpt["classes"]) == 8 and len(t.classes) == 7 and "contempt" not in t.classes
    orig, _ = build_from_checkpoint(ckpt)
    x = torch.randn(5, 3, 32, 32)
    t.model.eval()
    with torch.no_grad():
        want = orig(x)[:, [list(ckpt["classes"]).index(c) for c in t.classes]]
        assert torch.allclose(t.model(x), want, atol=1e-6)
    t.fit()
    # the other way round: a 7-class net cannot start a run that has a class it never answered
    with pytest.raises(CheckpointError, match="lack this run's \\['contempt'\\]"):
        Trainer(_cfg(tiny_root, tmp_path / "c", channels=3, init=str(tmp_path / "b" / "best.pt")))


def test_class_rows_picks_the_rows_of_the_new_classes_in_their_order():
    from emolens.training.finetune import class_rows

    state = {"body.w": torch.ones(4, 2), "fc.weight": torch.arange(8.0).view(4, 2), "fc.bias": torch.arange(4.0)}
    target = {"body.w": torch.zeros(4, 2), "fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}
    out = class_rows(state, target, [3, 1])
    assert out["fc.weight"].tolist() == [[6.0, 7.0], [2.0, 3.0]] and out["fc.bias"].tolist() == [3.0, 1.0]
    assert out["body.w"] is state["body.w"]  # same shape as the target's: not a class-indexed tensor


def test_rebalance_folds_the_chosen_prior_shift_into_the_model(tiny_root, tmp_path, monkeypatch):
    import numpy as np

    from emolens.checkpoint import folded_tau
    from emolens.evaluation.prior import prior_shift_table, rebalance

    # hand-made: two classes, prior 0.9/0.1; class-1 items score slightly below class 0 until tau < 0
    lp = np.log(np.array([[0.6, 0.4], [0.55, 0.45], [0.9, 0.1], [0.8, 0.2]]))
    table = prior_shift_table(lp, np.array([1, 1, 0, 0]), np.log([0.9, 0.1]), ["a", "b"], taus=(0.0, -0.2))
    assert [r["balanced_accuracy"] for r in table] == [0.5, 1.0]

    run = train(_cfg(tiny_root, tmp_path / "run", epochs=2))
    before = load_checkpoint(run / "best.pt")
    assert before["train_counts"] == [30, 30, 30, 0, 0, 0, 30, 0]  # neutral, happy, sad, angry
    r = rebalance(run / "best.pt", "folder", tiny_root, tmp_path / "rb.pt", metric="balanced_accuracy", progress=False)
    after = load_checkpoint(tmp_path / "rb.pt")
    counts = np.asarray(after["train_counts"], float)
    shift = r["tau"] * np.log(np.maximum(counts, 0.5) / counts.sum())
    assert np.allclose(
        after["state_dict"]["classifier.bias"] - before["state_dict"]["classifier.bias"], shift, atol=1e-5
    )
    assert after["prior_shift"]["tau"] == r["tau"] and len(after["prior_shift"]["table"]) == len(r["table"])
    # the corrected checkpoint really scores what the table promised for the chosen tau
    chosen = next(row for row in r["table"] if row["tau"] == r["tau"])
    m = evaluate(tmp_path / "rb.pt", "folder", tiny_root, "val", progress=False)
    assert m["balanced_accuracy"] == pytest.approx(chosen["balanced_accuracy"], abs=1e-4)
    # rebalancing again adds to the shift; folded_tau is the total, which undoes it exactly
    r2 = rebalance(tmp_path / "rb.pt", "folder", tiny_root, tmp_path / "rb2.pt", metric="accuracy", progress=False)
    again = load_checkpoint(tmp_path / "rb2.pt")
    total = folded_tau(again)
    assert total == pytest.approx(r["tau"] + r2["tau"]) and folded_tau(before) == 0.0
    log_prior = np.log(np.maximum(counts, 0.5) / counts.sum())
    assert np.allclose(
        again["state_dict"]["classifier.bias"].numpy() - total * log_prior,
        before["state_dict"]["classifier.bias"].numpy(),
        atol=1e-5,
    )
    # a given tau is folded as it is: minus the total takes the shift out again (through the CLI too)
    rc = subprocess.run(
        [sys.executable, "-m", "emolens.cli", "rebalance", str(tmp_path / "rb2.pt"), "--dataset", "folder"]
        + ["--root", str(tiny_root), "--tau", str(-total), "--out", str(tmp_path / "raw.pt")],
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 0, rc.stderr
    assert "as given" in rc.stdout
    # floors: what the split cannot reach is an error that says what it can; a reachable floor is recorded
    with pytest.raises(ValueError, match="no prior shift reaches balanced accuracy >= 1.01 with every recall >= 0.2"):
        rebalance(run / "best.pt", "folder", tiny_root, tmp_path / "never.pt", metric="accuracy", min_bal=1.01,
                  min_recall=0.2)  # fmt: skip
    assert not (tmp_path / "never.pt").exists()
    rc = subprocess.run(  # (a floor above 1 is refused as the flag is parsed)
        [sys.executable, "-m", "emolens.cli", "rebalance", str(run / "best.pt"), "--dataset", "folder"]
        + ["--root", str(tiny_root), "--min-balanced-accuracy", "1.01", "--out", str(tmp_path / "never.pt")],
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 2 and rc.stderr == (
        "emolens rebalance: error: --min-balanced-accuracy must be >= 0 and <= 1 (got 1.01)\n"
    )
    r3 = rebalance(run / "best.pt", "folder", tiny_root, tmp_path / "fl.pt", metric="accuracy", min_recall=0.5)
    assert next(row for row in r3["table"] if row["tau"] == r3["tau"])["min_recall"] >= 0.5
    assert load_checkpoint(tmp_path / "fl.pt")["prior_shift"]["floors"] == {"balanced_accuracy": 0.0, "min_recall": 0.5}
    raw = load_checkpoint(tmp_path / "raw.pt")
    assert folded_tau(raw) == pytest.approx(0.0, abs=1e-9) and raw["prior_shift"]["metric"] == "fixed"
    assert torch.allclose(raw["state_dict"]["classifier.bias"], before["state_dict"]["classifier.bias"], atol=1e-5)
    # fixed per-class offsets: folded as given, recorded, and the table's "offset" row is what the model now scores
    # (a large neutral offset makes every face neutral: recall 1 for neutral, 0 for the other three classes)
    reads, real_load = [], checkpoint_module.load_checkpoint
    monkeypatch.setattr(
        checkpoint_module, "load_checkpoint", lambda p, *a, **k: reads.append(p) or real_load(p, *a, **k)
    )
    ro = rebalance(run / "best.pt", "folder", tiny_root, tmp_path / "off.pt", offset={"neutral": 50.0}, progress=False)
    monkeypatch.undo()
    assert reads == [run / "best.pt"]  # the offset's class check and the validation run share one read
    off = load_checkpoint(tmp_path / "off.pt")
    moved = off["state_dict"]["classifier.bias"] - before["state_dict"]["classifier.bias"]
    assert moved.tolist() == pytest.approx([50.0] + [0.0] * 7, abs=1e-4)
    assert off["prior_shift"]["offset"] == {"neutral": 50.0} and folded_tau(off) == 0.0
    assert [row["offset"] for row in ro["table"]] == [False, True]
    assert ro["table"][1]["balanced_accuracy"] == pytest.approx(0.25) and ro["table"][1]["min_recall"] == 0.0
    m = evaluate(tmp_path / "off.pt", "folder", tiny_root, "val", progress=False)
    assert m["per_class"]["neutral"]["recall"] == 1.0 and m["balanced_accuracy"] == pytest.approx(0.25)
    assert ro["table"][0]["balanced_accuracy"] == pytest.approx(
        evaluate(run / "best.pt", "folder", tiny_root, "val", progress=False)["balanced_accuracy"], abs=1e-4
    )
    # the CLI folds the same weights and prints the two rows it scored
    rc = subprocess.run(
        [sys.executable, "-m", "emolens.cli", "rebalance", str(run / "best.pt"), "--dataset", "folder"]
        + ["--root", str(tiny_root), "--offset", "neutral=50", "--out", str(tmp_path / "off_cli.pt")],
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 0, rc.stderr
    rows = [line.split() for line in rc.stdout.splitlines() if line.startswith(("offset", "as it was"))]
    columns = ("accuracy", "balanced_accuracy", "macro_f1", "min_recall")
    printed = {row[0]: dict(zip(columns, row[-4:], strict=True)) for row in rows}
    assert printed["as"]["balanced_accuracy"] == f"{ro['table'][0]['balanced_accuracy']:.4f}", rc.stdout
    assert printed["offset"]["balanced_accuracy"] == "0.2500" and printed["offset"]["min_recall"] == "0.0000"
    assert "logit offsets neutral +50, as given" in rc.stdout
    cli = load_checkpoint(tmp_path / "off_cli.pt")
    assert torch.equal(cli["state_dict"]["classifier.bias"], off["state_dict"]["classifier.bias"])
    assert cli["prior_shift"]["offset"] == {"neutral": 50.0}
    with pytest.raises(ValueError, match="offset for unknown class 'calm'"):  # (before the split is read)
        rebalance(run / "best.pt", "folder", tmp_path / "no-such-root", tmp_path / "x.pt", offset={"calm": 1.0})
    for flags, message in (
        (["--offset", "neutral"], "--offset takes CLASS=VALUE with a number (got 'neutral')"),
        (["--offset", "neutral=0.2", "--tau", "0.1"], "--offset and --tau are two corrections: give one"),
    ):
        rc = subprocess.run(
            [sys.executable, "-m", "emolens.cli", "rebalance", str(run / "best.pt"), "--dataset", "folder"]
            + ["--root", str(tiny_root), "--out", str(tmp_path / "x.pt"), *flags],
            capture_output=True,
            text=True,
        )
        assert rc.returncode == 2 and message in rc.stderr, rc.stderr
    assert not (tmp_path / "x.pt").exists()


def test_rebalance_scores_an_eight_class_model_on_a_seven_class_set_as_the_user_sees_it(tiny_root, tmp_path):
    """RAF-DB has no contempt: rebalancing an 8-class model on it works, and a contempt answer counts as wrong
    (an offset that makes every answer contempt scores 0, where masking contempt out would hide it)."""
    import numpy as np

    from emolens.evaluation.prior import rebalance, split_log_probs

    run = train(_cfg(tiny_root, tmp_path / "run", epochs=1, channels=3))
    raf, rows = make_rafdb(tmp_path / "raf", "kaggle")
    got = split_log_probs(run / "best.pt", "rafdb", raf, "test", progress=False)
    assert got["classes"] == load_checkpoint(run / "best.pt")["classes"] and len(got["classes"]) == 8
    codes = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
    want = sorted(got["classes"].index(codes[code]) for _, code in rows["test"])
    assert sorted(got["labels"].tolist()) == want  # RAF-DB's labels, as the model's class indices
    r = rebalance(run / "best.pt", "rafdb", raf, tmp_path / "c.pt", split="test", offset={"contempt": 50.0},
                  progress=False)  # fmt: skip
    plain = float(np.mean(got["log_probs"].argmax(1) == got["labels"]))
    assert r["table"][0]["accuracy"] == pytest.approx(plain, abs=1e-4)
    assert r["table"][1]["accuracy"] == 0.0 and r["table"][1]["balanced_accuracy"] == 0.0


def test_ensemble_of_runs_is_one_model_and_rebalances(tiny_root, tmp_path):
    import numpy as np

    from emolens.checkpoint import build_from_checkpoint, ensemble_checkpoints, save_atomic
    from emolens.evaluation.prior import rebalance

    a = train(_cfg(tiny_root, tmp_path / "a", epochs=1))
    b = train(_cfg(tiny_root, tmp_path / "b", epochs=1, seed=1))
    ens = ensemble_checkpoints([a / "best.pt", b / "best.pt"])
    assert ens["model"] == "fernet_tiny_x2" and "optimizer" not in ens
    save_atomic(ens, tmp_path / "e.pt")
    from emolens.cli import main

    assert main(["ensemble", str(a / "best.pt"), str(b / "best.pt"), "--out", str(tmp_path / "cli.pt")]) == 0
    assert load_checkpoint(tmp_path / "cli.pt")["model"] == "fernet_tiny_x2"
    model, _ = build_from_checkpoint(load_checkpoint(tmp_path / "e.pt"))
    ma, _ = build_from_checkpoint(load_checkpoint(a / "best.pt"))
    mb, _ = build_from_checkpoint(load_checkpoint(b / "best.pt"))
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        want = (ma(x).log_softmax(1) + mb(x).log_softmax(1)) / 2
        assert torch.allclose(model(x), want, atol=1e-5)
    r = rebalance(tmp_path / "e.pt", "folder", tiny_root, tmp_path / "r.pt", metric="accuracy", progress=False)
    bias = load_checkpoint(tmp_path / "r.pt")["state_dict"]["logit_bias"]
    counts = np.asarray(ens["train_counts"], float)
    assert np.allclose(bias.numpy(), r["tau"] * np.log(np.maximum(counts, 0.5) / counts.sum()), atol=1e-6)
    other = dict(load_checkpoint(b / "best.pt"))
    other["classes"] = other["classes"][::-1]
    save_atomic(other, tmp_path / "reversed.pt")
    with pytest.raises(CheckpointError, match="classes"):
        ensemble_checkpoints([a / "best.pt", tmp_path / "reversed.pt"])


class _Evil:
    """A pickle payload that would create a file when unpickled with weights_only=False."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "cmd",
    [
        ["predict", "{img}", "--checkpoint", "{evil}", "--detector", "haar"],
        ["live", "--source", "sample", "--checkpoint", "{evil}", "--detector", "haar", "--max-frames", "2"],
        ["evaluate", "{evil}", "--dataset", "folder", "--root", "{root}"],
        ["export", "--checkpoint", "{evil}", "--output", "{tmp}/x.onnx"],
        ["rebalance", "{evil}", "--dataset", "folder", "--root", "{root}", "--out", "{tmp}/r.pt"],
        ["train", "--resume", "--out", "{tmp}/run"],
        ["serve", "--checkpoint", "{evil}", "--data-dir", "{tmp}/srv", "--detector", "haar"],
    ],
)
def test_crafted_checkpoint_is_refused_everywhere(cmd, tiny_root, tmp_path, capsys):
    import cv2

    from emolens.cli import main
    from emolens.live.synthetic import sample_face

    marker = tmp_path / "pwned"
    evil = {"format": "emolens-checkpoint/1", "model": "fernet", "x": _Evil(marker)}
    torch.save(evil, tmp_path / "evil.pt")
    (tmp_path / "run").mkdir()
    torch.save(evil, tmp_path / "run" / "last.pt")
    _cfg(tiny_root, tmp_path / "run").save(tmp_path / "run" / "config.json")
    cv2.imwrite(str(tmp_path / "a.jpg"), sample_face())
    fill = {"{img}": str(tmp_path / "a.jpg"), "{evil}": str(tmp_path / "evil.pt"), "{root}": str(tiny_root)}
    fill["{tmp}"] = str(tmp_path)
    args = [fill.get(a, a) for a in cmd]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line]
    assert len(err) == 1 and "refused" in err[0] and "posix.system" in err[0], err
    assert not marker.exists()


def test_device_batches_equal_the_data_loaders(tiny_root, tmp_path):
    """--augment-on-device serves the same faces, labels and soft targets, in the same order, as the DataLoader."""
    cfg = dict(augment="none", balanced_sampler=True, epochs=2)
    loader = Trainer(_cfg(tiny_root, tmp_path / "a", **cfg))
    held = Trainer(_cfg(tiny_root, tmp_path / "b", augment_on_device=True, **cfg))
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        held.sampler.set_epoch(epoch)
        a, b = list(loader.train_loader), list(held._device_batches())
        assert len(a) == len(b) == len(held.train_loader)
        for (xa, ya, sa), (xb, yb, sb) in zip(a, b, strict=True):
            assert torch.allclose(xa, xb, atol=1e-6) and torch.equal(ya, yb) and torch.equal(sa, sb)


def test_training_with_augmentation_on_device_learns_and_resumes(tiny_root, tmp_path):
    straight = Trainer(_cfg(tiny_root, tmp_path / "a", epochs=4, augment="default", augment_on_device=True))
    straight.fit()
    assert straight.history[-1]["val_accuracy"] >= 0.9
    first = Trainer(_cfg(tiny_root, tmp_path / "b", epochs=4, augment="default", augment_on_device=True))
    first.fit(stop_after=2)
    resumed = Trainer(_cfg(tiny_root, tmp_path / "b", epochs=4, augment="default", augment_on_device=True))
    assert resumed.resume()
    resumed.fit()  # augmentation draws are a function of the epoch: the resumed run ends with the same weights
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_native_bf16_only_where_it_pays_off():
    assert native_bf16(torch.device("cuda"))
    assert not native_bf16(torch.device("meta"))
    amx = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert native_bf16(torch.device("cpu")) == amx


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16 (AMX / AVX512-BF16)")
@pytest.mark.parametrize("amp", [True, False])
def test_amp_trains_in_bf16_on_a_cpu_with_native_bf16(tiny_root, tmp_path, amp):
    """``amp`` (the default) runs the training forward pass in bf16 on such a CPU and still learns; ``--no-amp``
    keeps float32. Validation and checkpoints stay float32 either way."""
    trainer = Trainer(_cfg(tiny_root, tmp_path / "run", epochs=4, amp=amp))
    seen: set[torch.dtype] = set()
    trainer.model.register_forward_hook(lambda m, i, o: seen.add(o.dtype) if m.training else None)
    trainer.fit()
    assert seen == {torch.bfloat16 if amp else torch.float32}
    assert trainer.history[-1]["val_accuracy"] >= 0.9
    assert {v.dtype for v in trainer.model.state_dict().values() if v.is_floating_point()} == {torch.float32}


@pytest.mark.parametrize(
    ("views", "offline", "mixup"),
    [("single", False, 0.0), ("flip", False, 0.0), ("shift-flip", True, 0.0), ("single", True, 0.4)],
    ids=["online", "flip", "offline", "offline-mixup"],
)
def test_distillation_learns_the_teachers_answers_not_the_labels(tiny_root, tmp_path, views, offline, mixup):
    """kd_weight=1: the student learns only from the teacher. A teacher whose answers are the labels shifted by
    one class yields a student that agrees with the teacher and not with the labels, whether the teacher answers
    every batch (over one view or two) or once per face before training (``teacher_offline``)."""
    first = train(_cfg(tiny_root, tmp_path / "t", epochs=4))
    ck = load_checkpoint(first / "best.pt")
    present = [0, 1, 2, 6]  # neutral, happiness, sadness, anger: the tiny set's classes
    for name in ("classifier.weight", "classifier.bias"):
        w = ck["state_dict"][name].clone()
        w[present] = ck["state_dict"][name][present[1:] + present[:1]]  # answers the next present class
        ck["state_dict"][name] = w
    torch.save(ck, tmp_path / "shifted.pt")
    kw = dict(epochs=8, augment="none", teacher=str(tmp_path / "shifted.pt"), kd_weight=1.0, kd_temperature=1.0)
    kw.update(mixup=mixup)  # mixed images get mixed held answers
    student = Trainer(_cfg(tiny_root, tmp_path / "s", teacher_views=views, teacher_offline=offline, **kw))
    student.fit()
    teacher, _ = build_from_checkpoint(ck)
    probs, labels, _ = predict_loader(student.model, student.val_loader, torch.device("cpu"))
    teacher_probs, _, _ = predict_loader(teacher, student.val_loader, torch.device("cpu"))
    agree = (probs.argmax(1) == teacher_probs.argmax(1)).mean()
    assert (teacher_probs.argmax(1) == labels).mean() < 0.1  # the teacher is wrong by construction
    assert agree >= 0.9 and (probs.argmax(1) == labels).mean() < 0.1
    held = tmp_path / "s" / "teacher_targets.pt"
    assert held.is_file() == offline
    if offline:  # one answer per training face, and the next run with the same teacher reuses them
        targets = torch.load(held, weights_only=True)["log_probs"]
        assert targets.shape == (len(student.train_full), 8)
        assert torch.allclose(targets.exp().sum(1), torch.ones(len(targets)), atol=1e-4)
        again = Trainer(_cfg(tiny_root, tmp_path / "s", teacher_views=views, teacher_offline=True, **kw))
        assert torch.equal(again.train_ds.column, targets)
    with pytest.raises(ValueError, match="set teacher"):
        _cfg(tiny_root, tmp_path / "y", teacher_offline=True).validate()


def test_a_teacher_with_another_input_reads_the_students_faces_resized(tiny_root, tmp_path):
    """A 32 px teacher of a 48 px student answers each of the student's faces as it answers that face resized
    to 32 px the loaders' way (cv2, area when shrinking), also when it answers once before training
    (``teacher_offline``); a colour teacher cannot be fed a grey student's faces."""
    import cv2
    import numpy as np

    t32 = train(_cfg(tiny_root, tmp_path / "t", epochs=1)) / "best.pt"
    kw = dict(image_size=48, epochs=1, teacher=str(t32), kd_weight=0.5)
    student = Trainer(_cfg(tiny_root, tmp_path / "s", **kw))
    teacher, _ = build_from_checkpoint(load_checkpoint(t32))
    x, _, _ = next(iter(student.val_loader))  # 48 px, normalised with mean 0.5, std 0.25
    pixels = (x[:, 0] * 0.25 + 0.5).numpy()
    small = np.stack([cv2.resize(p, (32, 32), interpolation=cv2.INTER_AREA) for p in pixels])
    with torch.no_grad():
        want = teacher.eval()((torch.from_numpy(small)[:, None] - 0.5) / 0.25)
        got = student.teacher(x)
    assert x.shape[-1] == 48 and torch.allclose(got, want, atol=1e-4)
    offline = Trainer(_cfg(tiny_root, tmp_path / "o", teacher_offline=True, **kw))
    offline.fit()  # the held answers come from the adapted teacher
    held = torch.load(tmp_path / "o" / "teacher_targets.pt", weights_only=True)["log_probs"]
    assert held.shape == (len(offline.train_full), 8)
    colour = train(_cfg(tiny_root, tmp_path / "c", epochs=1, channels=3)) / "best.pt"
    with pytest.raises(CheckpointError, match="cannot be made from this run's"):
        Trainer(_cfg(tiny_root, tmp_path / "x", teacher=str(colour)))


def test_teacher_for_routes_one_dataset_of_a_mix_to_its_own_teacher(tiny_root, tmp_path):
    """``--teacher-for folder2=B``: the faces of the mix's second dataset hold B's answers, the first's the
    ``--teacher``'s, each as that teacher gives them alone."""
    t = train(_cfg(tiny_root, tmp_path / "t", epochs=1)) / "best.pt"
    ck = load_checkpoint(t)
    ck["state_dict"]["classifier.bias"] = ck["state_dict"]["classifier.bias"] + 50 * torch.eye(8)[7]  # contempt
    torch.save(ck, tmp_path / "contempt.pt")
    kw = dict(epochs=1, extra_data=[f"folder={tiny_root}"], teacher=str(t), teacher_offline=True)
    routed = Trainer(_cfg(tiny_root, tmp_path / "s", teacher_for=[f"folder2={tmp_path / 'contempt.pt'}"], **kw))
    plain = Trainer(_cfg(tiny_root, tmp_path / "p", **kw))
    parts = routed.train_full.parts
    assert [name for name, _, _ in parts] == ["folder", "folder2"]
    first, second = (slice(a, b) for _, a, b in parts)
    answers = routed.train_ds.column.argmax(1)
    assert (answers[second] == 7).all() and not (answers[first] == 7).any()
    assert torch.allclose(routed.train_ds.column[first], plain.train_ds.column[first], atol=1e-5)


def test_kd_balance_weighs_each_faces_distillation_by_its_class_in_its_own_dataset(tiny_root, tmp_path, monkeypatch):
    """--kd-balance 0.5: each face's distillation term weighs sqrt(N / (C n_c)), with N and n_c counted in the
    face's own dataset of the mix (a class rare in one dataset weighs more there than where it is common)."""
    import emolens.training.trainer as trainer_module

    t = train(_cfg(tiny_root, tmp_path / "t", epochs=1)) / "best.pt"
    skew = make_folder_dataset(tmp_path / "skew")
    for f in sorted((skew / "happy").iterdir())[4:]:
        f.unlink()  # happy: 4 faces of 44 in the second dataset, a third in the first
    seen: list[torch.Tensor] = []
    real = trainer_module.distillation_loss
    monkeypatch.setattr(
        trainer_module, "distillation_loss", lambda s, te, temp, w=None: seen.append(w.cpu()) or real(s, te, temp, w)
    )
    cfg = _cfg(tiny_root, tmp_path / "s", epochs=1, batch_size=1, extra_data=[f"folder={skew}"], teacher=str(t),
               teacher_offline=True, kd_balance=0.5)  # fmt: skip
    tr = Trainer(cfg)
    tr.train_epoch(0)
    labels, n_cls = tr.train_labels, len(tr.classes)
    expected = []
    for _, a, b in tr.train_full.parts:
        counts = np.bincount(labels[a:b], minlength=n_cls)
        expected += [(len(labels[a:b]) / (n_cls * counts[y])) ** 0.5 for y in labels[a:b]]
    assert len(seen) == len(expected)
    assert torch.cat(seen).sort().values.numpy() == pytest.approx(np.sort(expected), rel=1e-5)
    happy = tr.classes.index("happiness")
    assert tr.part_kd_weight[1, happy] > 1.5 * tr.part_kd_weight[0, happy]
    with pytest.raises(ValueError, match="kd_balance weighs the distillation from a teacher"):
        TrainConfig(root="x", kd_balance=0.5).validate()


def test_head_warmup_is_refused_under_ddp_before_any_process_group(tiny_root, tmp_path, monkeypatch):
    """DDP's set of trained parameters must not change between epochs, as a head-only warm-up would make it."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = _cfg(tiny_root, tmp_path / "run", epochs=2, head_warmup_epochs=1)
    with pytest.raises(ValueError, match="head_warmup_epochs is not supported with several processes"):
        Trainer(cfg)


def test_per_set_metrics_weigh_each_dataset_alike():
    """Set A: 90 faces of class 0 right, 10 of class 1 wrong (balanced 0.5); set B: 10 faces, all right (1.0).
    Pooled, class 0 is all right and class 1 has 10 of 15: balanced 0.833. Per set: mean 0.75."""
    import numpy as np

    labels = np.array([0] * 90 + [1] * 10 + [0] * 5 + [1] * 5)
    preds = np.array([0] * 90 + [0] * 10 + [0] * 5 + [1] * 5)
    parts = np.array(["a"] * 100 + ["b"] * 10, dtype=object)
    m = per_set_metrics(labels, preds, parts, ["x", "y"])
    assert list(m) == ["a", "b"] and m["a"]["n"] == 100 and m["b"]["n"] == 10
    assert m["a"]["balanced_accuracy"] == pytest.approx(0.5) and m["a"]["accuracy"] == pytest.approx(0.9)
    assert m["b"]["balanced_accuracy"] == pytest.approx(1.0)


def test_a_mix_validates_each_dataset_and_selects_by_their_mean(tiny_root, tmp_path):
    """--extra-data: every epoch's row holds each validation set's scores; --select-metric
    set_balanced_accuracy picks the epoch by their mean, which best.pt records."""
    out = train(
        _cfg(
            tiny_root,
            tmp_path / "run",
            epochs=2,
            extra_data=[f"folder={tiny_root}*2"],
            select_metric="set_balanced_accuracy",
        )
    )
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        sets = r["val_per_set"]
        assert list(sets) == ["folder", "folder2"] and sets["folder"]["n"] == sets["folder2"]["n"] > 0
        mean = (sets["folder"]["balanced_accuracy"] + sets["folder2"]["balanced_accuracy"]) / 2
        assert r["val_set_balanced_accuracy"] == pytest.approx(mean)
    best = max(rows, key=lambda r: r["val_set_balanced_accuracy"])
    ck = load_checkpoint(out / "best.pt")
    assert ck["epoch"] == best["epoch"]
    assert ck["val_metrics"]["set_balanced_accuracy"] == pytest.approx(best["val_set_balanced_accuracy"])


def test_logit_adjustment_by_each_faces_own_dataset_prior(tiny_root, tmp_path):
    """--la-prior dataset: a face is adjusted by its own dataset's class prior, not the mix's; the rows of the
    prior table are the datasets' log priors, and the batch loss is the logit-adjusted loss with each face's row."""
    from emolens.training.losses import log_prior, logit_adjusted_cross_entropy
    from emolens.training.trainer import Trainer

    small = make_folder_dataset(tmp_path / "b", classes=("neutral", "happy"), per_class=12, size=32, split_dirs=True)
    cfg = _cfg(tiny_root, tmp_path / "run", epochs=1, loss="logit_adjusted", la_prior="dataset",
               extra_data=[f"folder={small}"])  # fmt: skip
    t = Trainer(cfg)
    parts = t.train_ds.column.numpy()
    assert set(parts.tolist()) == {0, 1}
    for k in (0, 1):
        counts = np.bincount(t.train_labels[parts == k], minlength=8)
        assert torch.allclose(t.part_log_prior[k], log_prior(counts).to(t.part_log_prior))
    assert not torch.allclose(t.part_log_prior[0], t.part_log_prior[1])  # 4 classes vs 2
    x, y, soft, part = next(iter(t.train_loader))
    logits = torch.randn(len(y), 8)
    want = logit_adjusted_cross_entropy(logits, y, t.part_log_prior[part], 1.0)
    assert torch.allclose(t._loss(logits, y, None, None, t.part_log_prior[part]), want)
    assert not torch.allclose(want, logit_adjusted_cross_entropy(logits, y, t.log_prior, 1.0))
    rows = t.fit()
    assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"])


def test_average_of_checkpoints_is_one_model_with_the_mean_weights(tiny_root, tmp_path):
    """``emolens ensemble --average``: the epochs of a run as one model of the same size whose every weight is the
    mean of theirs (a known average); checkpoints of different models are refused."""
    from emolens.checkpoint import average_checkpoints
    from emolens.cli import main

    # (two seeds here, to make the two sets of weights differ everywhere; in use, epochs of one run)
    paths = [
        train(_cfg(tiny_root, tmp_path / name, epochs=1, seed=seed)) / "best.pt" for name, seed in (("a", 0), ("b", 1))
    ]
    first, second = (load_checkpoint(p)["state_dict"] for p in paths)
    assert main(["ensemble", "--average", *map(str, paths), "--out", str(tmp_path / "avg.pt")]) == 0
    avg = load_checkpoint(tmp_path / "avg.pt")
    assert avg["model"] == "fernet_tiny" and "optimizer" not in avg and avg["averaged"] == [str(p) for p in paths]
    for k, v in avg["state_dict"].items():
        if v.is_floating_point():
            assert torch.allclose(v, (first[k] + second[k]) / 2, atol=1e-6), k
    model, _ = build_from_checkpoint(avg)  # an ordinary checkpoint: it builds and answers
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 8)
    cnn = train(_cfg(tiny_root, tmp_path / "c", model="paper_cnn", epochs=1))
    with pytest.raises(CheckpointError, match="model"):
        average_checkpoints([paths[0], cnn / "best.pt"])


def test_ensemble_of_different_models_feeds_each_its_own_input(tmp_path):
    """A 48 px grey net and a 64 px colour net as one model: input 64 px RGB, each member on its own input;
    float16 storage halves the file; the ensemble exports to ONNX with the same answers."""
    from emolens import models
    from emolens.checkpoint import ensemble_checkpoints, model_payload, save_atomic
    from emolens.cli import main
    from emolens.export import export_onnx
    from emolens.labels import CLASSES
    from emolens.models import InputAdapter
    from emolens.transforms import Preprocess

    torch.manual_seed(0)
    grey_pre, rgb_pre = Preprocess.for_channels(48, 1), Preprocess.for_channels(64, 3)
    grey = models.create("fernet_tiny", in_channels=1, image_size=48).eval()
    rgb = models.create("fernet_tiny", in_channels=3, image_size=64).eval()
    save_atomic(model_payload(grey, "fernet_tiny", CLASSES, grey_pre, train_counts=[1.0] * 8), tmp_path / "g.pt")
    save_atomic(model_payload(rgb, "fernet_tiny", CLASSES, rgb_pre, train_counts=[1.0] * 8), tmp_path / "c.pt")

    ens = ensemble_checkpoints([tmp_path / "g.pt", tmp_path / "c.pt"])
    assert ens["model"] == "ensemble" and ens["preprocess"] == rgb_pre.to_dict()
    assert [m["preprocess"]["channels"] for m in ens["member_specs"]] == [1, 3]
    model, pre = build_from_checkpoint(ens)
    assert pre == rgb_pre
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want = (grey(InputAdapter(rgb_pre, grey_pre)(x)).log_softmax(1) + rgb(x).log_softmax(1)) / 2
        assert torch.allclose(model(x), want, atol=1e-5)

    assert main(["ensemble", str(tmp_path / "g.pt"), str(tmp_path / "c.pt"), "--out", str(tmp_path / "f.pt")]) == 0
    argv = ["ensemble", str(tmp_path / "g.pt"), str(tmp_path / "c.pt"), "--half", "--out", str(tmp_path / "h.pt")]
    assert main(argv) == 0
    half = load_checkpoint(tmp_path / "h.pt")
    assert all(v.dtype == torch.float16 for v in half["state_dict"].values() if v.is_floating_point())
    assert (tmp_path / "h.pt").stat().st_size < 0.6 * (tmp_path / "f.pt").stat().st_size
    stored, _ = build_from_checkpoint(half)
    with torch.no_grad():
        assert (stored(x).softmax(1) - model(x).softmax(1)).abs().max() < 5e-3
    pytest.importorskip("onnxruntime")
    info = export_onnx(tmp_path / "f.pt", tmp_path / "e.onnx")
    assert info["model"] == "ensemble" and info["max_abs_diff"] < 1e-4


def test_a_single_epoch_learning_curve_draws_every_series_as_visible_points():
    from emolens.evaluation.plots import learning_curves_figure

    keys = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_balanced_accuracy", "val_macro_f1")
    fig = learning_curves_figure([{"epoch": 1, **dict.fromkeys(keys, 0.5)}])
    lines = [ln for ax in fig.axes for ln in ax.get_lines()]
    assert len(lines) == 6 and all(ln.get_marker() not in (None, "", "None", " ") for ln in lines)


def test_max_samples_decodes_only_the_faces_it_draws(tiny_root, tmp_path, monkeypatch):
    from emolens.data.base import FaceDataset

    loaded = []
    real = FaceDataset.load_face
    monkeypatch.setattr(FaceDataset, "load_face", lambda self, i: loaded.append(i) or real(self, i))
    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path / "cache"))
    train(_cfg(tiny_root, tmp_path / "run", epochs=1, max_samples=8, cache=True))
    # the 8 training and 8 validation faces drawn, not the whole tree (120 training faces) into a cache
    assert 0 < len(loaded) <= 16 and not list((tmp_path / "cache").glob("*.npy"))


def test_fine_tuning_on_an_affectnet_yolo_tree(tiny_root, tmp_path):
    from emolens.labels import CLASSES

    # a model of the common 8 classes fine-tuned on a small re-pack tree, with RAF-DB beside it in one label space
    first = train(_cfg(tiny_root, tmp_path / "a", epochs=1, channels=3))
    yolo = make_affectnet_yolo(tmp_path / "affectnet", per_class=6, dups=4)
    raf, _ = make_rafdb(tmp_path / "raf", "kaggle")
    cfg = _cfg(yolo, tmp_path / "b", dataset="affectnet", channels=3, epochs=2, init=str(first / "best.pt"))
    cfg.extra_data = [f"rafdb={raf}"]
    out = train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and set(rows[-1]["val_per_set"]) == {"affectnet", "rafdb"}
    ck = load_checkpoint(out / "best.pt", expect_classes=8)
    assert ck["classes"] == list(CLASSES)
    counts = ck["train_counts"]  # every AffectNet class reached training, contempt included
    assert all(c > 0 for c in counts) and counts[CLASSES.index("contempt")] >= 4


def test_evaluate_leaves_an_unreadable_image_out_instead_of_counting_its_neighbour_twice(tmp_path):
    """In this process and, through the CLI in a fresh one, with a loader worker (whose record of unreadable
    files never reaches the parent: the faces themselves are marked)."""
    from emolens.evaluation.evaluate import evaluate

    root = make_folder_dataset(tmp_path, classes=("neutral", "happy", "sad", "angry"), per_class=3, size=32,
                               split_dirs=True)  # fmt: skip
    bad = root / "test" / "angry" / "0.png"
    bad.write_bytes(b"not an image")
    ckpt = REPO / "src/emolens/weights/fernet_v3.pt"
    m = evaluate(ckpt, "folder", root, "test", progress=False)
    assert m["n"] == 11 and m["skipped_images"] == 1  # (replaced by the next face, 12 were scored)
    assert sum(map(sum, m["confusion"])) == 11 and sum(m["confusion"][m["classes"].index("anger")]) == 2
    # a fresh process, as a user runs it (forking loader workers from this long-lived test process is not)
    cmd = [sys.executable, "-m", "emolens.cli", "evaluate", str(ckpt), "--dataset", "folder", "--root", str(root),
           "--split", "test", "--workers", "1", "--out", str(tmp_path / "e")]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=300, capture_output=True)
    m1 = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert (m1["n"], m1["skipped_images"], m1["confusion"]) == (11, 1, m["confusion"])
