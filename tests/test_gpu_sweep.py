"""benchmarks/experiments/gpu_sweep.py: packed faces rebuild exactly the dataset and the faces emolens reads."""

import argparse
import importlib.util

import numpy as np
from conftest import REPO, shared_path

from emolens.data import open_dataset
from emolens.data.cache import cache_key


def _sweep():
    spec = importlib.util.spec_from_file_location("gpu_sweep", REPO / "benchmarks" / "experiments" / "gpu_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pack_then_unpack_gives_the_same_samples_and_faces(tmp_path):
    shared = shared_path("data").parent
    for k in ("ferplus", "ckplus", "sfew"):
        shared_path(f"data/{k}")
    sweep = _sweep()
    sweep.pack(argparse.Namespace(shared=str(shared), out=str(tmp_path / "data.npz")))
    roots = sweep.unpack(str(tmp_path / "data.npz"), tmp_path / "data", tmp_path / "cache")
    original = sweep._datasets(*(str(shared / "data" / k) for k in ("ferplus", "ckplus", "sfew")))
    rebuilt = sweep._datasets(*roots)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        a, b = original[split], rebuilt[split]
        assert len(a) == len(b) and np.array_equal(a.targets, b.targets)  # the same split (CK+ / SFEW too)
        assert all(np.array_equal(a.soft_target(i), b.soft_target(i)) for i in range(len(a)))
        cached = np.load(tmp_path / "cache" / f"{cache_key(b)}.npy", mmap_mode="r")
        for i in rng.choice(len(a), 300, replace=False):  # lossless: the very pixels the loader decodes
            assert np.array_equal(cached[i], a.load_face(int(i))), a.samples[i].name
    test = open_dataset("ckplus", roots[1], "test")  # held-out subjects listed too, as empty files
    assert len(test) == len(open_dataset("ckplus", shared / "data" / "ckplus", "test"))
