// PyTorch 'nearest' upsampling of an s x s token grid to n x n, per channel:
// out[b, i*n + j, c] = x[b, src(i)*s + src(j), c], src(d) = min(floor(f32(d) * scale), s - 1) with
// scale = f32(s) / f32(n) rounded on the host (WGSL division is not correctly rounded), exactly as
// model::nearest_source; the identity when s == n. One invocation per output element.

struct Params {
    B: u32,     // batch
    s: u32,     // input (sparse) grid side
    n: u32,     // output (dense) grid side
    C: u32,     // channels
    scale: u32, // f32 bits of f32(s) / f32(n)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (B, s*s, C)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (B, n*n, C)

const WG: u32 = 256u;

fn src(d: u32) -> u32 {
    if (p.s == p.n) { return d; }
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
    let si = src(cell / p.n);
    let sj = src(cell % p.n);
    out[e] = x[(b * p.s * p.s + si * p.s + sj) * p.C + c];
}
