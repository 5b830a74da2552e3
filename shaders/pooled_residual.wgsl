// The pooled middle's way back to the dense grid (training-free sparsification, config::PooledMiddle):
// h[b, i*n + j, c] += x[b, k, c] - base[b, k, c] with k = src(i)*s + src(j), the nearest-upsampled
// update the middle blocks made to the pooled tokens (model::forward_traced's Dense branch).
// src(d) = min(floor(f32(d) * scale), s - 1), scale = f32(s) / f32(n) rounded on the host, exactly
// as upsample_nearest.wgsl and model::nearest_source. One invocation per element of h.

struct Params {
    B: u32,     // batch
    s: u32,     // pooled grid side
    n: u32,     // dense grid side
    C: u32,     // channels
    scale: u32, // f32 bits of f32(s) / f32(n)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> h: array<f32>; // (B, n*n, C) dense residual stream, updated in place
@group(0) @binding(2) var<storage, read> x: array<f32>;       // (B, s*s, C) pooled tokens after the middle blocks
@group(0) @binding(3) var<storage, read> base: array<f32>;    // (B, s*s, C) pooled tokens before them

const WG: u32 = 256u;

fn src(d: u32) -> u32 {
    return min(u32(floor(f32(d) * bitcast<f32>(p.scale))), p.s - 1u);
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wg.x + wg.y * 65535u) * WG + lid.x;
    if (e >= p.B * p.n * p.n * p.C) { return; }
    let c = e % p.C;
    let r = e / p.C; // b * n*n + cell
    let cell = r % (p.n * p.n);
    let b = r / (p.n * p.n);
    let k = (b * p.s * p.s + src(cell / p.n) * p.s + src(cell % p.n)) * p.C + c;
    h[e] = h[e] + (x[k] - base[k]);
}
