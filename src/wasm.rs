//! The browser boundary: one `#[wasm_bindgen]` newtype, [`Engine`], over the library's
//! [`crate::engine::Engine`] (the same request checks and sampling driver as the CLI). Errors
//! become JS `Error`s with the library's one-line message and a `kind` (the snake_case of
//! [`Error::kind`], e.g. `device_lost`, `invalid_argument`); panics are reported to the console
//! by `console_error_panic_hook` (and the page shows the rejected promise), never silently.
//!
//! JS contract (the page in `web/` relies on it):
//! ```text
//! class Engine {
//!   static create(prefer_gpu: boolean): Promise<Engine>   // WebGPU when available and wanted, else the CPU (candle) path
//!   backend(): "webgpu" | "cpu"
//!   gpu_limits(): { max_buffer_size, max_storage_buffer_binding_size } | null
//!   adapter(): string                     // adapter description, or why WebGPU is unavailable
//!   begin_load(expected_size?: number, expected_sha256_hex?: string): void  // starts (or restarts) a streamed load
//!   push(chunk: Uint8Array): void         // throws on corrupt data (bad magic / header, more bytes than announced)
//!   bytes_received(): number
//!   finish_load(): ModelInfo              // throws on truncation, size or sha256 mismatch, wrong tensors
//!   begin_convert(config_json: string | null, quant: "q8_0"|"q4_0"|"f16"|"f32", size?: number,
//!                 sha256?: string, name?: string): void  // a safetensors checkpoint (diffusers' DiT
//!                                         // layout + its config.json, or official names) -> a pack
//!   push_convert(chunk: Uint8Array): Uint8Array  // the pack bytes ready (often empty): store them and
//!                                         // push() them into a begin_load()ed stream
//!   convert_pack_size(): number | null    // the pack's size, once the checkpoint's header is in
//!   finish_convert(): ConvertInfo         // throws on truncation, size or sha256 mismatch of the SOURCE
//!   abort_convert(): void                 // drops the conversion and any load in progress
//!   model_info(): ModelInfo | null
//!   layout(grid: number): BlockInfo[]     // token view at sparse grid side `grid` (dense models ignore it)
//!   run_plan(opts): { grids: number[], timesteps: number[], macs }  // what generate(opts) would run:
//!                                         // the grid and timestep of each step, MACs of all blocks
//!   generate(opts, on_step: (step) => void | Promise): Promise<result>  // on the CPU path a
//!                                         // Promise from on_step is awaited before the next step
//!   cancel(): void                        // the running generate stops after its current step
//!   block_times(grid: number): Promise<{name, ms}[] | null>   // GPU ms per block (timestamp queries)
//!   load_decoder(bytes: Uint8Array, expected_sha256?: string): DecoderInfo  // TAESD / SD-VAE pack
//!   unload_decoder(): void                // while loaded, generate also returns `decoded`
//!   decode(latent: Float32Array, num): Promise<decoded>  // num latent images (num, C, I, I), e.g. a step's pred_x0;
//!                                                        // a video model's clips are num·F images
//!   set_pooled_middle(spec: "START:END" | "default" | null): [start, end] | null  // plain DiT only:
//!                                         // training-free sparsification (middle blocks on the pooled grid)
//! }
//! ModelInfo = { arch: "dit"|"sparsedit"|"latte"|"sparselatte", name, input_size, in_channels,
//!               num_classes, depth, dense_grid, default_grid, params, bytes, sha256,
//!               frames?: F (video: latents and images are (num, F, C, I, I)),
//!               default_cfg (the official sampling script's guidance scale: 4 DiT, 7 Latte),
//!               trained_rates?: [r_min, r_max] (the schedule a SparseDiT pack was fine-tuned with),
//!               backend: "webgpu"|"cpu" }
//! BlockInfo = { index, name, kind: "dit"|"poolingformer"|"merge"|"semantic"|"recover"|"normal"|"pooled",
//!               segment: "dense"|"bottom"|"middle"|"top", tokens, grid: "dense"|"sparse"|"global",
//!               side, windows: [[r0, r1, c0, c1], ...], macs, axis: "spatial"|"temporal", frames,
//!               sequences, sequence_len }  // video: spatial = F sequences of `tokens`,
//!                                          // temporal = `tokens` positions / pooled cells of F frames
//! opts   = { label, seed, steps, sampler: "ddim"|"ddpm"|"dpm-solver++", eta, cfg, cfg_all_channels, respacing,
//!            sparsity: "dense"|"fixed"|"schedule", grid, r_min, r_max, num, trace, preview }
//!            (all optional; respacing defaults to `steps`, as the official sample.py)
//! step   = { iter, total, timestep, grid, ms, pred_x0?: Float32Array,
//!            attention?: [{ block, name, kind: "merge"|"recover", q, k, probs: Float32Array }] }
//! result = { image: Float32Array, channels, size, shape, ms_total, ms_steps: number[], grids: number[], cancelled,
//!            (after a cancel, image is the partly denoised latent)
//!            decoded?: { image: Float32Array (in [-1, 1]), channels: 3, size: 8 * size, ms, decoder } }
//! ConvertInfo = { layout: "diffusers"|"official", arch, source_bytes, source_sha256, pack_bytes,
//!                 peak_buffered }
//! decoder_pack_from_diffusers(safetensors, config_json, quant, name?) (a free function): a
//!   diffusers AutoencoderTiny / AutoencoderKL as a decoder pack (Uint8Array) for load_decoder
//! plan_diffusers_pack(config_json, quant, name?) (a free function): what a diffusers DiT's pack
//!   will take before any weight arrives: { arch, params, pack_bytes, tensor_bytes,
//!   largest_tensor_bytes, input_size, num_classes, depth, hidden_size }
//! DecoderInfo = { arch: "taesd"|"sdvae", latent_channels, out_channels, upscale, params, bytes, sha256,
//!                 backend: "webgpu"|"cpu", gpu_bytes: number | null, f16_weights }
//! ```
//! A device loss makes `generate` (or any GPU call) reject with an error of kind `device_lost`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::config::{Config, GridSchedule, PooledMiddle};
use crate::convert_stream::{plan_pack, ConvertStream};
use crate::decoder::{Decoder, DecoderConfig};
use crate::diffusion::SamplerKind;
use crate::engine::{Engine as Core, Net, SampleRequest};
use crate::error::Error;
use crate::gpu::decoder::GpuDecoder;
use crate::gpu::model::GpuStreamSink;
use crate::gpu::sample::StepAttention;
use crate::gpu::Gpu;
use crate::layout::block_layouts;
use crate::stream::{sha256_hex, KeepAll, PackStream, TensorSink};

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// A JS `Error` with the library's message and its `kind` (the page switches on the kind, never
/// on the text).
fn js_err(e: impl Into<Error>) -> JsValue {
    let e: Error = e.into();
    let err = js_sys::Error::new(&e.to_string());
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(&err, &"kind".into(), &e.kind().into());
    err.into()
}

/// An error of the boundary's own (no model loaded, a run in progress): an invalid call.
fn call_err(msg: impl Into<String>) -> JsValue {
    js_err(Error::InvalidArgument(msg.into()))
}

fn to_js<T: Serialize>(v: &T) -> Result<JsValue, JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| js_err(Error::arg(format!("to JS: {e}"))))
}

struct Loaded {
    engine: Core,
    info: ModelInfo,
}

impl Loaded {
    fn cfg(&self) -> &Config {
        self.engine.cfg()
    }
}

enum Sink {
    Gpu(GpuStreamSink),
    Cpu(KeepAll),
}

impl TensorSink for Sink {
    fn header(&mut self, header: &crate::gguf::GgufHeader, cfg: &Config) -> crate::error::Result<()> {
        match self {
            Sink::Gpu(s) => s.header(header, cfg),
            Sink::Cpu(s) => s.header(header, cfg),
        }
    }

    fn tensor(&mut self, info: &crate::gguf::TensorInfo, bytes: Vec<u8>) -> crate::error::Result<()> {
        match self {
            Sink::Gpu(s) => s.tensor(info, bytes),
            Sink::Cpu(s) => s.tensor(info, bytes),
        }
    }
}

struct Inner {
    gpu: Option<Rc<Gpu>>,
    adapter: String,
    loading: Option<(PackStream, Sink)>,
    /// A checkpoint being converted to a pack (its output is pushed into `loading` by the page).
    converting: Option<ConvertStream>,
    loaded: Option<Rc<Loaded>>,
    decoder: Option<Rc<LoadedDecoder>>,
}

/// A latent decoder for the final image. On a software adapter (SwiftShader) it runs on the CPU
/// path: the WGSL conv is barrier-bound there and orders of magnitude slower.
enum DecoderNet {
    Gpu(GpuDecoder),
    Cpu(Decoder),
}

struct LoadedDecoder {
    net: DecoderNet,
    cfg: DecoderConfig,
}

#[derive(Serialize)]
struct DecoderInfo {
    arch: &'static str,
    latent_channels: usize,
    out_channels: usize,
    upscale: usize,
    params: usize,
    bytes: usize,
    sha256: String,
    backend: &'static str,
    /// Weight bytes on the GPU (null on the CPU path), and how many weights are stored as f16
    /// there (an f16 pack's conv / attention weights: half the bytes).
    gpu_bytes: Option<usize>,
    f16_weights: usize,
}

#[derive(Clone, Serialize)]
struct ModelInfo {
    arch: &'static str,
    name: String,
    input_size: usize,
    in_channels: usize,
    num_classes: usize,
    depth: usize,
    dense_grid: usize,
    default_grid: usize,
    params: usize,
    bytes: u64,
    sha256: String,
    /// Frames per clip of a video model (latents (num, F, C, I, I)); absent for images.
    #[serde(skip_serializing_if = "Option::is_none")]
    frames: Option<usize>,
    /// The guidance scale the official sampling script uses for this family (DiT 4, Latte 7), as
    /// the CLI's default; the page starts its CFG field there.
    default_cfg: f64,
    /// `[r_min, r_max]` of the timestep schedule a SparseDiT pack records its fine-tuning with;
    /// the page starts its schedule fields there.
    #[serde(skip_serializing_if = "Option::is_none")]
    trained_rates: Option<[f64; 2]>,
    /// Where this model runs: "webgpu", or "cpu" (no adapter, or WebGPU turned off).
    backend: &'static str,
}

#[derive(Deserialize)]
#[serde(default)]
struct GenerateOptions {
    label: i64,
    seed: u64,
    steps: usize,
    sampler: String,
    eta: f64,
    cfg: f64,
    cfg_all_channels: bool,
    respacing: Option<String>,
    sparsity: String,
    grid: usize,
    r_min: f64,
    r_max: f64,
    num: usize,
    trace: bool,
    preview: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            label: 0,
            seed: 0,
            steps: 50,
            sampler: "ddim".into(),
            eta: 0.0,
            cfg: 4.0,
            cfg_all_channels: false,
            respacing: None,
            sparsity: "fixed".into(),
            grid: 0,
            r_min: 0.6,
            r_max: 0.85,
            num: 1,
            trace: false,
            preview: true,
        }
    }
}

/// Most images one page run samples (the page's batch control; memory of a browser tab).
const MAX_IMAGES: usize = 16;

impl GenerateOptions {
    fn from_js(opts: JsValue) -> Result<GenerateOptions, Error> {
        if opts.is_undefined() || opts.is_null() {
            return Ok(GenerateOptions::default());
        }
        serde_wasm_bindgen::from_value(opts).map_err(|e| Error::arg(format!("generate options: {e}")))
    }

    /// The engine's request for a model of `cfg` (checked by the engine, as the CLI's is).
    fn request(&self, cfg: &Config) -> Result<SampleRequest, Error> {
        if !(1..=MAX_IMAGES).contains(&self.num) {
            return Err(Error::arg(format!("number of images {} is outside 1..={MAX_IMAGES}", self.num)));
        }
        let schedule = match self.sparsity.as_str() {
            "dense" => GridSchedule::Fixed(cfg.grid()),
            "fixed" => GridSchedule::Fixed(if self.grid == 0 { cfg.semantic_size } else { self.grid }),
            "schedule" => GridSchedule::Timestep { r_min: self.r_min, r_max: self.r_max },
            other => return Err(Error::arg(format!("sparsity {other:?} is not dense, fixed or schedule"))),
        };
        Ok(SampleRequest {
            label: self.label,
            num: self.num,
            steps: self.steps,
            sampler: SamplerKind::parse(&self.sampler, self.eta)?,
            respacing: self.respacing.clone().filter(|r| !r.trim().is_empty()),
            cfg_scale: self.cfg,
            guide_all_channels: self.cfg_all_channels,
            seed: self.seed,
            schedule: Some(schedule),
            latent: None,
            preview: self.preview,
            trace: self.trace,
        })
    }
}

#[derive(Serialize)]
struct StepOut {
    iter: usize,
    total: usize,
    timestep: usize,
    grid: usize,
    ms: f64,
}

/// A step's attention maps as JS objects.
fn attention_js(maps: &[StepAttention]) -> Result<JsValue, JsValue> {
    let arr = js_sys::Array::new();
    for a in maps {
        let obj = js_sys::Object::new();
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&obj, &k.into(), &v).map(|_| ());
        set("block", (a.block as f64).into())?;
        set("name", a.name.as_str().into())?;
        set("kind", a.kind.name().into())?;
        set("q", (a.tq as f64).into())?;
        set("k", (a.tk as f64).into())?;
        set("probs", js_sys::Float32Array::from(a.probs.as_slice()).into())?;
        arr.push(&obj);
    }
    Ok(arr.into())
}

/// Milliseconds since the epoch (`Instant` does not exist in the browser).
fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// The engine behind the page: a WebGPU device (or the CPU path) and one loaded model.
#[wasm_bindgen]
pub struct Engine {
    inner: Rc<RefCell<Inner>>,
    cancel: Rc<Cell<bool>>,
    busy: Rc<Cell<bool>>,
}

#[wasm_bindgen]
impl Engine {
    /// Open WebGPU (when `prefer_gpu` and the browser has it), else use the CPU path.
    pub async fn create(prefer_gpu: bool) -> Result<Engine, JsValue> {
        let (gpu, adapter) = if prefer_gpu {
            match Gpu::new().await {
                Ok(g) => {
                    let d = g.describe();
                    (Some(Rc::new(g)), d)
                }
                Err(e) => (None, format!("WebGPU unavailable ({e}): running on the CPU")),
            }
        } else {
            (None, "CPU (WebGPU not requested)".to_string())
        };
        Ok(Engine {
            inner: Rc::new(RefCell::new(Inner { gpu, adapter, loading: None, converting: None, loaded: None, decoder: None })),
            cancel: Rc::new(Cell::new(false)),
            busy: Rc::new(Cell::new(false)),
        })
    }

    pub fn backend(&self) -> String {
        if self.inner.borrow().gpu.is_some() { "webgpu" } else { "cpu" }.into()
    }

    /// The adapter's buffer limits the engine runs with, `{ max_buffer_size,
    /// max_storage_buffer_binding_size }` in bytes, or null on the CPU path: what a model's
    /// buffers are checked against before a download.
    pub fn gpu_limits(&self) -> Result<JsValue, JsValue> {
        match &self.inner.borrow().gpu {
            Some(g) => to_js(&serde_json::json!({
                "max_buffer_size": g.limits.max_buffer_size as f64,
                "max_storage_buffer_binding_size": g.limits.max_storage_buffer_binding_size as f64,
            })),
            None => Ok(JsValue::NULL),
        }
    }

    pub fn adapter(&self) -> String {
        self.inner.borrow().adapter.clone()
    }

    /// Start a streamed load (drops any load in progress; the loaded model stays until
    /// `finish_load` succeeds).
    pub fn begin_load(&self, expected_size: Option<f64>, expected_sha256: Option<String>) -> Result<(), JsValue> {
        let size = byte_count(expected_size)?;
        let stream = PackStream::new(size, expected_sha256.as_deref()).map_err(js_err)?;
        let mut inner = self.inner.borrow_mut();
        let sink = match &inner.gpu {
            Some(g) => Sink::Gpu(GpuStreamSink::new(g.clone())),
            None => Sink::Cpu(KeepAll::default()),
        };
        inner.loading = Some((stream, sink));
        Ok(())
    }

    /// Feed the next bytes of the pack.
    pub fn push(&self, chunk: &[u8]) -> Result<(), JsValue> {
        let mut inner = self.inner.borrow_mut();
        let (stream, sink) = inner.loading.as_mut().ok_or_else(|| call_err("push before begin_load"))?;
        let r = stream.push(chunk, sink);
        if r.is_err() {
            inner.loading = None; // free what was uploaded so far
        }
        r.map_err(js_err)
    }

    pub fn bytes_received(&self) -> f64 {
        self.inner.borrow().loading.as_ref().map_or(0.0, |(s, _)| s.received() as f64)
    }

    /// Verify the whole pack and build the model; returns its ModelInfo.
    pub fn finish_load(&self) -> Result<JsValue, JsValue> {
        let mut inner = self.inner.borrow_mut();
        let (stream, mut sink) = inner.loading.take().ok_or_else(|| call_err("finish_load before begin_load"))?;
        let summary = stream.finish(&mut sink).map_err(js_err)?;
        let cfg = summary.cfg.clone();
        let engine = match sink {
            Sink::Gpu(s) => {
                let gpu = inner.gpu.clone().ok_or_else(|| call_err("the GPU went away during the load"))?;
                Core::from_source(Some(gpu), cfg.clone(), &s)
            }
            Sink::Cpu(s) => Core::from_tensors(None, cfg.clone(), s.into_tensor_map().map_err(js_err)?),
        }
        .map_err(js_err)?;
        let name = summary.header.meta("general.name").and_then(|v| v.as_str()).unwrap_or("model").to_string();
        let info = ModelInfo {
            arch: cfg.arch_name(),
            name,
            input_size: cfg.input_size,
            in_channels: cfg.in_channels,
            num_classes: cfg.num_classes,
            depth: cfg.layout.depth(),
            dense_grid: cfg.grid(),
            default_grid: cfg.semantic_size,
            params: cfg.num_parameters(),
            bytes: summary.bytes,
            sha256: summary.sha256,
            frames: cfg.num_frames,
            default_cfg: SampleRequest::official_for(&cfg).cfg_scale,
            trained_rates: cfg.trained_rates,
            backend: if engine.gpu().is_some() { "webgpu" } else { "cpu" },
        };
        let js = to_js(&info)?;
        inner.loaded = Some(Rc::new(Loaded { engine, info }));
        Ok(js)
    }

    /// Start converting a safetensors checkpoint into a pack of type `quant` (drops any
    /// conversion in progress). `config_json`: diffusers' transformer `config.json` (needed for
    /// diffusers' layout); `expected_size` / `expected_sha256`: of the checkpoint, checked by
    /// `finish_convert`; `name`: the pack's `general.name`.
    pub fn begin_convert(
        &self,
        config_json: Option<String>,
        quant: String,
        expected_size: Option<f64>,
        expected_sha256: Option<String>,
        name: Option<String>,
    ) -> Result<(), JsValue> {
        let quant = crate::gguf::TensorType::parse(&quant).map_err(js_err)?;
        let size = byte_count(expected_size)?;
        let sha = expected_sha256.filter(|s| !s.is_empty());
        let mut c = ConvertStream::new(config_json.as_deref(), quant, size, sha.as_deref()).map_err(js_err)?;
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            c = c.with_name(&n);
        }
        self.inner.borrow_mut().converting = Some(c);
        Ok(())
    }

    /// Feed the next checkpoint bytes; returns the pack bytes ready (possibly none).
    pub fn push_convert(&self, chunk: &[u8]) -> Result<Vec<u8>, JsValue> {
        let mut inner = self.inner.borrow_mut();
        let c = inner.converting.as_mut().ok_or_else(|| call_err("push_convert before begin_convert"))?;
        let r = c.push(chunk);
        if r.is_err() {
            inner.converting = None;
        }
        r.map_err(js_err)
    }

    /// The pack's size once the checkpoint's header has arrived, else null.
    pub fn convert_pack_size(&self) -> Option<f64> {
        self.inner.borrow().converting.as_ref().and_then(|c| c.pack_size()).map(|n| n as f64)
    }

    /// Check the whole checkpoint (size, sha256) and that every pack byte went out.
    pub fn finish_convert(&self) -> Result<JsValue, JsValue> {
        let c = self.inner.borrow_mut().converting.take().ok_or_else(|| call_err("finish_convert before begin_convert"))?;
        let s = c.finish().map_err(js_err)?;
        to_js(&serde_json::json!({
            "layout": s.layout.name(),
            "arch": s.cfg.arch_name(),
            "source_bytes": s.source_bytes as f64,
            "source_sha256": s.source_sha256,
            "pack_bytes": s.pack_bytes as f64,
            "peak_buffered": s.peak_buffered as f64,
        }))
    }

    /// Drop the conversion and any streamed load in progress (a failed or cancelled download).
    pub fn abort_convert(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.converting = None;
        inner.loading = None;
    }

    pub fn model_info(&self) -> Result<JsValue, JsValue> {
        match &self.inner.borrow().loaded {
            Some(l) => to_js(&l.info),
            None => Ok(JsValue::NULL),
        }
    }

    /// Per-block token layout at sparse grid side `grid`.
    pub fn layout(&self, grid: usize) -> Result<JsValue, JsValue> {
        let loaded = self.inner.borrow().loaded.clone().ok_or_else(|| call_err("no model loaded"))?;
        check_grid(loaded.cfg(), grid).map_err(js_err)?;
        to_js(&block_layouts(loaded.cfg(), grid))
    }

    /// What `generate(opts)` would run, checked as `generate` checks it: the sparse grid and
    /// timestep of every step (the noisiest first) and the MACs of all transformer blocks over
    /// the run, both CFG halves included (`{ grids, timesteps, macs }`).
    pub fn run_plan(&self, opts: JsValue) -> Result<JsValue, JsValue> {
        let loaded = self.inner.borrow().loaded.clone().ok_or_else(|| call_err("no model loaded"))?;
        let cfg = loaded.cfg();
        let plan = GenerateOptions::from_js(opts).and_then(|o| o.request(cfg)).and_then(|r| r.plan(cfg)).map_err(js_err)?;
        #[derive(Serialize)]
        struct RunPlanJs {
            grids: Vec<usize>,
            timesteps: Vec<usize>,
            macs: f64,
        }
        let macs = plan.block_macs(cfg) as f64;
        to_js(&RunPlanJs { grids: plan.grids, timesteps: plan.timesteps, macs })
    }

    /// Training-free sparsification of a plain DiT (`config::PooledMiddle`): `spec` is
    /// `"START:END"`, `"default"`, or null / `""` for off. Returns `[start, end]` or null. Fails
    /// for a SparseDiT (it has its own sparse blocks), a bad range, or while a generation runs.
    pub fn set_pooled_middle(&self, spec: Option<String>) -> Result<JsValue, JsValue> {
        let mut inner = self.inner.borrow_mut();
        let loaded = inner.loaded.as_mut().ok_or_else(|| call_err("no model loaded"))?;
        let l = Rc::get_mut(loaded).ok_or_else(|| call_err("a generation is running: change the sparsity after it ends"))?;
        let pm = match spec.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(PooledMiddle::parse(s, l.cfg().layout.depth()).map_err(js_err)?),
        };
        l.engine.set_pooled_middle(pm).map_err(js_err)?;
        match pm {
            Some(pm) => to_js(&[pm.start, pm.end]),
            None => Ok(JsValue::NULL),
        }
    }

    /// Load a latent decoder pack (`taesd` / `sdvae`, as `sparsedit convert` writes them) from
    /// its bytes, checked against `expected_sha256` when given. While one is loaded, `generate`
    /// of a model with as many channels as the decoder's latent also returns the decoded image
    /// (`result.decoded`). Returns DecoderInfo; a failed load keeps the previous decoder.
    pub fn load_decoder(&self, bytes: &[u8], expected_sha256: Option<String>) -> Result<JsValue, JsValue> {
        let sha256 = sha256_hex(bytes);
        if let Some(want) = expected_sha256.as_deref().filter(|s| !s.is_empty()) {
            if !want.eq_ignore_ascii_case(&sha256) {
                return Err(js_err(Error::gguf(format!("decoder pack: sha256 {sha256} does not match the expected {want}"))));
            }
        }
        let pack = crate::pack::load_decoder_pack_bytes(bytes).map_err(js_err)?;
        let cfg = pack.cfg.clone();
        let params = pack.tensors.values().map(|t| t.elem_count()).sum();
        let mut inner = self.inner.borrow_mut();
        let (net, backend) = match inner.gpu.clone() {
            Some(g) if !g.software => (DecoderNet::Gpu(GpuDecoder::load(&g, cfg.clone(), pack.tensors).map_err(js_err)?), "webgpu"),
            _ => (DecoderNet::Cpu(Decoder::from_tensors(cfg.clone(), pack.tensors).map_err(js_err)?), "cpu"),
        };
        let (gpu_bytes, f16_weights) = match &net {
            DecoderNet::Gpu(d) => {
                let (b, n) = d.weight_bytes();
                (Some(b), n)
            }
            DecoderNet::Cpu(_) => (None, 0),
        };
        let info = DecoderInfo {
            arch: cfg.arch_name(),
            latent_channels: cfg.latent_channels(),
            out_channels: cfg.out_channels(),
            upscale: cfg.upscale(),
            params,
            bytes: bytes.len(),
            sha256,
            backend,
            gpu_bytes,
            f16_weights,
        };
        inner.decoder = Some(Rc::new(LoadedDecoder { net, cfg }));
        to_js(&info)
    }

    /// Drop the latent decoder (results are latents again).
    pub fn unload_decoder(&self) {
        self.inner.borrow_mut().decoder = None;
    }

    /// Decode latents of the loaded model's size with the loaded decoder: `latent` (num, C, I, I)
    /// as `generate` returns it, or a step's `pred_x0` (the page's live TAESD preview); `num`
    /// counts images, so a video model's n clips are n·F of them. Resolves
    /// to `{ image, channels, size, ms, decoder }` as `result.decoded`. May run while a
    /// generation is waiting on the GPU: it only reads the model's geometry and the decoder.
    pub fn decode(&self, latent: js_sys::Float32Array, num: usize) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let (gpu, loaded, decoder) = {
                let i = inner.borrow();
                (i.gpu.clone(), i.loaded.clone(), i.decoder.clone())
            };
            let run = async {
                let loaded = loaded.ok_or_else(|| call_err("no model loaded"))?;
                let d = decoder.ok_or_else(|| call_err("no latent decoder loaded"))?;
                let (c, size) = (loaded.cfg().in_channels, loaded.cfg().input_size);
                if d.cfg.latent_channels() != c {
                    return Err(call_err(format!("the {} decoder takes {} latent channels, the model makes {c}", d.cfg.arch_name(), d.cfg.latent_channels())));
                }
                let z = latent.to_vec();
                if num == 0 || z.len() != num * c * size * size {
                    return Err(call_err(format!("{} latent values for {num} latents of {c}x{size}x{size}", z.len())));
                }
                let out = decode_for_page(&d, gpu.as_deref(), &z, num, size).await.map_err(js_err)?;
                out.to_js()
            };
            run.await
        })
    }

    /// Stop the running generation after its current step.
    pub fn cancel(&self) {
        self.cancel.set(true);
    }

    /// Sample images; `on_step(step)` is called after every denoising step.
    pub fn generate(&self, opts: JsValue, on_step: js_sys::Function) -> js_sys::Promise {
        let inner = self.inner.clone();
        let cancel = self.cancel.clone();
        let busy = self.busy.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            if busy.replace(true) {
                return Err(call_err("a generation is already running"));
            }
            cancel.set(false);
            let r = generate(inner, cancel, opts, on_step).await;
            busy.set(false);
            r
        })
    }

    /// GPU time per block of one forward pass at batch 2 ([cond; uncond]) and grid `grid`,
    /// from timestamp queries; null on the CPU path or without timestamp queries.
    pub fn block_times(&self, grid: usize) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let (gpu, loaded) = {
                let i = inner.borrow();
                (i.gpu.clone(), i.loaded.clone())
            };
            let (Some(gpu), Some(loaded)) = (gpu, loaded) else { return Ok(JsValue::NULL) };
            let Net::Gpu(_, model) = loaded.engine.net() else { return Ok(JsValue::NULL) };
            if !gpu.has_timestamps {
                return Ok(JsValue::NULL);
            }
            let run = async {
                check_grid(loaded.cfg(), grid)?;
                let plan = model.plan(&gpu, 2, grid)?;
                let t = [500.0f32, 500.0];
                let y = [0i64, loaded.cfg().null_label().unwrap_or(0) as i64];
                model.write_inputs(&gpu, &plan, None, &t, &y)?;
                gpu.profile_async(&plan.groups()).await
            };
            let times = run.await.map_err(js_err)?;
            #[derive(Serialize)]
            struct T {
                name: String,
                ms: f64,
            }
            let v: Vec<T> = times.into_iter().map(|(name, ms)| T { name, ms }).collect();
            to_js(&v)
        })
    }
}


/// An optional byte count from JS (a whole, non-negative number).
fn byte_count(n: Option<f64>) -> Result<Option<u64>, JsValue> {
    match n {
        Some(s) if !(s.is_finite() && s >= 0.0 && s.fract() == 0.0) => Err(call_err(format!("expected size {s} is not a byte count"))),
        Some(s) => Ok(Some(s as u64)),
        None => Ok(None),
    }
}

/// A diffusers autoencoder's safetensors bytes (TAESD's whole file, or the SD-VAE's decoder
/// tensors) and config.json as a decoder pack for `load_decoder`.
#[wasm_bindgen]
pub fn decoder_pack_from_diffusers(safetensors: &[u8], config_json: &str, quant: &str, name: Option<String>) -> Result<js_sys::Uint8Array, JsValue> {
    let quant = crate::gguf::TensorType::parse(quant).map_err(js_err)?;
    let pack = crate::diffusers::decoder_pack_from_bytes(safetensors, config_json, quant, name.as_deref().unwrap_or("decoder")).map_err(js_err)?;
    Ok(js_sys::Uint8Array::from(pack.as_slice()))
}

/// What the pack of a diffusers DiT (`config.json` of its transformer) takes with `quant`,
/// before any weight is downloaded: `{ arch, params, pack_bytes, tensor_bytes,
/// largest_tensor_bytes, input_size, num_classes, depth, hidden_size }`.
#[wasm_bindgen]
pub fn plan_diffusers_pack(config_json: &str, quant: &str, name: Option<String>) -> Result<JsValue, JsValue> {
    let quant = crate::gguf::TensorType::parse(quant).map_err(js_err)?;
    let p = plan_pack(config_json, quant, name.as_deref().unwrap_or("model")).map_err(js_err)?;
    to_js(&serde_json::json!({
        "arch": p.cfg.arch_name(),
        "params": p.params as f64,
        "pack_bytes": p.pack_bytes as f64,
        "tensor_bytes": p.tensor_bytes as f64,
        "largest_tensor_bytes": p.largest_tensor_bytes as f64,
        "input_size": p.cfg.input_size,
        "num_classes": p.cfg.num_classes,
        "depth": p.cfg.layout.depth(),
        "hidden_size": p.cfg.hidden_size,
    }))
}

/// The grids the token view and the block timings take: 1..=n.
fn check_grid(cfg: &Config, grid: usize) -> crate::Result<()> {
    if grid == 0 || grid > cfg.grid() {
        return Err(Error::arg(format!("sparse grid side {grid} is outside 1..={}", cfg.grid())));
    }
    Ok(())
}

/// A JS exception thrown by `on_step`, kept whole so `generate` rejects with it.
struct Thrown(JsValue);

async fn generate(inner: Rc<RefCell<Inner>>, cancel: Rc<Cell<bool>>, opts: JsValue, on_step: js_sys::Function) -> Result<JsValue, JsValue> {
    let o = GenerateOptions::from_js(opts).map_err(js_err)?;
    let (loaded, decoder) = {
        let i = inner.borrow();
        (i.loaded.clone().ok_or_else(|| call_err("no model loaded"))?, i.decoder.clone())
    };
    let cfg = loaded.cfg();
    // (checked by `sample` before any work)
    let req = o.request(cfg).map_err(js_err)?;

    let start = now_ms();
    let mut last = start;
    let (mut ms_steps, mut grids) = (Vec::new(), Vec::new());
    let mut thrown: Option<Thrown> = None;
    // A Promise `on_step` returned: awaited before the next CPU-path step (the page's engine
    // worker yields there until the page took the step, so its cancel arrives in time).
    let step_taken: RefCell<Option<js_sys::Promise>> = RefCell::new(None);
    let run = loaded
        .engine
        .sample_yielding(&req, |s| {
            let t = now_ms();
            let out = StepOut { iter: s.iter, total: s.total, timestep: s.timestep, grid: s.grid, ms: t - last };
            last = t;
            ms_steps.push(out.ms);
            grids.push(s.grid);
            let report = || -> Result<(), JsValue> {
                let step = to_js(&out)?;
                if let Some(p) = s.pred_x0 {
                    js_sys::Reflect::set(&step, &"pred_x0".into(), &js_sys::Float32Array::from(p).into())?;
                }
                if req.trace {
                    js_sys::Reflect::set(&step, &"attention".into(), &attention_js(s.attention)?)?;
                }
                let ret = on_step.call1(&JsValue::NULL, &step)?;
                *step_taken.borrow_mut() = ret.dyn_into::<js_sys::Promise>().ok();
                Ok(())
            };
            if let Err(e) = report() {
                thrown = Some(Thrown(e));
                return Err(Error::Cancelled);
            }
            Ok(!cancel.get())
        }, || {
            let taken = step_taken.borrow_mut().take();
            let cancel = cancel.clone();
            async move {
                if let Some(p) = taken {
                    // its outcome is the page's business: only the wait matters here
                    let _ = wasm_bindgen_futures::JsFuture::from(p).await;
                }
                // a cancel that came while waiting stops the run before the next step
                !cancel.get()
            }
        })
        .await;
    if let Some(Thrown(e)) = thrown {
        return Err(e);
    }
    let sampled = run.map_err(js_err)?;
    // The final latents through the decoder, when one fits this model.
    let decoded = match decoder.filter(|d| d.cfg.latent_channels() == cfg.in_channels && !sampled.cancelled) {
        // a clip's frames decode as images: (num * F) latents
        Some(d) => {
            let images = sampled.shape[0] * cfg.frames();
            Some(decode_for_page(&d, loaded.engine.gpu().map(|g| g.as_ref()), &sampled.latent, images, cfg.input_size).await.map_err(js_err)?)
        }
        None => None,
    };

    #[derive(Serialize)]
    struct Out {
        channels: usize,
        size: usize,
        /// (num, C, I, I), or (num, F, C, I, I) for a video model
        shape: Vec<usize>,
        ms_total: f64,
        ms_steps: Vec<f64>,
        grids: Vec<usize>,
        cancelled: bool,
    }
    let out = to_js(&Out { channels: cfg.in_channels, size: cfg.input_size, shape: sampled.shape.clone(), ms_total: now_ms() - start, ms_steps, grids, cancelled: sampled.cancelled })?;
    js_sys::Reflect::set(&out, &"image".into(), &js_sys::Float32Array::from(sampled.latent.as_slice()).into())?;
    if let Some(d) = decoded {
        js_sys::Reflect::set(&out, &"decoded".into(), &d.to_js()?)?;
    }
    Ok(out)
}

/// Decoded images for the page: `{ image (in [-1, 1]), channels, size, ms, decoder }`.
struct Decoded {
    image: Vec<f32>,
    channels: usize,
    size: usize,
    ms: f64,
    decoder: &'static str,
}

impl Decoded {
    fn to_js(&self) -> Result<JsValue, JsValue> {
        let d = to_js(&serde_json::json!({ "channels": self.channels, "size": self.size, "ms": self.ms, "decoder": self.decoder }))?;
        js_sys::Reflect::set(&d, &"image".into(), &js_sys::Float32Array::from(self.image.as_slice()).into())?;
        Ok(d)
    }
}

/// Latents (num, C, I, I) through the decoder, to the page's [-1, 1] range.
async fn decode_for_page(d: &LoadedDecoder, gpu: Option<&Gpu>, z: &[f32], num: usize, size: usize) -> Result<Decoded, Error> {
    let t0 = now_ms();
    let raw = decode_latents(d, gpu, z, num, size).await?;
    let (a, b) = d.cfg.to_signed_range();
    let (a, b) = (a as f32, b as f32);
    let image = raw.iter().map(|v| a * v + b).collect();
    Ok(Decoded { image, channels: d.cfg.out_channels(), size: size * d.cfg.upscale(), ms: now_ms() - t0, decoder: d.cfg.arch_name() })
}

/// Latents (num, C, I, I) -> the decoder's raw images (num, 3, 8I, 8I).
async fn decode_latents(d: &LoadedDecoder, gpu: Option<&Gpu>, z: &[f32], num: usize, size: usize) -> Result<Vec<f32>, Error> {
    let c = d.cfg.latent_channels();
    match (&d.net, gpu) {
        // the plan is reused from call to call (the live preview decodes every step)
        (DecoderNet::Gpu(dec), Some(g)) => dec.decode_reusing_async(g, num, size, size, z).await,
        (DecoderNet::Cpu(dec), _) => {
            let zt = candle_core::Tensor::from_vec(z.to_vec(), (num, c, size, size), &candle_core::Device::Cpu)?;
            crate::model::to_vec_f32(&dec.decode(&zt)?)
        }
        (DecoderNet::Gpu(_), None) => Err(Error::Gpu("the GPU went away".into())),
    }
}
