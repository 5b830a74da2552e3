"""DiT / SparseDiT for training, on top of the project's PyTorch reference (tests/fixtures/gen.py).

gen.py is the verified reference the Rust port is tested against (official module names, MAE
sin-cos pos_embed, LayerNorm without affine eps 1e-6, GELU tanh, Poolingformer mean attention,
SDTM merge / semantic / recover / normal blocks, AdaptiveAvgPool2d to s x s, nearest upsampling,
forward(x, t, y, s=...) with the sparse grid side as a forward argument). This module adds what
training needs: configs, DiT's initialisation (adaLN-Zero), label dropout, the dense -> sparse
initialisation, EMA helpers and checkpoint I/O, all with the official key names.
"""

import json
import math
import os
import sys

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "fixtures"))
import gen  # noqa: E402  (sets torch threads to 1 and deterministic algorithms)
import gen_latte  # noqa: E402  (the spatial-temporal SparseDiT reference; needs einops)

T_TRAIN = gen.T_TRAIN
SDTM_KINDS = ["token_merge_blocks", "semantic_blocks", "token_recover_blocks", "normal_blocks"]


# ----------------------------------------------------------------------------
# Configs (the crate's Config JSON: src/config.rs)
# ----------------------------------------------------------------------------

def tiny_config(sparse, **over):
    """Config::tiny: 16x16x1, patch 2 (8x8 = 64 tokens), width 128, 4 heads, MLP 512, 10 classes,
    learned sigma; dense depth 10; sparse 1 Poolingformer + 2 x [1,2,1,0] + 1 top, s = 4."""
    cfg = {
        "input_size": 16,
        "patch_size": 2,
        "in_channels": 1,
        "hidden_size": 128,
        "num_heads": 4,
        "mlp_hidden": 512,
        "num_classes": 10,
        "class_null": True,
        "learn_sigma": True,
        "layout": ({"kind": "sparse", "num_poolingformer": 1, "num_sdtm": 2, "group": [1, 2, 1, 0], "num_top": 1}
                   if sparse else {"kind": "dense", "depth": 10}),
        "semantic_size": 4,
    }
    cfg.update(over)
    return cfg


def video_config(sparse, **over):
    """Config::tiny_video: tiny_config's frames as Latte with 8 frames and 10 (spatial, temporal)
    pairs (dense depth 20: the spatial blocks start from the image DiT's ten); sparse: 1
    Poolingformer pair, 2 SDTMs of [1,2,1,0] pairs, 1 top pair (in blocks 2, 2 x [2,4,2,0], 2), s = 4."""
    cfg = tiny_config(False, num_frames=8)
    cfg["layout"] = ({"kind": "sparse", "num_poolingformer": 2, "num_sdtm": 2, "group": [2, 4, 2, 0], "num_top": 2}
                     if sparse else {"kind": "dense", "depth": 20})
    cfg.update(over)
    return cfg


def is_video(cfg):
    return bool(cfg.get("num_frames"))


def sparse_layout_from_str(s):
    """"P:K:a,b,c,d:T" -> layout dict (e.g. "1:2:1,2,1,0:1")."""
    p, k, g, t = s.split(":")
    group = [int(v) for v in g.split(",")]
    assert len(group) == 4, s
    return {"kind": "sparse", "num_poolingformer": int(p), "num_sdtm": int(k), "group": group, "num_top": int(t)}


def depth(cfg):
    lay = cfg["layout"]
    if lay["kind"] == "dense":
        return lay["depth"]
    return lay["num_poolingformer"] + lay["num_sdtm"] * sum(lay["group"]) + lay["num_top"]


def block_names(cfg):
    """Checkpoint prefixes of the blocks in forward order (Layout::block_names in src/config.rs)."""
    lay = cfg["layout"]
    if lay["kind"] == "dense":
        return [f"blocks.{i}" for i in range(lay["depth"])]
    names = [f"poolingformer_blocks.{i}" for i in range(lay["num_poolingformer"])]
    for k in range(lay["num_sdtm"]):
        for kind, cnt in zip(SDTM_KINDS, lay["group"]):
            names += [f"dumbbell_blocks.{k}.{kind}.{j}" for j in range(cnt)]
    names += [f"normal_blocks.{i}" for i in range(lay["num_top"])]
    return names


def grid_at(t, r_min, r_max, n_tokens, T=T_TRAIN):
    """GridSchedule::grid_at (src/config.rs): r = r_min for t < T/4, then linear to r_max at T;
    s = round(sqrt((1 - r) N)), rounding half away from zero as Rust's f64::round."""
    q = T / 4.0
    r = r_min if t < q else r_min + (r_max - r_min) * min((t - q) / (T - q), 1.0)
    return max(1, int(math.floor(math.sqrt((1.0 - r) * n_tokens) + 0.5)))


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------

class _SinCos:
    """The two tables gen_latte.SparseLatte takes from the official Latte module: MAE's 2-D
    sin-cos table (gen.sincos_2d, checked against the official one in the fixtures) and Latte's
    get_1d_sincos_temp_embed (the 1-D table over frame indices)."""

    @staticmethod
    def get_2d_sincos_pos_embed(dim, grid):
        return gen.sincos_2d(dim, grid)

    @staticmethod
    def get_1d_sincos_temp_embed(dim, length):
        import numpy as np
        return gen.sincos_1d(dim, np.arange(length, dtype=np.float64))


class DenseLatte(gen_latte.SparseLatte):
    """Latte (variant 1) under the official key names `blocks.{i}`: SparseLatte with only dense
    pairs, which gen_latte.py's self-check shows equals the official Latte."""

    def __init__(self, cfg):
        depth_ = cfg["layout"]["depth"]
        inner = dict(cfg, layout={"kind": "sparse", "num_poolingformer": 0, "num_sdtm": 0, "group": [0, 0, 0, 0],
                                  "num_top": depth_})
        super().__init__(inner, _SinCos)
        self.cfg = cfg
        self.blocks = self._modules.pop("normal_blocks")

    @property
    def normal_blocks(self):  # what SparseLatte.forward walks
        return self.blocks


def build_raw(cfg):
    """The reference module of cfg, untouched initialisation (load weights into it)."""
    if is_video(cfg):
        return DenseLatte(cfg) if cfg["layout"]["kind"] == "dense" else gen_latte.SparseLatte(cfg, _SinCos)
    return gen.build(cfg)


def build(cfg):
    """A gen.DenseDiT / gen.SparseDiT (forward(x, t, y) / forward(x, t, y, s=...)), or for a video
    config a Latte / SparseLatte (x (B, F, C, H, W)), DiT-initialised."""
    model = build_raw(cfg)
    dit_init(model)
    return model


@torch.no_grad()
def video_from_image(video, image_sd):
    """A dense Latte started from an image DiT, as video DiTs start from image DiTs: spatial block
    blocks.{2i} <- image blocks.{i}, embedders and final layer copied; the temporal blocks keep
    DiT's initialisation, where adaLN-Zero makes each one the identity."""
    sd = video.state_dict()
    if "temp_embed" in image_sd:
        # Already a video model of this config (e.g. the committed EMA of an earlier run): go on from it.
        video.load_state_dict({k: v.float() for k, v in image_sd.items()})
        return video
    n_img = len({k.split(".")[1] for k in image_sd if k.startswith("blocks.")})
    n_pairs = len({k.split(".")[1] for k in sd if k.startswith("blocks.")}) // 2
    assert n_img == n_pairs, f"image DiT has {n_img} blocks, the video model {n_pairs} pairs"
    out = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            rest = k.split(".", 2)[2]
            out[k] = image_sd[f"blocks.{i // 2}.{rest}"].clone() if i % 2 == 0 else v.clone()
        elif k in ("pos_embed", "temp_embed"):
            out[k] = v.clone()  # frozen sin-cos tables
        else:
            assert image_sd[k].shape == v.shape, (k, image_sd[k].shape, v.shape)
            out[k] = image_sd[k].clone()
    video.load_state_dict(out)
    return video


@torch.no_grad()
def dit_init(model):
    """DiT's initialize_weights: xavier-uniform linears with zero bias, patch embedding as a
    linear, N(0, 0.02) label table and timestep MLP, adaLN-Zero (every adaLN_modulation and the
    final linear zero); SDTM recover blocks: merged_layer1 = 0, merged_layer2 = identity."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    w = model.x_embedder.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.x_embedder.proj.bias)
    nn.init.normal_(model.y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    for name, m in model.named_modules():
        if name.endswith("adaLN_modulation"):
            nn.init.zeros_(m[-1].weight)
            nn.init.zeros_(m[-1].bias)
        if hasattr(m, "merged_layer1"):
            nn.init.zeros_(m.merged_layer1.weight)
            nn.init.zeros_(m.merged_layer1.bias)
            m.merged_layer2.weight.copy_(torch.eye(m.merged_layer2.weight.shape[0]))
            nn.init.zeros_(m.merged_layer2.bias)
    nn.init.zeros_(model.final_layer.linear.weight)
    nn.init.zeros_(model.final_layer.linear.bias)
    return model


def drop_labels(y, null_label, prob, gen_=None):
    """Classifier-free guidance training: replace labels by the null label with probability prob
    (DiT's LabelEmbedder.token_drop)."""
    if prob <= 0:
        return y
    drop = torch.rand(y.shape, generator=gen_) < prob
    return torch.where(drop, torch.full_like(y, null_label), y)


def state_dict(model):
    """Plain, contiguous, official-name state dict on the CPU (what `sparsedit convert` reads)."""
    return {k: v.cpu() for k, v in gen.state_dict(model).items()}


def num_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def dense_to_sparse(dense_sd, sparse_cfg):
    """The paper's fine-tuning initialisation: dense block i -> i-th block of the sparse order;
    attn.q = qkv[:C], attn.kv = qkv[C:], attn.v = qkv[2C:]; merged_layer1 = 0, merged_layer2 = I;
    embedders, pos_embed and final layer copied. Returns the sparse state dict."""
    sparse = build_raw(sparse_cfg)
    n_dense = len({k.split(".")[1] for k in dense_sd if k.startswith("blocks.")})
    assert n_dense == depth(sparse_cfg), f"dense depth {n_dense} != sparse depth {depth(sparse_cfg)}"
    sd = gen.dit_to_sparsedit(dense_sd, sparse)
    sparse.load_state_dict(sd)  # strict: the key set is exactly the sparse model's
    return sd


# ----------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------

def make_ema(model, cfg):
    ema = build_raw(cfg)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    ema.eval()
    return ema


@torch.no_grad()
def update_ema(ema, model, decay):
    """DiT's update_ema over named parameters: ema = decay * ema + (1 - decay) * model."""
    ep = [p for _, p in ema.named_parameters()]
    mp = [p.detach() for _, p in model.named_parameters()]
    torch._foreach_mul_(ep, decay)
    torch._foreach_add_(ep, mp, alpha=1.0 - decay)


# ----------------------------------------------------------------------------
# Checkpoint I/O
# ----------------------------------------------------------------------------

def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_config(cfg, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def load_config(path):
    with open(path) as f:
        return json.load(f)


def load_weights(path):
    """A state dict from ckpt.pt ('ema' preferred, as `sparsedit convert`), ema.pt / init.pt, or
    .safetensors."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("ema", "model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def checkpoint_config(path, sd, cfg_path=None):
    """A checkpoint's config: config.json next to it, or for a committed video EMA without one
    (train/checkpoints/*.safetensors) the tiny video config its keys `sd` say (dense, or sparse
    when it has SDTMs)."""
    cfg_path = cfg_path or os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if os.path.exists(cfg_path):
        return load_config(cfg_path)
    if "temp_embed" in sd:
        return video_config(any(k.startswith("dumbbell_blocks.") for k in sd))
    sys.exit(f"{path}: no {cfg_path}; pass the config")


def load_model(path, cfg_path=None):
    """(model in eval mode, cfg) from a checkpoint, its config as `checkpoint_config` finds it."""
    sd = load_weights(path)
    cfg = checkpoint_config(path, sd, cfg_path)
    model = build_raw(cfg)
    model.load_state_dict(sd)  # copies into the f32 parameters (an f16 checkpoint too)
    model.eval()
    return model, cfg


__all__ = ["gen", "tiny_config", "video_config", "is_video", "video_from_image", "build_raw", "build", "dit_init", "drop_labels", "dense_to_sparse", "make_ema", "update_ema",
           "grid_at", "block_names", "checkpoint_config", "load_model", "load_weights", "state_dict"]
