//! The WebGPU engine (wgpu): hand-written WGSL kernels in `shaders/`, one file per op.
//!
//! - [`Gpu`]: adapter, device, queue and the pipeline cache (a pipeline is built once per
//!   (shader, specialisation constants)).
//! - [`Dispatch`]: one recorded kernel launch (pipeline + bind group + workgroup count). A model
//!   plan is a list of dispatches built once per (batch, grid) and replayed every step, so a
//!   denoising step is one command encoder and one submission.
//! - [`ops`]: op constructors that check shapes and record dispatches.
//!
//! Binding convention of every kernel: `@binding(0)` is a uniform block of u32 parameters
//! (dimensions; f32 values bit-cast), `@binding(1..)` are storage buffers in the order the
//! shader documents them.

pub mod decoder;
pub mod model;
pub mod sample;
pub mod ops;
pub mod weights;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};

/// A compiled compute pipeline and its bind group layout.
pub struct Kernel {
    pub name: String,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// One recorded kernel launch.
pub struct Dispatch {
    pub kernel: Rc<Kernel>,
    pub bind_group: wgpu::BindGroup,
    pub groups: [u32; 3],
    /// What this launch computes, e.g. `blocks.3.attn.qkv` (for profiles and errors).
    pub label: String,
}

/// A storage buffer of f32 (or packed u32) elements.
#[derive(Clone)]
pub struct GpuBuf {
    pub buf: Rc<wgpu::Buffer>,
    /// Number of 4-byte elements.
    pub len: usize,
}

/// What a cached pipeline is built from: its shader, entry point and specialisation constants
/// (WGSL `override`s, values by their f64 bits).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub shader: &'static str,
    pub entry: &'static str,
    pub constants: Vec<(&'static str, u64)>,
}

/// Adapter, device, queue and the pipeline cache.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// The device has `shader-f16` (f16 arithmetic path available).
    pub has_f16: bool,
    /// Timestamp queries are available (per-block GPU time in `bench`).
    pub has_timestamps: bool,
    /// A software adapter (lavapipe, SwiftShader): kernels with workgroup barriers are slow
    /// there, so ops pick barrier-free variants. `SPARSEDIT_KERNELS=tiled|direct` overrides
    /// (native).
    pub software: bool,
    pipelines: RefCell<HashMap<PipelineKey, Rc<Kernel>>>,
    /// Validation / out-of-memory errors raised asynchronously by the device.
    errors: Arc<Mutex<Vec<String>>>,
    /// Set when the device is lost.
    lost: Arc<Mutex<Option<String>>>,
}

impl Gpu {
    /// Open the default high-performance adapter. Errors (never panics) when none is found.
    pub async fn new() -> Result<Gpu> {
        Self::open(Self::adapter().await?).await
    }

    /// The default high-performance adapter, not yet opened: its `get_info()` tells a software
    /// rasterizer from a GPU before any device start-up work.
    pub async fn adapter() -> Result<wgpu::Adapter> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        // Vulkan / Metal / DX12 / browser WebGPU; the GL fallback lacks storage-heavy compute
        // features (and probes window systems). WGPU_BACKEND still overrides.
        if std::env::var_os("WGPU_BACKEND").is_none() {
            desc.backends = wgpu::Backends::PRIMARY;
        }
        let instance = wgpu::Instance::new(desc);
        instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("no WebGPU adapter: {e}")))
    }

    /// Open a device on `adapter`, with its own limits and the optional features we use.
    pub async fn open(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let features = adapter.features();
        let mut wanted = wgpu::Features::empty();
        for f in [wgpu::Features::SHADER_F16, wgpu::Features::TIMESTAMP_QUERY] {
            if features.contains(f) {
                wanted |= f;
            }
        }
        // Ask for the adapter's own limits: large storage bindings are what big models need.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("sparsedit"),
                required_features: wanted,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("cannot open the GPU device on {}: {e}", info.name)))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                // Keep the whole message (shader compile errors span lines); callers flatten it.
                let mut text = e.to_string();
                text.truncate(4000);
                v.push(text);
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = lost_sink.lock() {
                *l = Some(format!("GPU device lost ({reason:?}): {msg}"));
            }
        });
        let software = kernels_override().unwrap_or(info.device_type == wgpu::DeviceType::Cpu);
        Ok(Gpu {
            software,
            has_f16: wanted.contains(wgpu::Features::SHADER_F16),
            has_timestamps: wanted.contains(wgpu::Features::TIMESTAMP_QUERY),
            device,
            queue,
            adapter: info,
            limits,
            pipelines: RefCell::new(HashMap::new()),
            errors,
            lost,
        })
    }

    /// Native: open the adapter, blocking.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Gpu> {
        pollster::block_on(Self::new())
    }

    /// Native: the default adapter, blocking (see [`Gpu::adapter`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn adapter_blocking() -> Result<wgpu::Adapter> {
        pollster::block_on(Self::adapter())
    }

    /// Native: open a device on `adapter`, blocking.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_blocking(adapter: wgpu::Adapter) -> Result<Gpu> {
        pollster::block_on(Self::open(adapter))
    }

    /// "name (backend, type)" of the adapter, for tables.
    pub fn describe(&self) -> String {
        format!("{} ({:?}, {:?})", self.adapter.name, self.adapter.backend, self.adapter.device_type)
    }

    /// `e`, or the device loss behind it when the device was lost (a failed map or poll after
    /// a loss should say so).
    fn lost_or(&self, e: Error) -> Error {
        match self.lost.lock().ok().and_then(|l| l.clone()) {
            Some(l) => Error::DeviceLost(l),
            None => e,
        }
    }

    /// Fail with the first asynchronous device error or a device loss, if any happened.
    pub fn check(&self) -> Result<()> {
        if let Some(l) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::DeviceLost(l));
        }
        if let Some(e) = self.errors.lock().ok().and_then(|mut v| if v.is_empty() { None } else { Some(v.remove(0)) }) {
            return Err(Error::Gpu(e));
        }
        Ok(())
    }

    /// The pipeline of `source` specialised with `constants` (WGSL `override`s), built once.
    pub fn kernel(&self, name: &'static str, source: &str, constants: &[(&'static str, f64)]) -> Result<Rc<Kernel>> {
        self.kernel_entry(name, source, "main", constants)
    }

    /// [`Self::kernel`] with entry point `entry`.
    pub fn kernel_entry(&self, name: &'static str, source: &str, entry: &'static str, constants: &[(&'static str, f64)]) -> Result<Rc<Kernel>> {
        let key = PipelineKey { shader: name, entry, constants: constants.iter().map(|&(k, v)| (k, v.to_bits())).collect() };
        if let Some(k) = self.pipelines.borrow().get(&key) {
            return Ok(k.clone());
        }
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
            cache: None,
        });
        self.check().map_err(|e| e.gpu_context(format!("shader {name}")))?;
        let layout = pipeline.get_bind_group_layout(0);
        let k = Rc::new(Kernel { name: name.to_string(), pipeline, layout });
        self.pipelines.borrow_mut().insert(key, k.clone());
        Ok(k)
    }

    /// Number of cached pipelines (tests check that plans reuse them).
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.borrow().len()
    }

    fn storage_usage() -> wgpu::BufferUsages {
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC
    }

    /// A zero-filled storage buffer of `len` 4-byte elements (at least one).
    pub fn zeros(&self, label: &str, len: usize) -> Result<GpuBuf> {
        let bytes = (len.max(1) * 4) as u64;
        if bytes > self.limits.max_storage_buffer_binding_size || bytes > self.limits.max_buffer_size {
            return Err(Error::Gpu(format!(
                "buffer {label} needs {bytes} bytes, over the adapter's limit of {} per binding",
                self.limits.max_storage_buffer_binding_size
            )));
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: Self::storage_usage(),
            mapped_at_creation: false,
        });
        Ok(GpuBuf { buf: Rc::new(buf), len })
    }

    /// A storage buffer holding `data` (4-byte elements: f32, or packed u32).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<GpuBuf> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let len = bytes.len() / 4;
        if bytes.len() as u64 > self.limits.max_storage_buffer_binding_size {
            return Err(Error::Gpu(format!(
                "tensor {label} has {} bytes, over the adapter's storage binding limit of {}",
                bytes.len(),
                self.limits.max_storage_buffer_binding_size
            )));
        }
        let contents: Vec<u8> = if bytes.is_empty() { vec![0u8; 4] } else { bytes.to_vec() };
        let buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: &contents,
            usage: Self::storage_usage(),
        });
        Ok(GpuBuf { buf: Rc::new(buf), len: len.max(1) })
    }

    /// Overwrite the start of `dst` with `data`.
    pub fn write<T: bytemuck::Pod>(&self, dst: &GpuBuf, data: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len() > dst.len * 4 {
            return Err(Error::Gpu(format!("write of {} bytes into a {}-byte buffer", bytes.len(), dst.len * 4)));
        }
        self.queue.write_buffer(&dst.buf, 0, bytes);
        Ok(())
    }

    /// Record a launch of `kernel` with uniform `params` and storage `buffers` (bindings 1..).
    pub fn dispatch(&self, kernel: &Rc<Kernel>, label: &str, params: &[u32], buffers: &[&GpuBuf], groups: [u32; 3]) -> Result<Dispatch> {
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Gpu(format!("{label}: {groups:?} workgroups exceed the adapter's {max} per dimension")));
        }
        let mut words = params.to_vec();
        while !words.len().is_multiple_of(4) || words.is_empty() {
            words.push(0);
        }
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(&words),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.buf.as_entire_binding() });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &kernel.layout,
            entries: &entries,
        });
        self.check().map_err(|e| e.gpu_context(format!("{label} ({})", kernel.name)))?;
        Ok(Dispatch { kernel: kernel.clone(), bind_group, groups, label: label.to_string() })
    }

    /// Encode `dispatches` in order into one command buffer and submit it.
    pub fn run(&self, dispatches: &[Dispatch]) -> Result<()> {
        self.run_step(&[], &[dispatches])
    }

    /// One submission: buffer copies (src, dst, dst offset in elements), then every dispatch of
    /// `groups` in order in one compute pass (WebGPU orders dispatches within a pass).
    pub fn run_step(&self, copies: &[(&GpuBuf, &GpuBuf, usize)], groups: &[&[Dispatch]]) -> Result<()> {
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        for (src, dst, off) in copies {
            if off + src.len > dst.len {
                return Err(Error::Gpu(format!("copy of {} elements at {off} into a buffer of {}", src.len, dst.len)));
            }
            enc.copy_buffer_to_buffer(&src.buf, 0, &dst.buf, (*off * 4) as u64, (src.len * 4) as u64);
        }
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("step"), timestamp_writes: None });
            for d in groups.iter().flat_map(|g| g.iter()) {
                pass.set_pipeline(&d.kernel.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        self.queue.submit(Some(enc.finish()));
        self.check()
    }

    /// Block until every submitted command has finished (native; timing).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| self.lost_or(Error::Gpu(format!("waiting for the GPU: {e}"))))?;
        self.check()
    }

    /// [`Self::profile_async`], blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&self, groups: &[(String, &[Dispatch])]) -> Result<Vec<(String, f64)>> {
        pollster::block_on(self.profile_async(groups))
    }

    /// GPU time of each named group of dispatches (ms), from timestamp queries: each group runs
    /// in its own compute pass with begin / end timestamps. Errors without TIMESTAMP_QUERY.
    pub async fn profile_async(&self, groups: &[(String, &[Dispatch])]) -> Result<Vec<(String, f64)>> {
        if !self.has_timestamps {
            return Err(Error::Gpu(format!("{} has no timestamp queries", self.adapter.name)));
        }
        let count = (2 * groups.len()).clamp(2, wgpu::QUERY_SET_MAX_QUERIES as usize) as u32;
        if groups.len() * 2 > count as usize {
            return Err(Error::Gpu(format!("{} groups exceed the query set limit", groups.len())));
        }
        let qs = self.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("profile"), ty: wgpu::QueryType::Timestamp, count });
        let bytes = count as u64 * 8;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile.resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile.read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("profile") });
        for (g, (name, dispatches)) in groups.iter().enumerate() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(name),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &qs,
                    beginning_of_pass_write_index: Some(2 * g as u32),
                    end_of_pass_write_index: Some(2 * g as u32 + 1),
                }),
            });
            for d in dispatches.iter() {
                pass.set_pipeline(&d.kernel.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        enc.resolve_query_set(&qs, 0..count, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
        self.queue.submit(Some(enc.finish()));
        let (tx, rx) = futures_oneshot();
        staging.map_async(wgpu::MapMode::Read, .., move |r| tx.send(r));
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        rx.await.map_err(|e| self.lost_or(Error::Gpu(format!("reading timestamps: {e}"))))?;
        let ticks: Vec<u64> = {
            let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu(format!("mapping timestamps: {e}")))?;
            bytemuck::cast_slice::<u8, u64>(&view).to_vec()
        };
        staging.unmap();
        let period_ns = self.queue.get_timestamp_period() as f64;
        Ok(groups
            .iter()
            .enumerate()
            .map(|(g, (name, _))| (name.clone(), ticks[2 * g + 1].saturating_sub(ticks[2 * g]) as f64 * period_ns / 1e6))
            .collect())
    }

    /// Read `buf` back as f32 (native: blocks until the GPU is done).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, buf: &GpuBuf) -> Result<Vec<f32>> {
        pollster::block_on(self.read_async(buf))
    }

    /// Read `buf` back as f32.
    pub async fn read_async(&self, buf: &GpuBuf) -> Result<Vec<f32>> {
        let bytes = (buf.len * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        enc.copy_buffer_to_buffer(&buf.buf, 0, &staging, 0, bytes);
        self.queue.submit(Some(enc.finish()));
        let (tx, rx) = futures_oneshot();
        staging.map_async(wgpu::MapMode::Read, .., move |r| tx.send(r));
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| self.lost_or(Error::Gpu(format!("waiting for the GPU: {e}"))))?;
        rx.await.map_err(|e| self.lost_or(Error::Gpu(format!("reading a GPU buffer back: {e}"))))?;
        let data = {
            let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu(format!("mapping a GPU buffer: {e}")))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        self.check()?;
        Ok(data)
    }
}

/// `SPARSEDIT_KERNELS=tiled|direct` (native only): force the kernel variants of real / software
/// adapters, for A/B timing.
fn kernels_override() -> Option<bool> {
    #[cfg(not(target_arch = "wasm32"))]
    match std::env::var("SPARSEDIT_KERNELS").as_deref() {
        Ok("tiled") => return Some(false),
        Ok("direct") => return Some(true),
        _ => {}
    }
    None
}

/// A tiny one-shot channel for the map_async callback (no executor needed).
fn futures_oneshot() -> (OneshotTx, OneshotRx) {
    let state = Arc::new(Mutex::new(OneshotState { value: None, waker: None }));
    (OneshotTx(state.clone()), OneshotRx(state))
}

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

struct OneshotState {
    value: Option<MapResult>,
    waker: Option<std::task::Waker>,
}

struct OneshotTx(Arc<Mutex<OneshotState>>);
struct OneshotRx(Arc<Mutex<OneshotState>>);

impl OneshotTx {
    fn send(self, v: MapResult) {
        if let Ok(mut s) = self.0.lock() {
            s.value = Some(v);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
}

impl std::future::Future for OneshotRx {
    type Output = MapResult;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<MapResult> {
        let mut s = match self.0.lock() {
            Ok(s) => s,
            Err(_) => return std::task::Poll::Ready(Err(wgpu::BufferAsyncError)),
        };
        match s.value.take() {
            Some(v) => std::task::Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}
