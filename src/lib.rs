//! sparsedit: SparseDiT (token-sparsified Diffusion Transformer) and DiT.
//!
//! - [`config`]: architectures and presets (XL/2 ... tiny), sparse grid schedules.
//! - [`blocks`]: the block walk: every block in forward order, the one place that spells it.
//! - [`engine`]: one engine for the CLI and the page: backend, request checks, sampling driver.
//! - [`model`]: the exact CPU reference forward pass on candle-core (f32).
//! - [`decoder`]: latent decoders (TAESD, SD-VAE) on the CPU.
//! - [`diffusion`]: DiT's Gaussian diffusion: respacing, DDPM (learned range), DDIM, CFG.
//! - [`gguf`]: GGUF v3 packs with F32/F16/Q8_0/Q4_0 tensors, strictly validated.
//! - [`import`]: PyTorch / safetensors checkpoints with the official key names.
//! - [`flops`]: MACs per module, in the official training log's convention.
//! - [`gpu`]: the WebGPU engine (wgpu + WGSL in `shaders/`), checked against [`model`].

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod blocks;
pub mod config;
pub mod convert_stream;
pub mod decoder;
pub mod diffusers;
pub mod diffusion;
pub mod dpm_solver;
pub mod engine;
pub mod error;
pub mod flops;
pub mod gguf;
pub mod gpu;
pub mod grid;
pub mod import;
pub mod model;
pub mod pack;
pub mod stream;
pub mod layout;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use config::{Config, GridSchedule, Layout, SparseLayout};
pub use error::{Error, Result};
