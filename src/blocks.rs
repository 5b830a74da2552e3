//! The block walk: every transformer block of a model in forward order, with its kind, its
//! official checkpoint prefix and the tokens it reads and writes at a given sparse grid.
//!
//! This is the one place that spells the order of blocks. The CPU model (`model.rs`), the GPU
//! plan (`gpu/model.rs`), the token view (`layout.rs`), MAC counts (`flops.rs`), `bench` and
//! `random-pack` all walk [`Config::blocks`]; none of them parses a kind back out of a name.
//!
//! Two rules live here and nowhere else:
//! - a token-recover block reads the sparse s×s tokens, except the second and later recover
//!   blocks of an SDTM, which read the first one's dense output (nearest upsampling from n to n
//!   is then the identity);
//! - the training-free pooled middle of a plain DiT: blocks `start..end` run on the pooled grid,
//!   pooled on entry and added back to the dense tokens on exit (see [`PooledMiddle`]);
//! - in a video model (Latte) blocks alternate spatial / temporal ([`Axis`]): even positions of
//!   every list attend over the tokens of a frame, odd ones over the frames of a token position.
//!   In a sparse video layout only the spatial block of a pair is a Poolingformer, merge or
//!   recover block; its temporal partner is a plain DiT block on whatever grid the pair leaves
//!   (pooled cells after a merge, dense positions after a recover).

use serde::Serialize;

use crate::config::{Config, Layout, PooledMiddle};

/// What a block computes, and so which weights it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// A plain DiT block of a dense model (`blocks.{i}`) on all N tokens.
    Dit,
    /// A plain DiT block of a dense model run on the s×s pooled tokens (training-free pooled
    /// middle): DiT weights, sparse tokens.
    Pooled,
    /// SparseDiT's bottom segment (`poolingformer_blocks.{i}`): the attention is replaced by the
    /// global mean of V.
    Poolingformer,
    /// SDTM token merge (`dumbbell_blocks.{k}.token_merge_blocks.{j}`): the sparse tokens attend
    /// to the module's dense input.
    Merge,
    /// SDTM semantic block (`semantic_blocks.{j}`): a DiT block on the sparse tokens.
    Semantic,
    /// SDTM token recover (`token_recover_blocks.{j}`): back to the dense grid.
    Recover,
    /// A DiT block on dense tokens inside an SDTM (`dumbbell_blocks.{k}.normal_blocks.{j}`) or
    /// in the top segment (`normal_blocks.{i}`).
    Normal,
}

/// The weight set of a block: which projections it loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockWeights {
    /// `attn.qkv`, `attn.proj`, `mlp`, `adaLN_modulation.1`.
    Dit,
    /// `attn.v`, `attn.proj`, `mlp`, `adaLN_modulation.1`.
    Poolingformer,
    /// `attn.q`, `attn.kv`, `attn.proj`, `mlp`, `adaLN_modulation.1`.
    Merge,
    /// As [`BlockWeights::Merge`], plus `merged_layer1` / `merged_layer2`.
    Recover,
}

impl BlockKind {
    /// The page's and the trace's name of the kind (`dit`, `pooled`, `poolingformer`, `merge`,
    /// `semantic`, `recover`, `normal`).
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Dit => "dit",
            BlockKind::Pooled => "pooled",
            BlockKind::Poolingformer => "poolingformer",
            BlockKind::Merge => "merge",
            BlockKind::Semantic => "semantic",
            BlockKind::Recover => "recover",
            BlockKind::Normal => "normal",
        }
    }

    pub fn weights(self) -> BlockWeights {
        match self {
            BlockKind::Dit | BlockKind::Pooled | BlockKind::Semantic | BlockKind::Normal => BlockWeights::Dit,
            BlockKind::Poolingformer => BlockWeights::Poolingformer,
            BlockKind::Merge => BlockWeights::Merge,
            BlockKind::Recover => BlockWeights::Recover,
        }
    }

    /// Merge and recover blocks have a cross-attention map the token view can show.
    pub fn has_cross_attention(self) -> bool {
        matches!(self, BlockKind::Merge | BlockKind::Recover)
    }
}

/// What a block's attention runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    /// Over the tokens of one image / frame: (B·F, T, C). Every block of an image model.
    Spatial,
    /// Over the frames of one token position (Latte's odd blocks): (B·T, F, C).
    Temporal,
}

/// Which third of the model a block is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// Every block of a plain DiT run dense.
    Dense,
    /// SparseDiT's Poolingformer blocks.
    Bottom,
    /// SparseDiT's SDTMs, or a plain DiT's pooled middle.
    Middle,
    /// SparseDiT's top normal blocks.
    Top,
}

/// One block of the walk at one sparse grid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Position in forward order.
    pub index: usize,
    pub kind: BlockKind,
    pub axis: Axis,
    pub segment: Segment,
    /// Official checkpoint prefix (`blocks.3`, `dumbbell_blocks.0.token_merge_blocks.0`).
    pub prefix: String,
    /// The SDTM (`dumbbell_blocks.{k}`) a SparseDiT middle block belongs to.
    pub sdtm: Option<usize>,
    /// Grid side of the tokens the block reads as its residual input (s or n). A recover block
    /// reads these as its sparse side and outputs the dense grid.
    pub in_side: usize,
    /// Grid side of the tokens the block outputs (its queries): n dense, s sparse.
    pub side: usize,
    /// Before this block the dense tokens are pooled to the s×s grid (`adaptive_avg_pool`): the
    /// first block of an SDTM, or of a pooled middle. The dense tokens at that point stay
    /// available: an SDTM's merge and recover blocks read them, a pooled middle adds its update
    /// back onto them.
    pub pool_before: bool,
    /// After this block the pooled middle ends: `h += up(x - pool(h))` on the dense tokens.
    pub unpool_after: bool,
}

impl BlockSpec {
    /// Tokens the block outputs (side²).
    pub fn tokens(&self) -> usize {
        self.side * self.side
    }

    /// Whether the block outputs the s×s pooled tokens (pooled middle, merge, semantic).
    pub fn sparse(&self) -> bool {
        matches!(self.kind, BlockKind::Pooled | BlockKind::Merge | BlockKind::Semantic)
    }

    /// Tokens of its residual input (in_side²).
    pub fn in_tokens(&self) -> usize {
        self.in_side * self.in_side
    }
}

/// Sub-block lists of an SDTM in forward order, with their checkpoint names and kinds.
pub const SDTM_PARTS: [(&str, BlockKind); 4] = [
    ("token_merge_blocks", BlockKind::Merge),
    ("semantic_blocks", BlockKind::Semantic),
    ("token_recover_blocks", BlockKind::Recover),
    ("normal_blocks", BlockKind::Normal),
];

impl Config {
    /// Every block in forward order at sparse grid side `grid`. A model that does not use the
    /// grid ([`Config::uses_grid`]) ignores it; one that does needs `grid >= 1` (callers check:
    /// [`Config::check_grid`]). Kinds and prefixes — all the weights depend on — are the same at
    /// every grid, except that a pooled-middle block ([`BlockKind::Pooled`]) is a
    /// [`BlockKind::Dit`] at a grid as fine as the dense one; both have DiT weights.
    pub fn blocks(&self, grid: usize) -> Vec<BlockSpec> {
        let n = self.grid();
        let video = self.is_video();
        // In a video model the odd position of every list is the temporal block of a pair.
        let axis_of = |j: usize| if video && j % 2 == 1 { Axis::Temporal } else { Axis::Spatial };
        let mut out: Vec<BlockSpec> = Vec::with_capacity(self.layout.depth());
        let mut push = |kind, axis, segment, prefix: String, sdtm, in_side, side, pool_before| {
            out.push(BlockSpec { index: out.len(), kind, axis, segment, prefix, sdtm, in_side, side, pool_before, unpool_after: false });
        };
        match &self.layout {
            Layout::Dense { depth } => {
                let pm: Option<PooledMiddle> = self.pooled_middle_at(grid);
                for i in 0..*depth {
                    let axis = axis_of(i);
                    match pm {
                        Some(pm) if pm.contains(i) => {
                            push(BlockKind::Pooled, axis, Segment::Middle, format!("blocks.{i}"), None, grid, grid, i == pm.start)
                        }
                        _ => push(BlockKind::Dit, axis, Segment::Dense, format!("blocks.{i}"), None, n, n, false),
                    }
                }
                if let Some(pm) = pm {
                    out[pm.end - 1].unpool_after = true;
                }
            }
            Layout::Sparse(sl) => {
                let s = grid;
                for i in 0..sl.num_poolingformer {
                    let (kind, axis) = match axis_of(i) {
                        Axis::Spatial => (BlockKind::Poolingformer, Axis::Spatial),
                        Axis::Temporal => (BlockKind::Normal, Axis::Temporal),
                    };
                    push(kind, axis, Segment::Bottom, format!("poolingformer_blocks.{i}"), None, n, n, false);
                }
                for k in 0..sl.num_sdtm {
                    let mut side = s; // tokens of the running hidden state inside the module
                    let mut first = true;
                    for ((part, kind), &count) in SDTM_PARTS.iter().zip(sl.group.iter()) {
                        for j in 0..count {
                            let prefix = format!("dumbbell_blocks.{k}.{part}.{j}");
                            let axis = axis_of(j);
                            let (kind, out_side) = match (axis, *kind) {
                                // A recover block brings the tokens back to the dense grid.
                                (Axis::Spatial, BlockKind::Recover) => (BlockKind::Recover, n),
                                (Axis::Spatial, kind) => (kind, side),
                                // A temporal partner is a DiT block on the grid its pair left.
                                (Axis::Temporal, BlockKind::Recover | BlockKind::Normal) => (BlockKind::Normal, side),
                                (Axis::Temporal, _) => (BlockKind::Semantic, side),
                            };
                            push(kind, axis, Segment::Middle, prefix, Some(k), side, out_side, first);
                            side = out_side;
                            first = false;
                        }
                    }
                }
                for i in 0..sl.num_top {
                    push(BlockKind::Normal, axis_of(i), Segment::Top, format!("normal_blocks.{i}"), None, n, n, false);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SparseLayout;

    #[test]
    fn sparsedit_xl2_walk() {
        let cfg = Config::preset("sparsedit-xl2-256").unwrap();
        let b = cfg.blocks(8);
        assert_eq!(b.len(), 28);
        assert_eq!((b[0].kind, b[0].prefix.as_str(), b[0].side), (BlockKind::Poolingformer, "poolingformer_blocks.0", 16));
        assert_eq!((b[1].kind, b[1].prefix.as_str()), (BlockKind::Merge, "dumbbell_blocks.0.token_merge_blocks.0"));
        assert!(b[1].pool_before && !b[2].pool_before);
        assert_eq!((b[1].in_side, b[1].side), (8, 8));
        assert_eq!((b[4].kind, b[4].prefix.as_str()), (BlockKind::Semantic, "dumbbell_blocks.0.semantic_blocks.2"));
        assert_eq!((b[5].kind, b[5].in_side, b[5].side), (BlockKind::Recover, 8, 16));
        assert_eq!((b[6].kind, b[6].prefix.as_str(), b[6].side), (BlockKind::Normal, "dumbbell_blocks.0.normal_blocks.0", 16));
        assert!(b[7].pool_before && b[7].sdtm == Some(1));
        assert_eq!((b[27].kind, b[27].segment, b[27].prefix.as_str()), (BlockKind::Normal, Segment::Top, "normal_blocks.2"));
        assert!(b.iter().enumerate().all(|(i, s)| s.index == i && !s.unpool_after));
    }

    #[test]
    fn second_recover_block_reads_dense_tokens() {
        let mut cfg = Config::tiny(true);
        cfg.layout = Layout::Sparse(SparseLayout { num_poolingformer: 0, num_sdtm: 1, group: [1, 0, 2, 1], num_top: 0 });
        let b = cfg.blocks(3);
        let sides: Vec<(BlockKind, usize, usize)> = b.iter().map(|s| (s.kind, s.in_side, s.side)).collect();
        assert_eq!(
            sides,
            [(BlockKind::Merge, 3, 3), (BlockKind::Recover, 3, 8), (BlockKind::Recover, 8, 8), (BlockKind::Normal, 8, 8)]
        );
    }

    #[test]
    fn pooled_middle_walk() {
        let cfg = Config::tiny(false).with_pooled_middle(Some(PooledMiddle { start: 2, end: 8 })).unwrap();
        let b = cfg.blocks(4);
        let kinds: Vec<BlockKind> = b.iter().map(|s| s.kind).collect();
        assert_eq!(kinds[..3], [BlockKind::Dit, BlockKind::Dit, BlockKind::Pooled]);
        assert_eq!(kinds[7..], [BlockKind::Pooled, BlockKind::Dit, BlockKind::Dit]);
        assert!(b[2].pool_before && b[7].unpool_after);
        assert_eq!(b.iter().filter(|s| s.pool_before || s.unpool_after).count(), 2);
        assert_eq!((b[5].side, b[5].segment), (4, Segment::Middle));
        // At the dense grid the pooled middle is off: a plain walk.
        assert!(cfg.blocks(8).iter().all(|s| s.kind == BlockKind::Dit && s.side == 8 && !s.pool_before));
    }
}
