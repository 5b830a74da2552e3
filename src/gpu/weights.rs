//! Where a GPU model's weights come from: a pack in memory ([`Gguf`]), f32 tensors encoded on
//! the fly ([`EncodedMap`]), or a pack streamed into GPU buffers chunk by chunk
//! ([`GpuStreamSink`]). [`crate::gpu::model::GpuModel::load`] reads any of them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gguf::{self, Gguf, GgufHeader, TensorInfo, TensorType};
use crate::gpu::ops::{GpuLinear, GpuWeight};
use crate::gpu::{Gpu, GpuBuf};
use crate::model::TensorMap;
use crate::pack;
use crate::stream::TensorSink;

/// Where weights come from: encoded bytes per tensor, as in a pack.
pub trait WeightSource {
    /// (type, encoded bytes, PyTorch shape) of tensor `name`.
    fn encoded(&self, name: &str) -> Result<(TensorType, Cow<'_, [u8]>, Vec<usize>)>;
    /// Tensor `name` decoded to f32, with its shape.
    fn f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (ty, bytes, shape) = self.encoded(name)?;
        let n = shape.iter().product();
        Ok((gguf::decode(&bytes, ty, n)?, shape))
    }
    /// The (N, K) weight `name` of a linear layer on the GPU, in its stored format, with its
    /// shape. Default: upload [`Self::encoded`]; a streamed pack has it uploaded already.
    fn gpu_weight(&self, gpu: &Gpu, name: &str) -> Result<(GpuWeight, Vec<usize>)> {
        upload_encoded(gpu, self, name)
    }
}

/// Upload tensor `name` of `src` as a linear weight (the default of [`WeightSource::gpu_weight`]).
fn upload_encoded<S: WeightSource + ?Sized>(gpu: &Gpu, src: &S, name: &str) -> Result<(GpuWeight, Vec<usize>)> {
    let (ty, bytes, shape) = src.encoded(name)?;
    let elems = shape.iter().product();
    Ok((GpuWeight::upload(gpu, name, ty, &bytes, elems)?, shape))
}

fn missing(name: &str) -> Error {
    Error::Keys { missing: vec![name.to_string()], unexpected: vec![] }
}

impl WeightSource for Gguf<'_> {
    fn encoded(&self, name: &str) -> Result<(TensorType, Cow<'_, [u8]>, Vec<usize>)> {
        let info = self.header.tensor(name).ok_or_else(|| missing(name))?;
        Ok((info.ty, Cow::Borrowed(self.tensor_data(info)), info.shape.clone()))
    }
}

/// f32 tensors encoded on the fly with `quant` for 2-D linear weights (as `convert` would).
pub struct EncodedMap<'a> {
    pub tensors: &'a TensorMap,
    pub quant: TensorType,
}

impl WeightSource for EncodedMap<'_> {
    fn encoded(&self, name: &str) -> Result<(TensorType, Cow<'_, [u8]>, Vec<usize>)> {
        let t = self.tensors.get(name).ok_or_else(|| missing(name))?;
        let shape = t.dims().to_vec();
        let ty = pack::storage_type(name, &shape, self.quant);
        let values = crate::model::to_vec_f32(t)?;
        Ok((ty, Cow::Owned(gguf::encode(&values, ty)?), shape))
    }
}

pub(crate) fn lin(gpu: &Gpu, src: &dyn WeightSource, name: &str, k_in: usize, n_out: usize) -> Result<GpuLinear> {
    let (weight, shape) = src.gpu_weight(gpu, &format!("{name}.weight"))?;
    if shape != [n_out, k_in] {
        return Err(Error::Shape { name: format!("{name}.weight"), expected: vec![n_out, k_in], found: shape });
    }
    let (bias, bshape) = src.f32(&format!("{name}.bias"))?;
    if bshape != [n_out] {
        return Err(Error::Shape { name: format!("{name}.bias"), expected: vec![n_out], found: bshape });
    }
    GpuLinear::from_weight(gpu, name, weight, n_out, k_in, &bias)
}

/// A pack arriving in chunks ([`crate::stream::PackStream`]): every linear weight goes into its
/// GPU buffer the moment its bytes are complete (then its host copy is dropped); biases,
/// tables, the patch-embedding kernel and the position table — a small part of the bytes —
/// wait on the host until [`GpuModel::load`] builds the model from this sink.
pub struct GpuStreamSink {
    gpu: Rc<Gpu>,
    uploaded: HashMap<String, (GpuWeight, Vec<usize>)>,
    host: HashMap<String, (TensorType, Vec<u8>, Vec<usize>)>,
    /// Bytes of tensor data on the GPU / kept on the host so far.
    pub gpu_bytes: usize,
    pub host_bytes: usize,
}

impl GpuStreamSink {
    pub fn new(gpu: Rc<Gpu>) -> Self {
        GpuStreamSink { gpu, uploaded: HashMap::new(), host: HashMap::new(), gpu_bytes: 0, host_bytes: 0 }
    }

    /// Linear weights are the 2-D `*.weight` tensors other than the label table.
    fn is_linear_weight(info: &TensorInfo) -> bool {
        info.shape.len() == 2 && info.name.ends_with(".weight") && info.name != "y_embedder.embedding_table.weight"
    }
}

impl TensorSink for GpuStreamSink {
    fn header(&mut self, header: &GgufHeader, _cfg: &Config) -> Result<()> {
        // Refuse early what could never fit one binding (the pack has not been downloaded yet).
        let max = self.gpu.limits.max_storage_buffer_binding_size as usize;
        if let Some(t) = header.tensors.iter().find(|t| t.nbytes > max) {
            return Err(Error::Gpu(format!("tensor '{}' ({} bytes) exceeds this GPU's storage binding limit of {max} bytes", t.name, t.nbytes)));
        }
        Ok(())
    }

    fn tensor(&mut self, info: &TensorInfo, bytes: Vec<u8>) -> Result<()> {
        if Self::is_linear_weight(info) {
            let elems = info.elem_count().ok_or_else(|| Error::gguf(format!("tensor '{}': shape overflows", info.name)))?;
            let w = GpuWeight::upload(&self.gpu, &info.name, info.ty, &bytes, elems)?;
            self.gpu_bytes += bytes.len();
            self.uploaded.insert(info.name.clone(), (w, info.shape.clone()));
        } else {
            self.host_bytes += bytes.len();
            self.host.insert(info.name.clone(), (info.ty, bytes, info.shape.clone()));
        }
        self.gpu.check()
    }
}

impl WeightSource for GpuStreamSink {
    fn encoded(&self, name: &str) -> Result<(TensorType, Cow<'_, [u8]>, Vec<usize>)> {
        let (ty, bytes, shape) = self.host.get(name).ok_or_else(|| missing(name))?;
        Ok((*ty, Cow::Borrowed(bytes.as_slice()), shape.clone()))
    }

    fn gpu_weight(&self, gpu: &Gpu, name: &str) -> Result<(GpuWeight, Vec<usize>)> {
        match self.uploaded.get(name) {
            Some((w, shape)) => Ok((w.clone(), shape.clone())),
            None => upload_encoded(gpu, self, name),
        }
    }
}

pub(crate) fn table(gpu: &Gpu, src: &dyn WeightSource, name: &str, shape: &[usize]) -> Result<GpuBuf> {
    let (v, s) = src.f32(name)?;
    if s != shape {
        return Err(Error::Shape { name: name.to_string(), expected: shape.to_vec(), found: s });
    }
    gpu.upload(name, &v)
}
