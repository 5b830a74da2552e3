// GroupNorm with an optional SiLU epilogue (the SD-VAE decoder's norms):
//   out[b, c, i] = act((x[b, c, i] - mean) / sqrt(var + eps) * gamma[c] + beta[c])
// mean and the biased variance over the C/G channels x HW values of group g = c / (C/G) of batch
// element b, in two passes (mean, then mean of squared deviations), as PyTorch computes them.
// One workgroup of WG invocations per (b, g); strided per-invocation sums, then a tree reduction.

struct Params {
    B: u32,   // batch
    C: u32,   // channels
    G: u32,   // groups (C % G == 0)
    HW: u32,  // values per channel
    eps: u32, // f32 bits of eps
    act: u32, // 0 none, 2 SiLU
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (B, C, HW)
@group(0) @binding(2) var<storage, read> gamma: array<f32>;     // (C)
@group(0) @binding(3) var<storage, read> beta: array<f32>;      // (C)
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // (B, C, HW)

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

fn reduce(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    let bg = wg.x + wg.y * 65535u;
    if (bg >= p.B * p.G) { return; } // uniform over the workgroup
    let lid = lid3.x;
    let b = bg / p.G;
    let g = bg % p.G;
    let cpg = p.C / p.G;
    let n = cpg * p.HW;
    let base = (b * p.C + g * cpg) * p.HW;
    var s = 0.0;
    for (var i = lid; i < n; i += WG) { s += x[base + i]; }
    let mean = reduce(lid, s) / f32(n);
    var s2 = 0.0;
    for (var i = lid; i < n; i += WG) {
        let d = x[base + i] - mean;
        s2 = fma(d, d, s2);
    }
    let inv = 1.0 / sqrt(reduce(lid, s2) / f32(n) + bitcast<f32>(p.eps));
    for (var i = lid; i < n; i += WG) {
        let c = g * cpg + i / p.HW;
        var v = (x[base + i] - mean) * inv * gamma[c] + beta[c];
        if (p.act == 2u) { v = v / (1.0 + exp(-v)); }
        out[base + i] = v;
    }
}
