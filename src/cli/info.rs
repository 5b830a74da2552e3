//! `info`: what a pack holds (a DiT / SparseDiT model or a latent decoder), read from its header.

use std::collections::HashMap;
use std::path::Path;

use sparsedit::decoder::DecoderConfig;
use sparsedit::gguf::{GgufHeader, MetaValue};
use sparsedit::pack::read_header_file;
use sparsedit::Result;

pub(super) fn info(path: &Path) -> Result<()> {
    let (h, file_len) = read_header_file(path)?;
    if matches!(h.meta("general.architecture").and_then(MetaValue::as_str), Some("taesd" | "sdvae")) {
        return decoder_info(&h, file_len);
    }
    let cfg = sparsedit::pack::config_from_header(&h)?;
    let mut types: HashMap<&str, (usize, usize)> = HashMap::new();
    for t in &h.tensors {
        let e = types.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.nbytes;
    }
    let params: usize = h.tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    println!("architecture: {}", cfg.arch_name());
    if let Some(MetaValue::String(n)) = h.meta("general.name") {
        println!("name: {n}");
    }
    let frames = match cfg.num_frames {
        Some(f) => format!("{f} frames of "),
        None => String::new(),
    };
    println!(
        "input: {frames}{}x{}x{} (patch {}, {} tokens on a {}x{} grid)",
        cfg.in_channels,
        cfg.input_size,
        cfg.input_size,
        cfg.patch_size,
        cfg.num_tokens(),
        cfg.grid(),
        cfg.grid()
    );
    println!(
        "width: {}, heads: {}, mlp: {}, classes: {}{}, learned sigma: {}",
        cfg.hidden_size,
        cfg.num_heads,
        cfg.mlp_hidden,
        cfg.num_classes,
        if cfg.class_null { " (+ null label)" } else if !cfg.is_class_conditional() { " (unconditional)" } else { "" },
        cfg.learn_sigma
    );
    println!("parameters: {params} ({:.2} M, pos_embed included)", params as f64 / 1e6);
    println!("bytes: {file_len} ({:.2} MB)", file_len as f64 / 1e6);
    let mut tys: Vec<_> = types.into_iter().collect();
    tys.sort();
    let tys: Vec<String> = tys.iter().map(|(k, (n, b))| format!("{k}: {n} tensors, {:.2} MB", *b as f64 / 1e6)).collect();
    println!("tensor types: {}", tys.join("; "));
    match cfg.layout {
        sparsedit::Layout::Dense { depth } => println!("layout: dense, {depth} blocks"),
        sparsedit::Layout::Sparse(s) => {
            println!(
                "layout: {} poolingformer, {} SDTM x [merge {}, semantic {}, recover {}, dense {}], {} top; depth {}; semantic size {}",
                s.num_poolingformer,
                s.num_sdtm,
                s.group[0],
                s.group[1],
                s.group[2],
                s.group[3],
                s.num_top,
                cfg.layout.depth(),
                cfg.semantic_size
            );
            if let Some([r_min, r_max]) = cfg.trained_rates {
                println!("fine-tuned with the timestep schedule {r_min}:{r_max} (`sample --schedule trained`)");
            }
        }
    }
    for b in cfg.blocks(cfg.semantic_size) {
        match (cfg.is_video(), b.axis) {
            (false, _) => println!("  {}", b.prefix),
            (true, sparsedit::blocks::Axis::Spatial) => println!("  {} (spatial: over the tokens of each frame)", b.prefix),
            (true, sparsedit::blocks::Axis::Temporal) => println!("  {} (temporal: over the frames of each token position)", b.prefix),
        }
    }
    Ok(())
}

fn decoder_info(h: &GgufHeader, file_len: u64) -> Result<()> {
    let cfg = DecoderConfig::from_header(h)?;
    println!("architecture: {} (latent decoder)", cfg.arch_name());
    if let Some(MetaValue::String(n)) = h.meta("general.name") {
        println!("name: {n}");
    }
    match &cfg {
        DecoderConfig::Taesd(c) => println!("latent channels: {}, width: {}, output channels: {}", c.latent_channels, c.width, c.out_channels),
        DecoderConfig::SdVae(c) => println!(
            "latent channels: {}, block_out_channels: {:?}, layers per block: {}, norm groups: {}, output channels: {}, input = latent / {}",
            c.latent_channels, c.block_out_channels, c.layers_per_block, c.norm_num_groups, c.out_channels, c.scaling_factor
        ),
    }
    println!("upscaling: {}x", cfg.upscale());
    let params: usize = h.tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    println!("parameters: {params} ({:.2} M)", params as f64 / 1e6);
    println!("bytes: {file_len} ({:.2} MB)", file_len as f64 / 1e6);
    Ok(())
}
