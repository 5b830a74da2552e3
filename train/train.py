#!/usr/bin/env python3
"""Train the tiny class-conditional digit DiT, initialise SparseDiT from it, fine-tune SparseDiT;
with --video the same for the moving-digit Latte (Config::tiny_video) on clips.py's clips.

Subcommands (run from anywhere; paths default to train/runs/<run>):
  dense        train the dense DiT (Config::tiny(false)) from scratch; with --video the dense Latte
               (Config::tiny_video(false)), its spatial blocks started from --init-image
  init-sparse  SparseDiT weights from the dense EMA, as the paper (block i -> i-th sparse block,
               q = qkv[:C], kv = qkv[C:], v = qkv[2C:], merged_layer1 = 0, merged_layer2 = I)
  finetune     fine-tune the SparseDiT with timestep-wise pruning (one sparse grid per batch)
  bench        time training steps (dense, and sparse at every grid side of the schedule)

Every run directory holds: config.json (the crate's Config JSON), ckpt.pt ({'model', 'ema', 'opt',
'step', 'args', 'config', 'train_time'}), ema.pt (plain EMA state dict with official key names:
`sparsedit convert train/runs/<run>/ema.pt --heads 4 --semantic-size 4 -o x.gguf`), log.csv and
milestones/ema_<step>.pt. Checkpoints are written every --ckpt-minutes and on SIGTERM/SIGINT;
starting the same command again resumes from ckpt.pt (bit-for-bit: every random draw of step k
comes from a generator seeded with (seed, k)).

Always runs PyTorch with --threads (default 1) threads.
"""

import argparse
import ast
import csv
import math
import os
import signal
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import data as data_mod  # noqa: E402
from clips import Clips  # noqa: E402
import models as M  # noqa: E402
from diffusion import TrainDiffusion  # noqa: E402

RUNS = os.path.join(HERE, "runs")
# Arguments a resumed run takes from its checkpoint (the rest, e.g. --steps, come from the command).
FROZEN = ["seed", "batch", "lr", "warmup", "min_lr_frac", "ema", "label_drop", "grad_clip", "weight_decay",
          "rates", "fixed_s", "data", "config_over", "video", "init_image"]


def run_dir(name):
    return name if os.path.isabs(name) or os.sep in name else os.path.join(RUNS, name)


def set_threads(n):
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass


def lr_at(step, a):
    """Linear warmup to lr, then cosine to lr * min_lr_frac at --steps (flat when min_lr_frac = 1)."""
    if a.warmup > 0 and step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    span = max(1, a.steps - a.warmup)
    prog = min(1.0, (step - a.warmup) / span)
    lo = a.lr * a.min_lr_frac
    return lo + (a.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * prog))


def step_generator(seed, step, salt):
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + salt)


class GridSampler:
    """Timestep-wise pruning for one batch: pick a t uniformly, take the grid side s(t) of the
    paper's rule, then draw the whole batch's timesteps uniformly from the band {t : s(t) = s}.
    The marginal of t stays uniform over 0..T-1 and each batch runs at one grid size."""

    def __init__(self, cfg, rates, fixed_s, T=M.T_TRAIN):
        n_tok = (cfg["input_size"] // cfg["patch_size"]) ** 2
        self.T = T
        if fixed_s:
            self.s_of_t = [fixed_s] * T
        else:
            r_min, r_max = (float(v) for v in rates.split(":"))
            self.s_of_t = [M.grid_at(t, r_min, r_max, n_tok, T) for t in range(T)]
        self.bands = {}
        for t, s in enumerate(self.s_of_t):
            self.bands.setdefault(s, []).append(t)
        self.bands = {s: torch.tensor(ts) for s, ts in self.bands.items()}

    def describe(self):
        return ", ".join(f"s={s}: t {int(ts[0])}..{int(ts[-1])}" for s, ts in sorted(self.bands.items(), reverse=True))

    def sample(self, B, g):
        s = self.s_of_t[int(torch.randint(self.T, (1,), generator=g))]
        band = self.bands[s]
        return s, band[torch.randint(len(band), (B,), generator=g)]


def write_run_files(d, model, ema, opt, step, a, cfg, train_time):
    M.atomic_save({"model": M.state_dict(model), "ema": M.state_dict(ema), "opt": opt.state_dict(),
                   "step": step, "args": vars(a), "config": cfg, "train_time": train_time},
                  os.path.join(d, "ckpt.pt"))
    M.atomic_save(M.state_dict(ema), os.path.join(d, "ema.pt"))
    M.save_config(cfg, os.path.join(d, "config.json"))


def train(a, kind):
    set_threads(a.threads)
    d = run_dir(a.run)
    os.makedirs(os.path.join(d, "milestones"), exist_ok=True)
    ck_path = os.path.join(d, "ckpt.pt")
    ck = torch.load(ck_path, map_location="cpu", weights_only=True) if os.path.exists(ck_path) else None
    if ck is not None:
        for k in FROZEN:
            if k in ck["args"] and getattr(a, k, None) != ck["args"][k]:
                print(f"resume: keeping {k}={ck['args'][k]!r} from the checkpoint (command said {getattr(a, k, None)!r})")
                setattr(a, k, ck["args"][k])
        cfg = ck["config"]
    elif kind == "dense":
        over = ast.literal_eval(a.config_over) if a.config_over else {}
        cfg = M.video_config(False, **over) if a.video else M.tiny_config(False, **over)
    elif a.init:
        # Going on from a committed sparse EMA (train/checkpoints/) in a new run directory: its
        # weights replace init.pt, its config is the one beside it or the one its keys say.
        init_sd = M.load_weights(a.init)
        cfg = M.checkpoint_config(a.init, init_sd)
        if cfg["layout"]["kind"] != "sparse":
            sys.exit(f"{a.init}: a dense checkpoint; `finetune --init` takes a SparseDiT (use init-sparse for a dense one)")
        print(f"every weight from {a.init}")
    else:
        if not os.path.exists(os.path.join(d, "init.pt")):
            sys.exit(f"{d}/init.pt missing: run `train.py init-sparse --run {a.run}` first (or pass --init CKPT)")
        init_sd = M.load_weights(os.path.join(d, "init.pt"))
        cfg = M.load_config(os.path.join(d, "config.json"))

    torch.manual_seed(a.seed)
    model = M.build(cfg)
    if ck is None and kind == "finetune":
        model.load_state_dict(init_sd)
    if ck is None and kind == "dense" and M.is_video(cfg) and a.init_image:
        init = M.load_weights(a.init_image)
        M.video_from_image(model, init)
        if "temp_embed" in init:
            print(f"every weight from the video model {a.init_image} (an earlier run's EMA)")
        else:
            print(f"spatial blocks, embedders and final layer from {a.init_image}; temporal blocks: adaLN-Zero identity")
    ema = M.make_ema(model, cfg)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        # gen.py asks for deterministic algorithms (the fixtures); CUDA has none for
        # adaptive_avg_pool2d's backward, and a lent GPU is for speed: TF32 matmuls too.
        torch.use_deterministic_algorithms(False)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(dev)
    ema.to(dev)
    # Compiled forward (fused elementwise ops), video Latte, batch 8, 2 CPU threads: 1.93 vs
    # 2.24-2.29 s a step in a bench of the bare step, 2.0-2.4 vs 2.2-2.6 s in the training loop;
    # ~3 min of compiling first. `model` keeps the weights and their names.
    fwd = torch.compile(model) if a.compile else model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr,
                            weight_decay=a.weight_decay, betas=(0.9, 0.999))
    step, train_time = 0, 0.0
    if ck is not None:
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step, train_time = ck["step"], ck.get("train_time", 0.0)
        print(f"resumed {ck_path} at step {step} ({train_time / 60:.1f} min of training so far)")
    del ck
    M.save_config(cfg, os.path.join(d, "config.json"))
    if step >= a.steps:
        print(f"{d}: already at step {step} >= --steps {a.steps}; nothing to do")
        write_run_files(d, model, ema, opt, step, a, cfg, train_time)
        return

    x_train, y_train, _, _, meta = data_mod.load(a.data)
    x_train = torch.from_numpy(x_train)
    y_train = torch.from_numpy(y_train)
    n = len(x_train)
    video = M.is_video(cfg)
    clips = Clips(x_train, y_train, frames=cfg["num_frames"]) if video else None
    null = cfg["num_classes"]
    diff = TrainDiffusion(learn_sigma=cfg["learn_sigma"]).to(dev)
    grids = GridSampler(cfg, a.rates, a.fixed_s) if kind == "finetune" else None
    print(f"{kind}: run {d}, {M.num_params(model):,} parameters, {n} training digits, step {step} -> {a.steps}, "
          f"batch {a.batch}, lr {a.lr} (warmup {a.warmup}" + (f", cosine to x{a.min_lr_frac}" if a.min_lr_frac != 1 else ", then constant")
          + f"), EMA {a.ema}, "
          + (f"{torch.get_num_threads()} thread(s)" if dev.type == "cpu" else str(dev))
          + (", compiled" if a.compile else "")
          + (f", at most {a.max_minutes} min" if a.max_minutes else "") + (f"; grids {grids.describe()}" if grids else ""), flush=True)

    stop = {"sig": None}

    def on_signal(signum, _frame):
        stop["sig"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log_path = os.path.join(d, "log.csv")
    new_log = not os.path.exists(log_path)
    logf = open(log_path, "a", newline="")
    log = csv.writer(logf)
    if new_log:
        log.writerow(["step", "train_min", "loss", "mse", "vb", "lr", "grad_norm", "grid_s", "sec_per_step"])
    acc = {"loss": 0.0, "mse": 0.0, "vb": 0.0, "gn": 0.0, "k": 0, "s": {}}
    last_ck = time.time()
    t_log = time.time()
    model.train()
    deadline = time.time() + a.max_minutes * 60 if a.max_minutes else math.inf
    while step < a.steps and stop["sig"] is None and time.time() < deadline:
        t0 = time.time()
        g = step_generator(a.seed, step, 1 if kind == "dense" else 2)
        if video:
            x0, y, _ = clips.batch(a.batch, g)  # (B, F, 1, S, S)
        else:
            idx = torch.randint(n, (a.batch,), generator=g)
            x0, y = x_train[idx], y_train[idx]
        if grids is None:
            s = None
            t = torch.randint(diff.T, (a.batch,), generator=g)
        else:
            s, t = grids.sample(a.batch, g)
        noise = torch.randn(x0.shape, generator=g)
        y = M.drop_labels(y, null, a.label_drop, g)
        # Every draw above comes from the CPU generator (reproducible on any device), then moves.
        x0, noise, y, t = x0.to(dev), noise.to(dev), y.to(dev), t.to(dev)
        fn = (lambda xt, tt: fwd(xt, tt, y)) if s is None else (lambda xt, tt: fwd(xt, tt, y, s=s))
        if video:
            # The loss sees a clip's frames as images sharing the clip's t, as Latte's
            # training_losses splits eps / variance per frame (dim 2).
            x0, noise, t, fn = frames_as_images(x0, noise, t, fn)
        lr = lr_at(step, a)
        for pg in opt.param_groups:
            pg["lr"] = lr
        losses = diff.loss(fn, x0, t, noise)
        loss = losses["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip if a.grad_clip > 0 else float("inf"))
        opt.step()
        M.update_ema(ema, model, a.ema)
        step += 1
        train_time += time.time() - t0
        acc["loss"] += loss.item()
        acc["mse"] += losses["mse"].mean().item()
        acc["vb"] += losses["vb"].mean().item()
        acc["gn"] += float(gn)
        acc["k"] += 1
        if s is not None:
            acc["s"][s] = acc["s"].get(s, 0) + 1
        if not math.isfinite(loss.item()):
            sys.exit(f"non-finite loss at step {step}; last checkpoint kept")
        if step % a.log_every == 0 or step == a.steps:
            k = acc["k"]
            sps = (time.time() - t_log) / k
            smix = "/".join(f"{s_}:{c}" for s_, c in sorted(acc["s"].items())) if acc["s"] else ""
            log.writerow([step, f"{train_time / 60:.2f}", f"{acc['loss'] / k:.5f}", f"{acc['mse'] / k:.5f}",
                          f"{acc['vb'] / k:.5f}", f"{lr:.3e}", f"{acc['gn'] / k:.3f}", smix, f"{sps:.3f}"])
            logf.flush()
            print(f"step {step} loss {acc['loss'] / k:.4f} mse {acc['mse'] / k:.4f} vb {acc['vb'] / k:.4f} "
                  f"lr {lr:.2e} {sps:.3f} s/step {smix}", flush=True)
            acc = {"loss": 0.0, "mse": 0.0, "vb": 0.0, "gn": 0.0, "k": 0, "s": {}}
            t_log = time.time()
        if a.keep_every and step % a.keep_every == 0:
            M.atomic_save(M.state_dict(ema), os.path.join(d, "milestones", f"ema_{step:06d}.pt"))
        if time.time() - last_ck > a.ckpt_minutes * 60 or step == a.steps:
            write_run_files(d, model, ema, opt, step, a, cfg, train_time)
            last_ck = time.time()
    write_run_files(d, model, ema, opt, step, a, cfg, train_time)
    logf.close()
    why = (f"signal {stop['sig']}" if stop["sig"] is not None
           else "done" if step >= a.steps else f"--max-minutes {a.max_minutes}")
    print(f"saved {d}/ckpt.pt and ema.pt at step {step} ({why})", flush=True)


def frames_as_images(x0, noise, t, fn):
    """(B, F, C, H, W) clips -> (B·F, C, H, W) images with t repeated per frame, and the model
    call wrapped to take and return images (TrainDiffusion works on images)."""
    B, Fr = x0.shape[:2]
    img = lambda v: v.reshape(B * Fr, *v.shape[2:])  # noqa: E731

    def fn_img(xt, tt):
        return img(fn(xt.reshape(B, Fr, *xt.shape[1:]), tt.reshape(B, Fr)[:, 0]))

    return img(x0), img(noise), t.repeat_interleave(Fr), fn_img


def init_sparse(a):
    set_threads(a.threads)
    src = run_dir(a.dense_run)
    dense_path = a.dense_ckpt or os.path.join(src, "ema.pt")
    dense_sd = M.load_weights(dense_path)
    dense_cfg = M.checkpoint_config(dense_path, dense_sd)
    assert dense_cfg["layout"]["kind"] == "dense", dense_cfg
    layout = a.layout or ("2:2:2,4,2,0:2" if M.is_video(dense_cfg) else "1:2:1,2,1,0:1")
    scfg = dict(dense_cfg, layout=M.sparse_layout_from_str(layout), semantic_size=a.semantic_size)
    d = run_dir(a.run)
    out = os.path.join(d, "init.pt")
    if os.path.exists(out) and not a.force:
        print(f"{out} exists (use --force to rebuild)")
        return
    os.makedirs(d, exist_ok=True)
    if os.path.exists(os.path.join(d, "ckpt.pt")):
        sys.exit(f"{d}/ckpt.pt exists: this run was already fine-tuned; use another --run")
    sd = M.dense_to_sparse(dense_sd, scfg)
    M.atomic_save(sd, out)
    M.save_config(scfg, os.path.join(d, "config.json"))
    names = M.block_names(scfg)
    print(f"initialised {out} from {dense_path}:")
    for i, nm in enumerate(names):
        print(f"  blocks.{i} -> {nm}")


def bench(a):
    set_threads(a.threads)
    torch.manual_seed(0)
    diff = TrainDiffusion()
    res = {}
    for name, cfg, s_list in [("dense", M.tiny_config(False), [None]),
                              ("sparse", M.tiny_config(True), [6, 5, 4])]:
        model = M.build(cfg)
        # non-zero weights so that every path costs what it will cost in training
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.02)
        ema = M.make_ema(model, cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
        for s in s_list:
            times = []
            for it in range(a.warmup_iters + a.iters):
                x0 = torch.randn(a.batch, 1, 16, 16)
                y = torch.randint(10, (a.batch,))
                t = torch.randint(1000, (a.batch,))
                fn = (lambda xt, tt: model(xt, tt, y)) if s is None else (lambda xt, tt: model(xt, tt, y, s=s))
                t0 = time.perf_counter()
                loss = diff.loss(fn, x0, t, torch.randn_like(x0))["loss"].mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                M.update_ema(ema, model, 0.999)
                if it >= a.warmup_iters:
                    times.append(time.perf_counter() - t0)
            times.sort()
            med = times[len(times) // 2]
            key = name if s is None else f"{name} s={s}"
            res[key] = med
            print(f"{key}: {M.num_params(model):,} params, batch {a.batch}, {torch.get_num_threads()} thread(s): "
                  f"median {med * 1000:.0f} ms/step (min {times[0] * 1000:.0f}, max {times[-1] * 1000:.0f}) "
                  f"-> {int(90 * 60 / med):,} steps in 90 min", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, run, steps, lr, warmup, ema):
        p.add_argument("--run", default=run, help="run name (under train/runs) or a path")
        p.add_argument("--steps", type=int, default=steps, help="total steps (raise it to continue a run)")
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--warmup", type=int, default=warmup)
        p.add_argument("--min-lr-frac", type=float, default=1.0,
                       help="cosine floor at --steps as a fraction of --lr (1 = constant after warmup, as DiT)")
        p.add_argument("--weight-decay", type=float, default=0.0)
        p.add_argument("--grad-clip", type=float, default=1.0, help="0 = off")
        p.add_argument("--ema", type=float, default=ema)
        p.add_argument("--label-drop", type=float, default=0.1)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--data", default=None, help="digits npz (default train/.cache/digits16.npz)")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--ckpt-minutes", type=float, default=5.0)
        p.add_argument("--keep-every", type=int, default=1000, help="EMA milestone every N steps (0 = off)")
        p.add_argument("--log-every", type=int, default=50)
        p.add_argument("--device", default="cpu", help="torch device, e.g. cuda on a lent GPU machine")
        p.add_argument("--compile", action="store_true", help="torch.compile the forward (a few %% faster in the CPU training loop, after ~3 min)")
        p.add_argument("--max-minutes", type=float, default=0,
                       help="stop (and save) after this many minutes of this invocation (0 = no limit)")

    p = sub.add_parser("dense", help="train the dense DiT")
    common(p, "dense", 20000, 6e-4, 500, 0.999)
    p.add_argument("--config-over", default="", help="Python dict literal overriding tiny_config(False) keys")
    p.add_argument("--video", action="store_true", help="the moving-digit Latte (Config::tiny_video(false)) on clips")
    p.add_argument("--init-image", default=None,
                   help="with --video: image DiT weights (.safetensors, e.g. `sparsedit convert "
                        "web/models/dit-tiny-q8_0.gguf -o dit-tiny.safetensors`) for the spatial blocks, or "
                        "a video model's weights to go on from (train/checkpoints/)")
    p.set_defaults(rates=None, fixed_s=0)

    p = sub.add_parser("init-sparse", help="SparseDiT init from the dense EMA")
    p.add_argument("--dense-run", default="dense")
    p.add_argument("--dense-ckpt", default=None, help="default <dense-run>/ema.pt")
    p.add_argument("--run", default="sparse")
    p.add_argument("--layout", default=None,
                   help="pool:sdtm:a,b,c,d:top in blocks; default Config::tiny(true) 1:2:1,2,1,0:1, or for a video "
                        "model Config::tiny_video(true) 2:2:2,4,2,0:2 (pairs)")
    p.add_argument("--semantic-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--force", action="store_true")

    p = sub.add_parser("finetune", help="fine-tune the SparseDiT with timestep-wise pruning")
    common(p, "sparse", 4000, 1e-4, 100, 0.999)
    p.add_argument("--init", default=None,
                   help="start a new run from this SparseDiT checkpoint instead of <run>/init.pt, e.g. "
                        "train/checkpoints/video-sparse-ema.safetensors (ignored when the run resumes)")
    p.add_argument("--rates", default="0.6:0.85", help="r_min:r_max of the paper's rule (N = 64: s 5..3)")
    p.add_argument("--fixed-s", type=int, default=0, help="train at one grid side instead of the schedule")
    p.set_defaults(config_over="", video=False, init_image=None)

    p = sub.add_parser("bench", help="time training steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup-iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)

    a = ap.parse_args()
    if a.cmd == "dense":
        train(a, "dense")
    elif a.cmd == "finetune":
        train(a, "finetune")
    elif a.cmd == "init-sparse":
        init_sparse(a)
    else:
        bench(a)


if __name__ == "__main__":
    main()
