// Head-averaged attention probabilities (the token view when tracing):
//   probs[b, i, j] = mean_h softmax_j(q[b, i, h] . k[b, j, h] / sqrt(D))
// q and k are read from packed projection outputs exactly as in attention.wgsl (same Params).
// One invocation per query row (b, i): for each head, a max pass, a sum pass, then a pass that
// adds p / H into the output row (the invocation owns its row, so no races). Only for tracing:
// three dot-product passes per head, no tiling.

override D: u32 = 64u; // head dim (C / H), 1 ..= MAXD

struct Params {
    B: u32,         // batch elements
    Tq: u32,        // query rows per batch element
    Tk: u32,        // key rows per batch element
    C: u32,         // width of q and k (H * D)
    H: u32,         // heads
    q_stride: u32,  // floats per row of qb
    q_off: u32,     // first q column in a qb row
    kv_stride: u32, // floats per row of kv
    k_off: u32,     // first k column in a kv row
    v_off: u32,     // unused here (same Params as attention.wgsl)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qb: array<f32>;          // (B, Tq, q_stride), q at columns q_off .. q_off + C
@group(0) @binding(2) var<storage, read> kv: array<f32>;          // (B, Tk, kv_stride), k at columns k_off .. k_off + C
@group(0) @binding(3) var<storage, read_write> probs: array<f32>; // (B, Tq, Tk)

const WG: u32 = 64u;
const MAXD: u32 = 128u;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = (wg.x + wg.y * 65535u) * WG + lid.x; // b * Tq + i
    if (row >= p.B * p.Tq) { return; }
    let b = row / p.Tq;
    let scale = 1.0 / sqrt(f32(D));
    let inv_h = 1.0 / f32(p.H);
    let obase = row * p.Tk;
    var q: array<f32, MAXD>;
    for (var h = 0u; h < p.H; h++) {
        let qbase = row * p.q_stride + p.q_off + h * D;
        for (var e = 0u; e < D; e++) {
            q[e] = qb[qbase + e] * scale;
        }
        let kbase = b * p.Tk * p.kv_stride + p.k_off + h * D;
        var m = -3.0e38;
        for (var j = 0u; j < p.Tk; j++) {
            m = max(m, score(&q, kbase + j * p.kv_stride));
        }
        var l = 0.0;
        for (var j = 0u; j < p.Tk; j++) {
            l += exp(score(&q, kbase + j * p.kv_stride) - m);
        }
        let w = inv_h / l;
        for (var j = 0u; j < p.Tk; j++) {
            let pj = exp(score(&q, kbase + j * p.kv_stride) - m) * w;
            if (h == 0u) {
                probs[obase + j] = pj;
            } else {
                probs[obase + j] += pj;
            }
        }
    }
}

// q . k for the (pre-scaled) query row and the key starting at kv[k0].
fn score(q: ptr<function, array<f32, MAXD>>, k0: u32) -> f32 {
    var dot = 0.0;
    for (var e = 0u; e < D; e++) {
        dot = fma((*q)[e], kv[k0 + e], dot);
    }
    return dot;
}
