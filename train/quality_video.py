#!/usr/bin/env python3
"""Quality table of the moving-digit video models, sampled with this crate's CLI.

Rows (any subset, each a pack or checkpoint plus sampling flags): dense f32, sparse f32 at a fixed
grid, sparse f32 with timestep-wise pruning, sparse q8_0. For every row, over --per-class clips of
each class (chunk j of class K uses seed 1000 + 100 j + K in every row, so rows differ only by the
model):

- frame accuracy: the fraction of frames a frame classifier reads as the asked class (a frame
  with less ink than EMPTY_INK reads as no class; their fraction is `empty_frames`);
- consistency: the fraction of clips whose frames ALL read as the asked class;
- motion: the mean displacement of the digit's centroid (intensity-weighted) from the first to
  the last frame, and the mean over clips of the largest frame-to-frame centroid jump;
- FD: the Frechet distance between clip features of generated and held-out real clips, a clip's
  feature being its frames' classifier features AVERAGED over the frames (64-d);
- MACs per forward (`sparsedit flops`) and the sampler's GMACs per clip.

The frame classifier (quality.DigitNet) is trained on frames of real clips of the train split
(train/clips.py) and tested on frames of held-out clips made from the test split; the real rows
(`real (held-out)`) give the bars' reference values.

    python3 train/quality_video.py --dense D.gguf --sparse S.gguf [--per-class 50] [--steps 25 --sampler ddim]
    python3 train/quality_video.py --real-only      # the classifier and the real clips' row

Cached under train/runs/quality_video/ (git-ignored); run again to resume. Writes the table
between the video markers of docs/QUALITY.md and train/runs/quality_video/results.json.
"""

import argparse
import json
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import data as data_mod  # noqa: E402
import quality as Q  # noqa: E402
from clips import Clips, centroids  # noqa: E402

CACHE = os.path.join(HERE, "runs", "quality_video")
CLI = os.environ.get("SPARSEDIT") or os.path.join(ROOT, "target", "release", "sparsedit")
MARK_BEGIN, MARK_END = "<!-- video-quality:begin -->", "<!-- video-quality:end -->"


def frame_classifier(epochs, seed):
    """DigitNet on frames of real train-split clips; tested on held-out clips' frames."""
    path = os.path.join(CACHE, "frame_classifier.pt")
    if os.path.exists(path):
        ck = torch.load(path, map_location="cpu", weights_only=False)
        net = Q.DigitNet(ck["feat"])
        net.load_state_dict(ck["model"])
        Q.log(f"frame classifier: cached {path} (held-out frame accuracy {ck['test_acc']:.4f})")
        return net
    x_tr, y_tr, x_te, y_te, _ = data_mod.load()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train, test = Clips(x_tr, y_tr), Clips(x_te, y_te)
    net = Q.DigitNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    steps = epochs * 300
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.time()
    xt, yt, _ = test.batch(500, torch.Generator().manual_seed(seed + 1))
    x_eval, y_eval = xt.reshape(-1, 1, 16, 16), yt.repeat_interleave(xt.shape[1])
    for step in range(steps):
        net.train()
        c, y, _ = train.batch(16, g)  # 16 clips = 128 frames
        loss = F.cross_entropy(net(c.reshape(-1, 1, 16, 16)), y.repeat_interleave(c.shape[1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 300 == 0:
            lg, _ = Q.predict(net, x_eval.numpy())
            acc = float((lg.argmax(1) == y_eval.numpy()).mean())
            Q.log(f"frame classifier {step + 1}/{steps}: loss {loss.item():.4f}, held-out frame accuracy {acc:.4f} ({time.time() - t0:.0f} s)")
    os.makedirs(CACHE, exist_ok=True)
    torch.save({"model": net.state_dict(), "feat": 64, "test_acc": acc, "epochs": epochs, "seed": seed}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return net


# A frame with less ink than this (sum over pixels of (x + 1) / 2, clamped at 0) is empty and
# reads as no class: the frame classifier reads a near-black frame as a 1, so a clip whose 1 fades
# out scored as consistent. Half the least ink of any frame of the held-out real clips (4.4, a 1,
# over the two draws of 1,000 clips this script makes; 1% of their frames have less than 5.9).
# (It was 4.5, half of 9.02 measured on something other than these frames: it called thin but
# visible generated 1s empty, and one real 1.)
EMPTY_INK = 2.2


def metrics(net, clips, labels, real_feats=None):
    """clips (n, F, 1, S, S) in [-1, 1], labels (n,) -> the row's numbers (and clip features)."""
    n, fr = clips.shape[:2]
    lg, feats = Q.predict(net, clips.reshape(-1, 1, 16, 16))
    ink = ((np.asarray(clips) + 1) / 2).clip(min=0).reshape(n, fr, -1).sum(-1)
    empty = ink < EMPTY_INK  # (n, F)
    pred = np.where(empty, -1, lg.argmax(1).reshape(n, fr))
    want = np.asarray(labels).reshape(n, 1)
    c = centroids(torch.as_tensor(clips)).numpy()  # (n, F, 2)
    jumps = np.linalg.norm(c[:, 1:] - c[:, :-1], axis=-1)
    clip_feats = feats.reshape(n, fr, -1).mean(1)
    row = {
        "clips": int(n),
        "frame_acc": float((pred == want).mean()),
        "consistency": float((pred == want).all(1).mean()),
        "motion_px": float(np.linalg.norm(c[:, -1] - c[:, 0], axis=-1).mean()),
        "max_jump_px": float(jumps.max(1).mean()),
        "empty_frames": float(empty.mean()),
    }
    if real_feats is not None:
        row["fd"] = Q.fid(clip_feats, real_feats)
    return row, clip_feats


def sample_row(name, model, digest, extra, a):
    """Clips of every class for one row, sampled by the CLI in cached chunks (`a.jobs` CLI
    processes at a time, one thread each on the CPU)."""
    from concurrent.futures import ThreadPoolExecutor

    # The sampling flags and the model's bytes are part of the cache's name: chunks drawn with other
    # flags, or by another pack under the same row name (a newer EMA), are other clips.
    d = os.path.join(CACHE, re.sub(r"[^a-z0-9.]+", "-", f"{name} {a.steps} {a.sampler} cfg {a.cfg:g} {digest}".lower()))
    os.makedirs(d, exist_ok=True)
    chunks = []
    for k in range(10):
        for j in range((a.per_class + a.chunk - 1) // a.chunk):
            num = min(a.chunk, a.per_class - j * a.chunk)
            chunks.append((k, j, num, os.path.join(d, f"class{k}-chunk{j}-n{num}.safetensors")))

    def one(c):
        k, j, num, out = c
        if not os.path.exists(out + ".json"):
            p = Q.run([CLI, "sample", "--model", model, "--class", k, "--num", num, "--seed", 1000 + 100 * j + k,
                       "--steps", a.steps, "--sampler", a.sampler, "--cfg", a.cfg, "--backend", a.backend, "--latent-out", out] + extra)
            s, g = Q.parse_gmacs(p.stderr)
            with open(out + ".json", "w") as f:
                json.dump({"seconds": s, "gmacs": g}, f)

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        list(pool.map(one, chunks))
    clips, labels, secs, gmacs = [], [], 0.0, 0.0
    for k, j, num, out in chunks:
        with open(out + ".json") as f:
            m = json.load(f)
        secs += m["seconds"] or 0.0
        gmacs += m["gmacs"] or 0.0
        clips.append(Q.load_latent(out))
        labels += [k] * num
    Q.log(f"{name}: {len(labels)} clips, {secs:.0f} s of sampling")
    return np.concatenate(clips), np.asarray(labels), secs, gmacs


def write_md(rows, a):
    what = (f"{a.per_class} clips per class and row ({10 * a.per_class} per row), {a.steps} {a.sampler} steps, CFG {a.cfg:g}; "
            if len(rows) > 1 else "So far only the reference row (held-out real clips; the models are not trained yet); ")
    lines = [MARK_BEGIN, "", "## Moving-digit video (Latte / spatial-temporal SparseDiT)", "",
             what + "frame classifier trained on real train-split clips; FD over clip features = frame features averaged "
             "over the 8 frames, against held-out real clips. Command: `python3 train/quality_video.py "
             + " ".join(sys.argv[1:]) + "`.", "",
             "| row | frame accuracy | consistency | motion (px) | largest jump (px) | empty frames | FD | GMACs / forward | MACs vs dense |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    dense = next((r for r in rows if r["name"].startswith("dense") and r.get("gmacs_forward")), None)
    for r in rows:
        fd = f"{r['fd']:.2f}" if "fd" in r else "–"
        macs = f"{r['gmacs_forward']:.3f}" if r.get("gmacs_forward") else "–"
        ratio = f"{r['gmacs_forward'] / dense['gmacs_forward']:.3f}" if dense and r.get("gmacs_forward") else "–"
        lines.append(f"| {r['name']} | {r['frame_acc']:.3f} | {r['consistency']:.3f} | {r['motion_px']:.2f} | "
                     f"{r['max_jump_px']:.2f} | {r['empty_frames']:.3f} | {fd} | {macs} | {ratio} |")
    lines += ["", MARK_END]
    path = os.path.join(ROOT, "docs", "QUALITY.md")
    text = open(path).read() if os.path.exists(path) else ""
    block = "\n".join(lines)
    if MARK_BEGIN in text and MARK_END in text:
        text = text[:text.index(MARK_BEGIN)] + block + text[text.index(MARK_END) + len(MARK_END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)
    Q.log(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", help="dense Latte pack or checkpoint")
    ap.add_argument("--sparse", help="sparse Latte pack or checkpoint (f32)")
    ap.add_argument("--sparse-q8", help="the sparse model as a q8_0 pack")
    ap.add_argument("--grid", type=int, default=4, help="fixed sparse grid side")
    ap.add_argument("--schedule", default="0.6:0.85", help="timestep-wise pruning rates of the schedule row")
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--steps", type=int, default=25, help="sampling steps (default: the page's for a video model)")
    ap.add_argument("--sampler", default="ddim", help="the CLI's --sampler (default: the page's, DDIM)")
    ap.add_argument("--cfg", type=float, default=7.0,
                    help="guidance scale (default: the official Latte sample script's, as the CLI's for a video model)")
    ap.add_argument("--backend", default="cpu", help="the CLI's --backend: cpu, or gpu on a machine with one")
    ap.add_argument("--jobs", type=int, default=2, help="CLI processes at a time (one thread each)")
    ap.add_argument("--real", type=int, default=1000, help="held-out real clips")
    ap.add_argument("--epochs", type=int, default=10, help="frame classifier epochs (300 steps of 16 clips each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-only", action="store_true")
    ap.add_argument("--no-write", action="store_true",
                    help="print the rows only (a progress check, e.g. --per-class 10 on a new EMA): docs/QUALITY.md "
                         "and results.json stay as they are")
    a = ap.parse_args()
    torch.set_num_threads(1)
    net = frame_classifier(a.epochs, a.seed)
    _, _, x_te, y_te, _ = data_mod.load()
    real, real_y, _ = Clips(x_te, y_te).batch(a.real, torch.Generator().manual_seed(a.seed + 7))
    real_row, real_feats = metrics(net, real.numpy(), real_y.numpy())
    # The real rows' FD: a second, independent draw of held-out clips against the first.
    real2, real2_y, _ = Clips(x_te, y_te).batch(a.real, torch.Generator().manual_seed(a.seed + 8))
    r2, _ = metrics(net, real2.numpy(), real2_y.numpy(), real_feats)
    real_row["fd"] = r2["fd"]
    rows = [dict(real_row, name="real (held-out)")]
    if not a.real_only:
        if not os.path.exists(CLI):
            Q.run(["cargo", "build", "--release", "--locked", "--bin", "sparsedit"], capture=False)
        specs = []
        if a.dense:
            specs.append(("dense f32", a.dense, []))
        if a.sparse:
            specs.append((f"sparse f32, s = {a.grid}", a.sparse, ["--semantic-size", str(a.grid)]))
            specs.append((f"sparse f32, schedule {a.schedule}", a.sparse, ["--schedule", a.schedule]))
        if a.sparse_q8:
            specs.append((f"sparse q8_0, s = {a.grid}", a.sparse_q8, ["--semantic-size", str(a.grid)]))
        for name, model, extra in specs:
            digest = Q.sha8(model)
            clips, labels, secs, gmacs = sample_row(name, model, digest, extra, a)
            row, _ = metrics(net, clips, labels, real_feats)
            row.update(name=name, model=model, sha8=digest, seconds=secs,
                       gmacs_forward=gmacs / max(1, len(labels)) / a.steps / 2)
            rows.append(row)
    for r in rows:
        Q.log(json.dumps(r))
    if a.no_write:
        return
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    write_md(rows, a)


if __name__ == "__main__":
    main()
