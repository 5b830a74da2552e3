// PyTorch AdaptiveAvgPool2d from an n x n to an s x s token grid, per channel:
// out[b, oi*s + oj, c] = mean of x[b, r*n + q, c] over rows r in [floor(oi*n/s), ceil((oi+1)*n/s))
// and columns q likewise (windows overlap when s does not divide n; s may exceed n).
// Sum in f32, then divide by the window size. One invocation per output element.

struct Params {
    B: u32, // batch
    n: u32, // input grid side
    s: u32, // output grid side
    C: u32, // channels
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (B, n*n, C)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (B, s*s, C)

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wg.x + wg.y * 65535u) * WG + lid.x;
    if (e >= p.B * p.s * p.s * p.C) { return; }
    let c = e % p.C;
    let r = e / p.C; // b * s*s + cell
    let cell = r % (p.s * p.s);
    let b = r / (p.s * p.s);
    let oi = cell / p.s;
    let oj = cell % p.s;
    let r0 = oi * p.n / p.s;
    let r1 = ((oi + 1u) * p.n + p.s - 1u) / p.s;
    let c0 = oj * p.n / p.s;
    let c1 = ((oj + 1u) * p.n + p.s - 1u) / p.s;
    var sum = 0.0;
    for (var rr = r0; rr < r1; rr++) {
        for (var cc = c0; cc < c1; cc++) {
            sum += x[(b * p.n * p.n + rr * p.n + cc) * p.C + c];
        }
    }
    out[e] = sum / f32((r1 - r0) * (c1 - c0));
}
