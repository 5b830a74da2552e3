// h (R, C) = LN(x) * (1 + scale[b]) + shift[b], LayerNorm without affine, eps 1e-6, b = row / T.
// shift / scale are slices of the adaLN output (B, stride). One workgroup per row.

struct Params {
    R: u32,         // rows
    C: u32,         // width
    T: u32,         // rows per batch element
    stride: u32,    // floats per batch row of `mods` (6C for blocks, 2C for the final layer)
    shift_off: u32, // offset of the shift vector in a `mods` row
    scale_off: u32, // offset of the scale vector in a `mods` row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;       // (R, C)
@group(0) @binding(2) var<storage, read> mods: array<f32>;    // (B, stride)
@group(0) @binding(3) var<storage, read_write> h: array<f32>; // (R, C)

const WG: u32 = 64u;
var<workgroup> part: array<f32, 64>;

fn reduce(v: f32, lid: u32) -> f32 {
    part[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            part[lid] += part[lid + s];
        }
        workgroupBarrier();
    }
    let total = part[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = wg.x + wg.y * 65535u;
    if (row >= p.R) { return; }
    let lid = lid3.x;
    let base = row * p.C;
    var s = 0.0;
    for (var c = lid; c < p.C; c += WG) { s += x[base + c]; }
    let mean = reduce(s, lid) / f32(p.C);
    var v = 0.0;
    for (var c = lid; c < p.C; c += WG) {
        let d = x[base + c] - mean;
        v += d * d;
    }
    let inv = 1.0 / sqrt(reduce(v, lid) / f32(p.C) + 1e-6);
    let m = (row / p.T) * p.stride;
    for (var c = lid; c < p.C; c += WG) {
        let n = (x[base + c] - mean) * inv;
        h[base + c] = n * (1.0 + mods[m + p.scale_off + c]) + mods[m + p.shift_off + c];
    }
}
