// Gated residual of one vector per sequence, broadcast over its tokens (Poolingformer):
// x[b, t, c] += mods[b / G, gate_off + c] * a[b, c], in place, where G sequences share a
// modulation row (1 for images; the F frames of a clip in a video model). One invocation per
// element of x.

struct Params {
    B: u32,        // sequences
    T: u32,        // tokens per sequence
    C: u32,        // channels
    stride: u32,   // floats per batch row of `mods` (6C for adaLN output)
    gate_off: u32, // offset of the gate vector in a `mods` row
    G: u32,        // sequences per `mods` row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>; // (B, T, C), updated in place
@group(0) @binding(2) var<storage, read> mods: array<f32>;    // (B / G, stride)
@group(0) @binding(3) var<storage, read> a: array<f32>;       // (B, C)

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wg.x + wg.y * 65535u) * WG + lid.x;
    if (e >= p.B * p.T * p.C) { return; }
    let c = e % p.C;
    let b = e / (p.T * p.C);
    x[e] = x[e] + mods[(b / p.G) * p.stride + p.gate_off + c] * a[b * p.C + c];
}
