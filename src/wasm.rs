//! The browser boundary: one `#[wasm_bindgen]` newtype, [`Engine`], over the engine. Errors
//! become JS `Error`s with the library's one-line message; panics are reported to the console
//! by `console_error_panic_hook` (and the page shows the rejected promise), never silently.
//!
//! JS contract (the page in `web/` relies on it):
//! ```text
//! class Engine {
//!   static create(prefer_gpu: boolean): Promise<Engine>   // WebGPU when available and wanted, else the CPU (candle) path
//!   backend(): "webgpu" | "cpu"
//!   adapter(): string                     // adapter description, or why WebGPU is unavailable
//!   begin_load(expected_size?: number, expected_sha256_hex?: string): void  // starts (or restarts) a streamed load
//!   push(chunk: Uint8Array): void         // throws on corrupt data (bad magic / header, more bytes than announced)
//!   bytes_received(): number
//!   finish_load(): ModelInfo              // throws on truncation, size or sha256 mismatch, wrong tensors
//!   model_info(): ModelInfo | null
//!   layout(grid: number): BlockInfo[]     // token view at sparse grid side `grid` (dense models ignore it)
//!   generate(opts, on_step: (step) => void): Promise<result>
//!   cancel(): void                        // the running generate stops after its current step
//!   block_times(grid: number): Promise<{name, ms}[] | null>   // GPU ms per block (timestamp queries)
//!   load_decoder(bytes: Uint8Array, expected_sha256?: string): DecoderInfo  // TAESD / SD-VAE pack
//!   unload_decoder(): void                // while loaded, generate also returns `decoded`
//!   decode(latent: Float32Array, num): Promise<decoded>  // (num, C, I, I) latents, e.g. a step's pred_x0
//!   set_pooled_middle(spec: "START:END" | "default" | null): [start, end] | null  // plain DiT only:
//!                                         // training-free sparsification (middle blocks on the pooled grid)
//! }
//! ModelInfo = { arch: "dit"|"sparsedit", name, input_size, in_channels, num_classes, depth,
//!               dense_grid, default_grid, params, bytes, sha256 }
//! BlockInfo = { index, name, kind: "dit"|"poolingformer"|"merge"|"semantic"|"recover"|"normal"|"pooled",
//!               segment: "dense"|"bottom"|"middle"|"top", tokens, grid: "dense"|"sparse"|"global",
//!               side, windows: [[r0, r1, c0, c1], ...], macs }
//! opts   = { label, seed, steps, sampler: "ddim"|"ddpm", eta, cfg, sparsity: "dense"|"fixed"|"schedule",
//!            grid, r_min, r_max, num, trace, preview }   (all optional)
//! step   = { iter, total, timestep, grid, ms, pred_x0?: Float32Array,
//!            attention?: [{ block, name, kind: "merge"|"recover", q, k, probs: Float32Array }] }
//! result = { image: Float32Array, channels, size, ms_total, ms_steps: number[], grids: number[], cancelled,
//!            decoded?: { image: Float32Array (in [-1, 1]), channels: 3, size: 8 * size, ms, decoder } }
//! DecoderInfo = { arch: "taesd"|"sdvae", latent_channels, out_channels, upscale, params, bytes, sha256,
//!                 backend: "webgpu"|"cpu", gpu_bytes: number | null, f16_weights }
//! ```
//! A device loss makes `generate` reject with a message starting `GPU device lost`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::config::{Config, GridSchedule, PooledMiddle};
use crate::diffusion::{default_respacing, Guidance, Sampler, SamplerKind, SeededNoise, NUM_TRAIN_TIMESTEPS};
use crate::error::Error;
use crate::gpu::model::{GpuModel, GpuStreamSink};
use crate::gpu::sample::{sample_gpu, SampleOptions};
use crate::gpu::Gpu;
use crate::layout::block_layouts;
use crate::model::{to_vec_f32, Model};
use crate::stream::{KeepAll, PackStream, TensorSink};
use crate::decoder::{Decoder, DecoderConfig};
use crate::gpu::decoder::GpuDecoder;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn to_js<T: Serialize>(v: &T) -> Result<JsValue, JsError> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(js_err)
}

enum Net {
    Gpu(GpuModel),
    Cpu(Model),
}

struct Loaded {
    net: Net,
    cfg: Config,
    info: ModelInfo,
}

enum Sink {
    Gpu(GpuStreamSink),
    Cpu(KeepAll),
}

impl Sink {
    fn as_dyn(&mut self) -> &mut dyn TensorSink {
        match self {
            Sink::Gpu(s) => s,
            Sink::Cpu(s) => s,
        }
    }
}

struct Inner {
    gpu: Option<Rc<Gpu>>,
    adapter: String,
    loading: Option<(PackStream, Sink)>,
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

#[derive(Serialize)]
struct StepOut {
    iter: usize,
    total: usize,
    timestep: usize,
    grid: usize,
    ms: f64,
}

/// Calls the page's `on_step` and keeps the per-step timings of a run.
struct Reporter {
    on_step: js_sys::Function,
    cancel: Rc<Cell<bool>>,
    last: f64,
    ms_steps: Vec<f64>,
    grids: Vec<usize>,
    cancelled: bool,
}

impl Reporter {
    /// Report one finished step; returns whether to go on.
    fn step(&mut self, s: StepOut, pred: Option<&[f32]>, attention: JsValue) -> Result<bool, String> {
        let t = now_ms();
        let s = StepOut { ms: t - self.last, ..s };
        self.last = t;
        self.ms_steps.push(s.ms);
        self.grids.push(s.grid);
        let step = to_js(&s).map_err(|_| "step report".to_string())?;
        if let Some(p) = pred {
            js_sys::Reflect::set(&step, &"pred_x0".into(), &js_sys::Float32Array::from(p).into()).map_err(|_| "step report")?;
        }
        if !attention.is_undefined() {
            js_sys::Reflect::set(&step, &"attention".into(), &attention).map_err(|_| "step report")?;
        }
        self.on_step
            .call1(&JsValue::NULL, &step)
            .map_err(|e| format!("on_step threw: {}", e.as_string().unwrap_or_else(|| format!("{e:?}"))))?;
        if self.cancel.get() {
            self.cancelled = true;
        }
        Ok(!self.cancelled)
    }
}

/// A step's attention maps as JS objects.
fn attention_js(maps: &[crate::gpu::sample::StepAttention]) -> Result<JsValue, String> {
    let arr = js_sys::Array::new();
    for a in maps {
        let obj = js_sys::Object::new();
        let kind = if a.name.contains("token_merge") { "merge" } else { "recover" };
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&obj, &k.into(), &v).map(|_| ());
        set("block", (a.block as f64).into())
            .and(set("name", a.name.as_str().into()))
            .and(set("kind", kind.into()))
            .and(set("q", (a.tq as f64).into()))
            .and(set("k", (a.tk as f64).into()))
            .and(set("probs", js_sys::Float32Array::from(a.probs.as_slice()).into()))
            .map_err(|_| "attention report".to_string())?;
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
    pub async fn create(prefer_gpu: bool) -> Result<Engine, JsError> {
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
            inner: Rc::new(RefCell::new(Inner { gpu, adapter, loading: None, loaded: None, decoder: None })),
            cancel: Rc::new(Cell::new(false)),
            busy: Rc::new(Cell::new(false)),
        })
    }

    pub fn backend(&self) -> String {
        if self.inner.borrow().gpu.is_some() { "webgpu" } else { "cpu" }.into()
    }

    pub fn adapter(&self) -> String {
        self.inner.borrow().adapter.clone()
    }

    /// Start a streamed load (drops any load in progress; the loaded model stays until
    /// `finish_load` succeeds).
    pub fn begin_load(&self, expected_size: Option<f64>, expected_sha256: Option<String>) -> Result<(), JsError> {
        let size = match expected_size {
            Some(s) if !(s.is_finite() && s >= 0.0 && s.fract() == 0.0) => return Err(js_err(format!("expected size {s} is not a byte count"))),
            Some(s) => Some(s as u64),
            None => None,
        };
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
    pub fn push(&self, chunk: &[u8]) -> Result<(), JsError> {
        let mut inner = self.inner.borrow_mut();
        let (stream, sink) = inner.loading.as_mut().ok_or_else(|| js_err("push before begin_load"))?;
        let r = stream.push(chunk, sink.as_dyn());
        if r.is_err() {
            inner.loading = None; // free what was uploaded so far
        }
        r.map_err(js_err)
    }

    pub fn bytes_received(&self) -> f64 {
        self.inner.borrow().loading.as_ref().map_or(0.0, |(s, _)| s.received() as f64)
    }

    /// Verify the whole pack and build the model; returns its ModelInfo.
    pub fn finish_load(&self) -> Result<JsValue, JsError> {
        let mut inner = self.inner.borrow_mut();
        let (stream, sink) = inner.loading.take().ok_or_else(|| js_err("finish_load before begin_load"))?;
        let summary = stream.finish().map_err(js_err)?;
        let cfg = summary.cfg.clone();
        let net = match sink {
            Sink::Gpu(s) => {
                let gpu = inner.gpu.clone().ok_or_else(|| js_err("the GPU went away during the load"))?;
                Net::Gpu(GpuModel::load(&gpu, cfg.clone(), &s).map_err(js_err)?)
            }
            Sink::Cpu(s) => Net::Cpu(Model::from_tensors(cfg.clone(), s.into_tensor_map().map_err(js_err)?).map_err(js_err)?),
        };
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
        };
        let js = to_js(&info)?;
        inner.loaded = Some(Rc::new(Loaded { net, cfg, info }));
        Ok(js)
    }

    pub fn model_info(&self) -> Result<JsValue, JsError> {
        match &self.inner.borrow().loaded {
            Some(l) => to_js(&l.info),
            None => Ok(JsValue::NULL),
        }
    }

    /// Per-block token layout at sparse grid side `grid`.
    pub fn layout(&self, grid: usize) -> Result<JsValue, JsError> {
        let loaded = self.inner.borrow().loaded.clone().ok_or_else(|| js_err("no model loaded"))?;
        check_grid(&loaded.cfg, grid).map_err(js_err)?;
        to_js(&block_layouts(&loaded.cfg, grid))
    }

    /// Training-free sparsification of a plain DiT (`config::PooledMiddle`): `spec` is
    /// `"START:END"`, `"default"`, or null / `""` for off. Returns `[start, end]` or null. Fails
    /// for a SparseDiT (it has its own sparse blocks), a bad range, or while a generation runs.
    pub fn set_pooled_middle(&self, spec: Option<String>) -> Result<JsValue, JsError> {
        let mut inner = self.inner.borrow_mut();
        let loaded = inner.loaded.as_mut().ok_or_else(|| js_err("no model loaded"))?;
        let l = Rc::get_mut(loaded).ok_or_else(|| js_err("a generation is running: change the sparsity after it ends"))?;
        let pm = match spec.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(PooledMiddle::parse(s, l.cfg.layout.depth()).map_err(js_err)?),
        };
        match &mut l.net {
            Net::Gpu(m) => m.set_pooled_middle(pm),
            Net::Cpu(m) => m.set_pooled_middle(pm),
        }
        .map_err(js_err)?;
        l.cfg.pooled_middle = pm;
        match pm {
            Some(pm) => to_js(&[pm.start, pm.end]),
            None => Ok(JsValue::NULL),
        }
    }

    /// Load a latent decoder pack (`taesd` / `sdvae`, as `sparsedit convert` writes them) from
    /// its bytes, checked against `expected_sha256` when given. While one is loaded, `generate`
    /// of a model with as many channels as the decoder's latent also returns the decoded image
    /// (`result.decoded`). Returns DecoderInfo; a failed load keeps the previous decoder.
    pub fn load_decoder(&self, bytes: &[u8], expected_sha256: Option<String>) -> Result<JsValue, JsError> {
        use sha2::{Digest, Sha256};
        let sha256: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        if let Some(want) = expected_sha256.as_deref().filter(|s| !s.is_empty()) {
            if !want.eq_ignore_ascii_case(&sha256) {
                return Err(js_err(format!("decoder pack: sha256 {sha256} does not match the expected {want}")));
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
    /// as `generate` returns it, or a step's `pred_x0` (the page's live TAESD preview). Resolves
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
                let loaded = loaded.ok_or("no model loaded")?;
                let d = decoder.ok_or("no latent decoder loaded")?;
                let (c, size) = (loaded.cfg.in_channels, loaded.cfg.input_size);
                if d.cfg.latent_channels() != c {
                    return Err(format!("the {} decoder takes {} latent channels, the model makes {c}", d.cfg.arch_name(), d.cfg.latent_channels()));
                }
                let z = latent.to_vec();
                if num == 0 || z.len() != num * c * size * size {
                    return Err(format!("{} latent values for {num} latents of {c}x{size}x{size}", z.len()));
                }
                let out = decode_for_page(&d, gpu.as_deref(), &z, num, size).await?;
                out.to_js()
            };
            run.await.map_err(|e| JsError::new(&e).into())
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
                return Err(JsError::new("a generation is already running").into());
            }
            cancel.set(false);
            let r = generate(inner, cancel, opts, on_step).await;
            busy.set(false);
            r.map_err(|e| JsError::new(&e).into())
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
            let Net::Gpu(model) = &loaded.net else { return Ok(JsValue::NULL) };
            if !gpu.has_timestamps {
                return Ok(JsValue::NULL);
            }
            let run = async {
                check_grid(&loaded.cfg, grid)?;
                let plan = model.plan(&gpu, 2, grid)?;
                let t = [500.0f32, 500.0];
                let y = [0i64, loaded.cfg.null_label().unwrap_or(0) as i64];
                model.write_inputs(&gpu, &plan, None, &t, &y)?;
                gpu.profile_async(&plan.groups()).await
            };
            let times = run.await.map_err(|e| JsError::new(&e.to_string()))?;
            #[derive(Serialize)]
            struct T {
                name: String,
                ms: f64,
            }
            let v: Vec<T> = times.into_iter().map(|(name, ms)| T { name, ms }).collect();
            to_js(&v).map_err(Into::into)
        })
    }
}

fn check_grid(cfg: &Config, grid: usize) -> crate::Result<()> {
    if grid == 0 || grid > cfg.grid() {
        return Err(Error::arg(format!("sparse grid side {grid} is outside 1..={}", cfg.grid())));
    }
    Ok(())
}

fn device_lost_first(msg: String) -> String {
    match msg.find("GPU device lost") {
        Some(i) if i > 0 => msg[i..].to_string(),
        _ => msg,
    }
}

async fn generate(inner: Rc<RefCell<Inner>>, cancel: Rc<Cell<bool>>, opts: JsValue, on_step: js_sys::Function) -> Result<JsValue, String> {
    let o: GenerateOptions = if opts.is_undefined() || opts.is_null() {
        GenerateOptions::default()
    } else {
        serde_wasm_bindgen::from_value(opts).map_err(|e| format!("generate options: {e}"))?
    };
    let (gpu, loaded, decoder) = {
        let i = inner.borrow();
        (i.gpu.clone(), i.loaded.clone().ok_or("no model loaded")?, i.decoder.clone())
    };
    let cfg = &loaded.cfg;
    // Validate everything before any work.
    if !(1..=1000).contains(&o.steps) {
        return Err(format!("steps {} is outside 1..=1000", o.steps));
    }
    if !(1..=16).contains(&o.num) {
        return Err(format!("number of images {} is outside 1..=16", o.num));
    }
    if !o.cfg.is_finite() || !o.eta.is_finite() || o.eta < 0.0 {
        return Err("cfg scale and eta must be finite numbers (eta >= 0)".into());
    }
    cfg.check_labels(&[o.label]).map_err(|e| e.to_string())?;
    let schedule = match o.sparsity.as_str() {
        "dense" => GridSchedule::Fixed(cfg.grid()),
        "fixed" => GridSchedule::Fixed(if o.grid == 0 { cfg.semantic_size } else { o.grid }),
        "schedule" => GridSchedule::Timestep { r_min: o.r_min, r_max: o.r_max },
        other => return Err(format!("sparsity {other:?} is not dense, fixed or schedule")),
    };
    schedule.validate().map_err(|e| e.to_string())?;
    if let GridSchedule::Fixed(s) = schedule {
        check_grid(cfg, s).map_err(|e| e.to_string())?;
    }
    let kind = SamplerKind::parse(&o.sampler, o.eta).map_err(|e| e.to_string())?;
    let sampler = Sampler::new(&default_respacing(o.steps, matches!(kind, SamplerKind::Ddim { .. })), kind, cfg.learn_sigma).map_err(|e| e.to_string())?;
    let guidance = if o.cfg > 1.0 {
        let null = cfg.null_label().ok_or("this model has no null label: use cfg 1")?;
        Some(Guidance { scale: o.cfg, guided_channels: 3, null_label: null as i64 })
    } else {
        None
    };
    // Same draws, same order as `sparsedit sample --seed`: the latent first, then per-step noise.
    let chw = cfg.in_channels * cfg.input_size * cfg.input_size;
    let mut noise = SeededNoise::new(o.seed);
    let z = noise.normal(o.num * chw);
    let y = vec![o.label; o.num];
    let n_tok = cfg.num_tokens();

    let start = now_ms();
    let mut rep = Reporter { on_step, cancel, last: start, ms_steps: Vec::new(), grids: Vec::new(), cancelled: false };
    let image: Vec<f32> = match (&loaded.net, &gpu) {
        (Net::Gpu(model), Some(gpu)) => {
            let opts = SampleOptions { preview: o.preview, trace: o.trace };
            sample_gpu(gpu, model, &sampler, &z, &y, guidance, &schedule, &mut noise, opts, |s| {
                let attention = if o.trace { attention_js(s.attention).map_err(Error::arg)? } else { JsValue::UNDEFINED };
                let step = StepOut { iter: s.iter, total: s.total, timestep: s.timestep, grid: s.grid, ms: 0.0 };
                rep.step(step, s.pred_x0, attention).map_err(Error::arg)
            })
            .await
            .map_err(|e| device_lost_first(e.to_string()))?
        }
        (Net::Cpu(model), _) => {
            // Synchronous: the tiny model takes a few seconds on the CPU.
            let dev = candle_core::Device::Cpu;
            let zt = candle_core::Tensor::from_vec(z, (o.num, cfg.in_channels, cfg.input_size, cfg.input_size), &dev).map_err(|e| e.to_string())?;
            let stop = Cell::new(false);
            let run = sampler.sample(
                |x, t, yb| {
                    if stop.get() {
                        return Err(Error::arg("cancelled"));
                    }
                    model.forward(x, t, yb, schedule.grid_at(t[0] as f64, NUM_TRAIN_TIMESTEPS, n_tok))
                },
                &zt,
                &y,
                guidance,
                &mut noise,
                |s| {
                    let grid = schedule.grid_at(s.timestep as f64, NUM_TRAIN_TIMESTEPS, n_tok);
                    let step = StepOut { iter: s.iter, total: s.total, timestep: s.timestep, grid, ms: 0.0 };
                    let pred = if o.preview { Some(s.pred_x0) } else { None };
                    if !rep.step(step, pred, JsValue::UNDEFINED).map_err(Error::arg)? {
                        stop.set(true);
                    }
                    Ok(())
                },
            );
            match run {
                Ok(x) => to_vec_f32(&x).map_err(|e| e.to_string())?,
                Err(_) if rep.cancelled => Vec::new(),
                Err(e) => return Err(e.to_string()),
            }
        }
        (Net::Gpu(_), None) => return Err("the GPU went away".into()),
    };
    let Reporter { ms_steps, grids, cancelled, .. } = rep;
    // The final latents through the decoder, when one fits this model.
    let decoded = match decoder.filter(|d| d.cfg.latent_channels() == cfg.in_channels && !cancelled && !image.is_empty()) {
        Some(d) => Some(decode_for_page(&d, gpu.as_deref(), &image, o.num, cfg.input_size).await?),
        None => None,
    };

    #[derive(Serialize)]
    struct Out {
        channels: usize,
        size: usize,
        ms_total: f64,
        ms_steps: Vec<f64>,
        grids: Vec<usize>,
        cancelled: bool,
    }
    let out = to_js(&Out { channels: cfg.in_channels, size: cfg.input_size, ms_total: now_ms() - start, ms_steps, grids, cancelled }).map_err(|_| "result".to_string())?;
    js_sys::Reflect::set(&out, &"image".into(), &js_sys::Float32Array::from(image.as_slice()).into()).map_err(|_| "result")?;
    if let Some(d) = decoded {
        js_sys::Reflect::set(&out, &"decoded".into(), &d.to_js()?).map_err(|_| "result")?;
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
    fn to_js(&self) -> Result<JsValue, String> {
        let d = to_js(&serde_json::json!({ "channels": self.channels, "size": self.size, "ms": self.ms, "decoder": self.decoder })).map_err(|_| "decoded image")?;
        js_sys::Reflect::set(&d, &"image".into(), &js_sys::Float32Array::from(self.image.as_slice()).into()).map_err(|_| "decoded image")?;
        Ok(d)
    }
}

/// Latents (num, C, I, I) through the decoder, to the page's [-1, 1] range.
async fn decode_for_page(d: &LoadedDecoder, gpu: Option<&Gpu>, z: &[f32], num: usize, size: usize) -> Result<Decoded, String> {
    let t0 = now_ms();
    let raw = decode_latents(d, gpu, z, num, size).await?;
    let (a, b) = d.cfg.to_signed_range();
    let (a, b) = (a as f32, b as f32);
    let image = raw.iter().map(|v| a * v + b).collect();
    Ok(Decoded { image, channels: d.cfg.out_channels(), size: size * d.cfg.upscale(), ms: now_ms() - t0, decoder: d.cfg.arch_name() })
}

/// Latents (num, C, I, I) -> the decoder's raw images (num, 3, 8I, 8I).
async fn decode_latents(d: &LoadedDecoder, gpu: Option<&Gpu>, z: &[f32], num: usize, size: usize) -> Result<Vec<f32>, String> {
    let c = d.cfg.latent_channels();
    match (&d.net, gpu) {
        // the plan is reused from call to call (the live preview decodes every step)
        (DecoderNet::Gpu(dec), Some(g)) => dec.decode_reusing_async(g, num, size, size, z).await.map_err(|e| device_lost_first(e.to_string())),
        (DecoderNet::Cpu(dec), _) => {
            let zt = candle_core::Tensor::from_vec(z.to_vec(), (num, c, size, size), &candle_core::Device::Cpu).map_err(|e| e.to_string())?;
            let img = dec.decode(&zt).map_err(|e| e.to_string())?;
            to_vec_f32(&img).map_err(|e| e.to_string())
        }
        (DecoderNet::Gpu(_), None) => Err("the GPU went away".into()),
    }
}
