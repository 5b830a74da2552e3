#!/usr/bin/env python3
"""Read samples with the quality table's digit classifier (train/runs/classifier.pt).

    sparsedit sample --model web/models/sparsedit-tiny-q8_0.gguf --class 7 --latent-out x.safetensors
    python3 train/classify.py x.safetensors [more.safetensors ...]

Each file holds `sample` (as `sample --latent-out` writes it) or `image`: (n, 1, 16, 16) in
[-1, 1]. Prints, per image, the predicted digit and its softmax probability.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from quality import DigitNet, predict  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = os.path.join(HERE, "runs/classifier.pt")
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run `python3 train/quality.py --classifier-only` first")
    torch.set_num_threads(1)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    net = DigitNet(ck["feat"])
    net.load_state_dict(ck["model"])
    for f in sys.argv[1:]:
        t = load_file(f)
        x = t.get("sample", t.get("image"))
        if x is None or x.ndim != 4 or x.shape[1:] != (1, 16, 16):
            sys.exit(f"{f}: expected `sample` or `image` of shape (n, 1, 16, 16), found {list(t)}")
        logits, _ = predict(net, x.astype(np.float32))
        p = F.softmax(torch.as_tensor(logits), dim=1).numpy()
        for i, row in enumerate(p):
            k = int(row.argmax())
            print(f"{f}[{i}]: digit {k} (p = {row[k]:.3f})")


if __name__ == "__main__":
    main()
