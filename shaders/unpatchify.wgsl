// Final layer output to images: out (B, c, n*p, n*p) from tokens x (B, n*n, p*p*c), where token
// (h, w) holds a (p, p, c) patch row-major: out[b, ch, h*p + i, w*p + j] = x[b, h*n + w, (i*p + j)*c + ch].
// One invocation per output element.

struct Params {
    B: u32,     // batch
    n: u32,     // tokens per side
    P: u32,     // patch side
    C: u32,     // output channels
    total: u32, // B * C * (n*P)^2
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (B, n*n, P*P*C)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (B, C, n*P, n*P)

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wg.x + wg.y * 65535u) * WG + lid.x;
    if (e >= p.total) { return; }
    let side = p.n * p.P;
    let col = e % side;
    let r = e / side;
    let y = r % side;
    let bc = r / side; // b * C + ch
    let ch = bc % p.C;
    let b = bc / p.C;
    let h = y / p.P;
    let i = y % p.P;
    let w = col / p.P;
    let j = col % p.P;
    out[e] = x[(b * p.n * p.n + h * p.n + w) * (p.P * p.P * p.C) + (i * p.P + j) * p.C + ch];
}
