//! Which tokens each block computes, for a given sparse grid: what the page's token view draws
//! (and what the trace of a run reports per step).
//!
//! - Poolingformer blocks (bottom segment) update all N dense tokens, but their attention is one
//!   global token: the mean of V over the whole grid.
//! - In each SDTM (middle segment) the token-merge block pools the n×n grid to s×s sparse tokens
//!   (PyTorch `AdaptiveAvgPool2d` windows, which may overlap) that attend to the dense ones;
//!   semantic blocks run on the s² sparse tokens; the token-recover block brings back N dense
//!   tokens; the SDTM's normal blocks run dense again.
//! - Top blocks (and every block of a dense DiT) run on all N tokens.
//! - Video (Latte): every frame has the same tokens; a spatial block attends over the tokens of
//!   each of the F frames, a temporal block over the F frames of each token position — dense
//!   positions, or pooled cells (with their windows) inside an SDTM.

use serde::Serialize;

use crate::blocks::{Axis, BlockKind, Segment};
use crate::config::Config;
use crate::flops::count_macs;
use crate::model::adaptive_pool_window;

/// One block of the token view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockLayout {
    pub index: usize,
    /// Checkpoint prefix (`dumbbell_blocks.0.token_merge_blocks.0`).
    pub name: String,
    /// `dit`, `poolingformer`, `merge`, `semantic`, `recover`, `normal`, or `pooled` (a plain DiT
    /// block run on pooled tokens: the training-free pooled middle).
    pub kind: BlockKind,
    /// `dense` (a plain DiT), `bottom`, `middle` or `top`.
    pub segment: Segment,
    /// Tokens this block computes (its query / output tokens).
    pub tokens: usize,
    /// `dense` (n×n), `sparse` (s×s pooled) or `global` (one pooled token for attention).
    pub grid: &'static str,
    /// n, s, or 1.
    pub side: usize,
    /// Sparse blocks: each sparse token's pooling window on the dense grid, `[r0, r1, c0, c1]`
    /// half-open, row-major over the s×s tokens. Empty otherwise.
    pub windows: Vec<[usize; 4]>,
    /// MACs of this block at batch 1 (linear + attention, [`count_macs`]'s convention), all
    /// frames.
    pub macs: u64,
    /// `spatial` (over a frame's tokens) or `temporal` (over a token position's frames).
    pub axis: Axis,
    /// Frames per clip (1 for images); every frame computes the same `tokens`.
    pub frames: usize,
    /// Attention sequences the block runs per clip, and the length of each: spatial `frames`
    /// sequences of `tokens`, temporal `tokens` sequences (one per position or pooled cell) of
    /// `frames`.
    pub sequences: usize,
    pub sequence_len: usize,
}

/// Pooling windows of an s×s grid over an n×n one (row-major over the sparse tokens).
pub fn pooling_windows(n: usize, s: usize) -> Vec<[usize; 4]> {
    let mut w = Vec::with_capacity(s * s);
    for i in 0..s {
        let (r0, r1) = adaptive_pool_window(i, n, s);
        for j in 0..s {
            let (c0, c1) = adaptive_pool_window(j, n, s);
            w.push([r0, r1, c0, c1]);
        }
    }
    w
}

/// Every block of `cfg` in forward order at sparse grid side `grid` (ignored for dense models).
pub fn block_layouts(cfg: &Config, grid: usize) -> Vec<BlockLayout> {
    let n = cfg.grid();
    let macs = count_macs(cfg, Some(grid));
    cfg.blocks(grid)
        .into_iter()
        .map(|spec| {
            let (grid_kind, side, windows) = if spec.kind == BlockKind::Poolingformer {
                ("global", 1, vec![])
            } else if spec.sparse() {
                ("sparse", spec.side, pooling_windows(n, spec.side))
            } else {
                ("dense", n, vec![])
            };
            let f = cfg.frames();
            let (sequences, sequence_len) = match spec.axis {
                Axis::Spatial => (f, spec.tokens()),
                Axis::Temporal => (spec.tokens(), f),
            };
            BlockLayout {
                axis: spec.axis,
                frames: f,
                sequences,
                sequence_len,
                index: spec.index,
                macs: macs.get(&spec.prefix).map_or(0, |m| m.total()),
                tokens: spec.tokens(),
                name: spec.prefix,
                kind: spec.kind,
                segment: spec.segment,
                grid: grid_kind,
                side,
                windows,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_sparse_layout() {
        let cfg = Config::tiny(true);
        let l = block_layouts(&cfg, 4);
        let tokens: Vec<usize> = l.iter().map(|b| b.tokens).collect();
        assert_eq!(tokens, [64, 16, 16, 16, 64, 16, 16, 16, 64, 64]);
        let kinds: Vec<&str> = l.iter().map(|b| b.kind.name()).collect();
        assert_eq!(kinds, ["poolingformer", "merge", "semantic", "semantic", "recover", "merge", "semantic", "semantic", "recover", "normal"]);
        assert_eq!(l[1].windows.len(), 16);
        assert_eq!(l[1].windows[0], [0, 2, 0, 2]);
        assert_eq!(l[1].windows[15], [6, 8, 6, 8]);
        assert!(l.iter().all(|b| b.macs > 0), "{l:?}");
        // per-block MACs add up to the blocks' rows of the MAC report
        let macs = count_macs(&cfg, Some(4));
        let blocks: u64 = macs.modules.iter().filter(|m| m.name.contains("blocks")).map(|m| m.total()).sum();
        assert_eq!(l.iter().map(|b| b.macs).sum::<u64>(), blocks);
    }

    #[test]
    fn video_layout_names_axes_and_sequences() {
        let cfg = Config::preset("sparselatte-xl2-ucf101").unwrap();
        let l = block_layouts(&cfg, 8);
        assert_eq!(l.len(), 28);
        // the bottom pair: a Poolingformer over each of 16 frames, then 256 dense positions over 16 frames
        assert_eq!((l[0].axis, l[0].grid, l[0].sequences, l[0].sequence_len), (Axis::Spatial, "global", 16, 256));
        assert_eq!((l[1].axis, l[1].grid, l[1].sequences, l[1].sequence_len), (Axis::Temporal, "dense", 256, 16));
        // a merge pair: 64 pooled tokens per frame, then 64 pooled cells (with windows) over 16 frames
        assert_eq!((l[2].kind, l[2].tokens, l[2].sequences), (BlockKind::Merge, 64, 16));
        assert_eq!((l[3].axis, l[3].grid, l[3].sequences, l[3].sequence_len, l[3].windows.len()), (Axis::Temporal, "sparse", 64, 16, 64));
        assert!(l.iter().all(|b| b.frames == 16 && b.macs > 0));
        let macs = count_macs(&cfg, Some(8));
        let blocks: u64 = macs.modules.iter().filter(|m| m.name.contains("blocks")).map(|m| m.total()).sum();
        assert_eq!(l.iter().map(|b| b.macs).sum::<u64>(), blocks);
    }

    #[test]
    fn overlapping_windows_follow_pytorch() {
        // 8 -> 3: PyTorch AdaptiveAvgPool2d windows [0,3), [2,6), [5,8)
        let w = pooling_windows(8, 3);
        assert_eq!(w[0], [0, 3, 0, 3]);
        assert_eq!(w[4], [2, 6, 2, 6]);
        assert_eq!(w[8], [5, 8, 5, 8]);
    }

    #[test]
    fn dense_layout_is_all_tokens() {
        let cfg = Config::tiny(false);
        let l = block_layouts(&cfg, 4);
        assert_eq!(l.len(), 10);
        assert!(l.iter().all(|b| b.tokens == 64 && b.kind == BlockKind::Dit && b.macs > 0));
    }
}
