// Single-head self-attention of the SD-VAE mid block on channel-major tensors (the 1x1-conv
// layout of the decoder, no transposes), T = H*W tokens, C channels, scale = 1 / sqrt(C):
//   out[b, c, i] = sum_j softmax_j(scale * sum_e q[b, e, i] k[b, e, j]) v[b, c, j]
// in three stages of this one file (override STAGE), for the B batch elements b0 .. b0 + B of
// the tensors, with their (B, T, T) probabilities in `s` (the host runs one element at a time, so
// `s` is T x T: 64 MB for a 512 px image, whatever the batch):
//   STAGE 0: s[b, i, j] = scale * sum_e q[b0+b, e, i] k[b0+b, e, j]   (one invocation per (b, i, j))
//   STAGE 1: s[b, i, :] = softmax(s[b, i, :]) in place, max-subtracted  (one per row (b, i))
//   STAGE 2: out[b0+b, c, i] = sum_j s[b, i, j] v[b0+b, c, j]          (one per (b, c, i))
// All arithmetic is f32.

override STAGE: u32 = 0u;

struct Params {
    B: u32,     // batch elements in this dispatch
    C: u32,
    T: u32,
    scale: u32, // f32 bits of 1 / sqrt(C)
    b0: u32,    // first batch element of this dispatch
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;         // (batch, C, T)
@group(0) @binding(2) var<storage, read> k: array<f32>;         // (batch, C, T)
@group(0) @binding(3) var<storage, read> v: array<f32>;         // (batch, C, T)
@group(0) @binding(4) var<storage, read_write> s: array<f32>;   // (B, T, T) scores -> probabilities
@group(0) @binding(5) var<storage, read_write> out: array<f32>; // (batch, C, T)

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wg.x + wg.y * 65535u) * WG + lid.x;
    let T = p.T;
    if (STAGE == 0u) {
        if (e >= p.B * T * T) { return; }
        let j = e % T;
        let i = (e / T) % T;
        let b = p.b0 + e / (T * T);
        var acc = 0.0;
        for (var c = 0u; c < p.C; c++) {
            let base = (b * p.C + c) * T;
            acc = fma(q[base + i], k[base + j], acc);
        }
        s[e] = acc * bitcast<f32>(p.scale);
    } else if (STAGE == 1u) {
        if (e >= p.B * T) { return; }
        let row = e * T;
        var m = s[row];
        for (var j = 1u; j < T; j++) { m = max(m, s[row + j]); }
        var sum = 0.0;
        for (var j = 0u; j < T; j++) {
            let x = exp(s[row + j] - m);
            s[row + j] = x;
            sum += x;
        }
        let inv = 1.0 / sum;
        for (var j = 0u; j < T; j++) { s[row + j] = s[row + j] * inv; }
    } else {
        if (e >= p.B * p.C * T) { return; }
        let i = e % T;
        let bc = e / T;                      // b * C + c within this dispatch
        let b = bc / p.C;
        let row = (b * T + i) * T;
        let g = p.b0 * p.C * T + e;          // the element's index in v and out
        let vrow = g - i;
        var acc = 0.0;
        for (var j = 0u; j < T; j++) { acc = fma(s[row + j], v[vrow + j], acc); }
        out[g] = acc;
    }
}
