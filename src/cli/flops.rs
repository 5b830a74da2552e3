//! `flops`: MACs of one forward pass per module, for a preset or a pack.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use sparsedit::config::{Config, PooledMiddle};
use sparsedit::flops::count_macs;
use sparsedit::pack::read_header_file;
use sparsedit::{Error, Result};

#[derive(Args)]
pub(super) struct FlopsArgs {
    /// A preset: dit-xl2-256, dit-xl2-512, sparsedit-xl2-256, sparsedit-xl2-512, dit-b2, sparsedit-tiny,
    /// latte-xl2-ucf101, sparselatte-xl2-ucf101, ...
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    preset: Option<String>,
    /// A pack.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Sparse grid side s (default: the model's semantic size).
    #[arg(long)]
    semantic_size: Option<usize>,
    /// Count the model's widths with another sparse layout: POOL,SDTM,a:b:c:d,TOP in blocks (e.g.
    /// 1,4,1:3:1:1,3; a video model's counts are even: (spatial, temporal) pairs).
    #[arg(long, conflicts_with = "pooled_middle")]
    layout: Option<String>,
    /// Count a plain DiT with the training-free pooled middle: START:END or `default`.
    #[arg(long)]
    pooled_middle: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub(super) fn flops(a: FlopsArgs) -> Result<()> {
    let cfg = match (&a.preset, &a.model) {
        (Some(p), _) => Config::preset(p)?,
        (None, Some(m)) => sparsedit::pack::config_from_header(&read_header_file(m)?.0)?,
        (None, None) => return Err(Error::InvalidArgument("give --preset or --model".into())),
    };
    let mut cfg = cfg;
    if let Some(l) = &a.layout {
        cfg.layout = sparsedit::Layout::Sparse(sparsedit::import::parse_layout(l)?);
        cfg.validate()?;
    }
    if let Some(pm) = &a.pooled_middle {
        cfg.pooled_middle = Some(PooledMiddle::parse(pm, cfg.layout.depth())?);
        cfg.validate()?;
    }
    let report = count_macs(&cfg, a.semantic_size);
    let mut stdout = std::io::stdout().lock();
    let title = match (&a.preset, &a.model) {
        (Some(p), _) => p.clone(),
        (_, Some(m)) => m.display().to_string(),
        _ => String::new(),
    };
    let text = if a.json { report.to_json() } else { report.to_markdown(&title) };
    writeln!(stdout, "{text}").map_err(|e| Error::Io { path: "stdout".into(), source: e })
}
