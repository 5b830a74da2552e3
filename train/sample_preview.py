#!/usr/bin/env python3
"""Quick visual check: a 10 x 8 PNG grid (one row per class) of DDIM-50 samples with CFG; for a
video model (the moving-digit Latte) a row of clips per class, each clip its frames left to right.

DiT's sampler semantics (tests/fixtures/gen.py): respacing "ddim50", eta 0, CFG batch [z, z] with
labels [y, null], guidance on the first 3 output channels (here eps and v), no clipping of x0.
For a SparseDiT, the grid side of each call follows the timestep-wise rule (--rates) or --s.
This is a PyTorch preview only; the quality table uses the Rust sampler.

    python3 train/sample_preview.py train/runs/dense/ema.pt [-o out.png] [--cfg 4] [--seed 0]
    python3 train/sample_preview.py train/runs/sparse/ema.pt --rates 0.44:0.75
    python3 train/sample_preview.py --real -o real.png      # training digits, for comparison
    python3 train/sample_preview.py train/checkpoints/video-dense-ema.safetensors --per-class 3 --steps ddim25 --judge

--judge (video) prints quality_video.py's numbers for the clips drawn (frame accuracy, consistency,
motion, largest jump) under its frame classifier (trained and cached on first use): a progress
reading between training runs on few clips, not the quality table.
"""

import argparse
import os
import struct
import sys
import time
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models as M  # noqa: E402


def write_png(path, img):
    """8-bit greyscale PNG from an (H, W) uint8 array (no imaging library needed)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def grid_image(x, rows, cols, scale=3, pad=2):
    """x: (rows*cols, 1, H, W) in [-1, 1] -> uint8 mosaic."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()[:, 0]
    h, w = x.shape[1] * scale, x.shape[2] * scale
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 64, dtype=np.uint8)
    for i in range(rows):
        for j in range(cols):
            tile = np.kron(x[i * cols + j], np.ones((scale, scale), dtype=np.uint8))
            out[pad + i * (h + pad): pad + i * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = tile
    return out


@torch.no_grad()
def sample(model, cfg, y, z, cfg_scale, steps="ddim50", rates=None, fixed_s=None, eta=0.0, seed=0):
    g = M.gen
    sparse = cfg["layout"]["kind"] == "sparse"
    n_tok = (cfg["input_size"] // cfg["patch_size"]) ** 2
    diff = g.Diffusion.respaced(steps, cfg["learn_sigma"])
    n = z.shape[0]
    x = torch.cat([z, z], 0)
    y2 = torch.cat([y, torch.full((n,), cfg["num_classes"], dtype=torch.int64)], 0)
    used = {}

    def fn(x, t, y, cfg_scale):
        kw = {}
        if sparse:
            if fixed_s:
                s = fixed_s
            elif rates:
                r0, r1 = (float(v) for v in rates.split(":"))
                s = M.grid_at(float(t[0]), r0, r1, n_tok)
            else:
                s = cfg["semantic_size"]
            kw["s"] = s
            used[s] = used.get(s, 0) + 1
        if cfg_scale == 1.0:
            return model(x, t, y, **kw)
        return model.forward_with_cfg(x, t, y, cfg_scale, **kw)

    gen_ = torch.Generator().manual_seed(seed + 1)

    def noise(_step):
        return torch.randn(x.shape, generator=gen_) if eta > 0 else torch.zeros_like(x)

    if z.dim() == 5:
        # Video (n, F, C, H, W): the diffusion runs on the frames as images (it is elementwise in
        # x and splits eps / variance on dim 1), the model sees clips with one t per clip.
        frames = z.shape[1]

        def fn_clip(xi, ti, y, cfg_scale, _fn=fn):
            xc = xi.reshape(-1, frames, *xi.shape[1:])
            out = _fn(xc, ti.reshape(-1, frames)[:, 0], y, cfg_scale)
            return out.reshape(-1, *out.shape[2:])

        x = x.reshape(-1, *x.shape[2:])
        out = diff.ddim_loop(fn_clip, x, dict(y=y2, cfg_scale=cfg_scale), noise, eta)
        return out.reshape(2 * n, frames, *out.shape[1:])[:n], used
    out = diff.ddim_loop(fn, x, dict(y=y2, cfg_scale=cfg_scale), noise, eta)
    return out[:n], used


def judge(clips, labels):
    """quality_video.py's per-row numbers for these clips (its cached frame classifier)."""
    import quality_video as QV
    net = QV.frame_classifier(epochs=10, seed=0)
    row, _ = QV.metrics(net, clips.numpy(), labels.numpy())
    print(f"judge ({row['clips']} clips): frame accuracy {row['frame_acc']:.3f}, consistency {row['consistency']:.3f}, "
          f"motion {row['motion_px']:.2f} px, largest jump {row['max_jump_px']:.2f} px, empty frames {row['empty_frames']:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", nargs="?", help="ema.pt / ckpt.pt ('ema' used) / init.pt / .safetensors")
    ap.add_argument("-o", "--out", default=None, help="PNG (default: preview_<ckpt name>.png next to it)")
    ap.add_argument("--config", default=None, help="config.json (default: next to the checkpoint)")
    ap.add_argument("--cfg", type=float, default=4.0, help="guidance scale (1 = no guidance)")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--steps", default="ddim50", help="respacing (ddimK or DiT's section counts)")
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--rates", default=None, help="SparseDiT: r_min:r_max timestep-wise grid (e.g. 0.44:0.75)")
    ap.add_argument("--s", type=int, default=None, help="SparseDiT: fixed grid side (default semantic_size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--real", action="store_true", help="draw training digits instead (data check)")
    ap.add_argument("--judge", action="store_true", help="video: print the quality table's numbers for these clips")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows, cols = 10, a.per_class
    if a.real:
        import data as data_mod
        x, y, _, _, _ = data_mod.load()
        pick = np.concatenate([np.flatnonzero(y == k)[:cols] for k in range(rows)])
        imgs = torch.from_numpy(x[pick])
        out = a.out or os.path.join(HERE, "runs", "real.png")
    else:
        if not a.ckpt:
            ap.error("a checkpoint is required (or --real)")
        model, cfg = M.load_model(a.ckpt, a.config)
        g = torch.Generator().manual_seed(a.seed)
        c, i = cfg["in_channels"], cfg["input_size"]
        frames = cfg.get("num_frames")
        z = torch.randn(rows * cols, *([frames] if frames else []), c, i, i, generator=g)
        y = torch.arange(rows).repeat_interleave(cols)
        t0 = time.time()
        imgs, used = sample(model, cfg, y, z, a.cfg, a.steps, a.rates, a.s, a.eta, a.seed)
        base = os.path.splitext(os.path.basename(a.ckpt))[0]
        out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.ckpt)), f"preview_{base}.png")
        print(f"{rows * cols} samples, {a.steps}, cfg {a.cfg}, {time.time() - t0:.1f} s"
              + (f", grid sides used (calls): {used}" if used else ""))
        if frames:
            imgs = imgs[:, :, :1]
            if a.judge:
                judge(imgs, y)
            imgs, cols = imgs.reshape(-1, 1, i, i), cols * frames  # a clip's frames side by side
        else:
            imgs = imgs[:, :1]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_png(out, grid_image(imgs, rows, cols))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
