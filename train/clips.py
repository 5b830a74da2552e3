#!/usr/bin/env python3
"""Moving-digit clips, made on the fly from the digits of data.py (Moving-MNIST style, one digit).

A clip of class k: one digit of class k, shrunk to `digit` x `digit` pixels, on a `size` x `size`
black frame, moving with a constant random velocity and bouncing off the frame edges. Positions
are continuous (sub-pixel: the digit is placed with bilinear interpolation), so the motion is
smooth: every axis moves `speed` in [min_speed, max_speed] px per frame with a random sign.

Training clips come from the training split, held-out clips (the quality table's real clips) from
the test split. Every draw comes from the torch.Generator given, so a step's batch is
reproducible from (seed, step) as train.py needs.

    python3 train/clips.py --out clips.png        # a strip per class, for a look
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

FRAMES = 8
SIZE = 16
DIGIT = 11
MIN_SPEED, MAX_SPEED = 0.5, 1.0


def shrink(digits, digit=DIGIT):
    """(N, 1, S, S) digits in [-1, 1] -> (N, 1, digit, digit), antialiased (area-weighted)."""
    return F.interpolate(digits, size=(digit, digit), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)


def trajectories(n, frames, travel, g, min_speed=MIN_SPEED, max_speed=MAX_SPEED):
    """(n, frames, 2) top-left positions (x, y) in [0, travel]: a random start, a constant
    velocity per axis, reflected at 0 and `travel` (a bounce)."""
    start = torch.rand(n, 2, generator=g) * travel
    speed = min_speed + torch.rand(n, 2, generator=g) * (max_speed - min_speed)
    sign = torch.where(torch.rand(n, 2, generator=g) < 0.5, -1.0, 1.0)
    steps = torch.arange(frames, dtype=torch.float32).view(1, frames, 1)
    raw = start.unsqueeze(1) + steps * (speed * sign).unsqueeze(1)  # unbounded
    period = 2 * travel
    m = torch.remainder(raw, period)
    return torch.where(m > travel, period - m, m)  # triangle wave: bounces off both edges


def place(small, pos, size=SIZE):
    """Paste digits (n, 1, d, d) at sub-pixel top-left positions pos (n, frames, 2) on black
    frames: (n, frames, 1, size, size) in [-1, 1] (bilinear translation of the digit's pixels)."""
    n, _, d, _ = small.shape
    frames = pos.shape[1]
    canvas = torch.full((n * frames, 1, size, size), -1.0)
    canvas[:, :, :d, :d] = small.repeat_interleave(frames, dim=0)
    # Translate by pos with grid_sample: output pixel (i, j) reads input (i - y, j - x).
    shift = pos.reshape(n * frames, 2)
    theta = torch.zeros(n * frames, 2, 3)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shift[:, 0] / size  # normalised coordinates span 2 over `size` pixels
    theta[:, 1, 2] = -2 * shift[:, 1] / size
    grid = F.affine_grid(theta, (n * frames, 1, size, size), align_corners=False)
    out = F.grid_sample(canvas + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    return out.reshape(n, frames, 1, size, size)


class Clips:
    """Clips of the digits of one split: x (N, 1, S, S) in [-1, 1], y (N,)."""

    def __init__(self, x, y, frames=FRAMES, size=SIZE, digit=DIGIT):
        self.small = shrink(torch.as_tensor(x), digit)
        self.y = torch.as_tensor(y)
        self.frames, self.size, self.digit = frames, size, digit

    def __len__(self):
        return len(self.y)

    def batch(self, n, g, idx=None):
        """(clips (n, F, 1, S, S), labels (n,), positions (n, F, 2)) from generator g."""
        if idx is None:
            idx = torch.randint(len(self.y), (n,), generator=g)
        pos = trajectories(len(idx), self.frames, self.size - self.digit, g)
        return place(self.small[idx], pos, self.size), self.y[idx], pos


def centroids(clips):
    """Intensity-weighted centroid (x, y) of every frame: clips (n, F, 1, S, S) in [-1, 1] ->
    (n, F, 2) in pixels (the quality table's motion measure)."""
    w = ((clips + 1) / 2).clamp(min=0).squeeze(2)  # (n, F, S, S), ink >= 0
    s = clips.shape[-1]
    coords = torch.arange(s, dtype=torch.float32)
    total = w.sum(dim=(-1, -2)).clamp(min=1e-6)
    cx = (w.sum(dim=-2) * coords).sum(-1) / total
    cy = (w.sum(dim=-1) * coords).sum(-1) / total
    return torch.stack([cx, cy], dim=-1)


def main():
    import data as data_mod
    import numpy as np
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "runs", "clips.png"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    x, y, _, _, _ = data_mod.load()
    clips = Clips(x, y)
    g = torch.Generator().manual_seed(a.seed)
    rows = []
    for k in range(10):
        idx = torch.nonzero(clips.y == k).flatten()[:1]
        c, _, pos = clips.batch(1, g, idx)
        rows.append(torch.cat(list(c[0, :, 0]), dim=1))
        d = centroids(c)[0]
        print(f"class {k}: centroid moves {float((d[-1] - d[0]).norm()):.2f} px, largest jump {float((d[1:] - d[:-1]).norm(dim=-1).max()):.2f} px")
    img = ((torch.cat(rows, dim=0) + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    Image.fromarray(np.kron(img, np.ones((4, 4), dtype=np.uint8))).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
