// Gated residual of one vector per batch row, broadcast over its tokens (Poolingformer):
// x[b, t, c] += mods[b, gate_off + c] * a[b, c], in place. One invocation per element of x.

struct Params {
    B: u32,        // batch
    T: u32,        // tokens per batch row
    C: u32,        // channels
    stride: u32,   // floats per batch row of `mods` (6C for adaLN output)
    gate_off: u32, // offset of the gate vector in a `mods` row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>; // (B, T, C), updated in place
@group(0) @binding(2) var<storage, read> mods: array<f32>;    // (B, stride)
@group(0) @binding(3) var<storage, read> a: array<f32>;       // (B, C)

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wg.x + wg.y * 65535u) * WG + lid.x;
    if (e >= p.B * p.T * p.C) { return; }
    let c = e % p.C;
    let b = e / (p.T * p.C);
    x[e] = x[e] + mods[b * p.stride + p.gate_off + c] * a[b * p.C + c];
}
