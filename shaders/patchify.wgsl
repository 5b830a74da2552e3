// Patch embedding input layout: out (B, N, cin*p*p) from images x (B, cin, I, I), N = n*n, n = I/p:
// out[b, hh*n + ww, ci*p*p + i*p + j] = x[b, ci, hh*p + i, ww*p + j]. One invocation per output.

struct Params {
    B: u32,     // batch
    cin: u32,   // input channels
    I: u32,     // image side (input_size)
    P: u32,     // patch side
    n: u32,     // patches per side, I / P
    total: u32, // B * n * n * cin * P * P
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (B, cin, I, I)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (B, n*n, cin*P*P)

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wg.x + wg.y * 65535u) * WG + lid.x;
    if (e >= p.total) { return; }
    let pp = p.P * p.P;
    let k_len = p.cin * pp;
    let k = e % k_len;
    let row = e / k_len; // b * N + token
    let tok = row % (p.n * p.n);
    let b = row / (p.n * p.n);
    let hh = tok / p.n;
    let ww = tok % p.n;
    let ci = k / pp;
    let i = (k / p.P) % p.P;
    let j = k % p.P;
    out[e] = x[((b * p.cin + ci) * p.I + hh * p.P + i) * p.I + ww * p.P + j];
}
