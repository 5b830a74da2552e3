// Multi-head attention, self or cross: out[b, i, h*D .. (h+1)*D] = softmax_j(q_i . k_j / sqrt(D)) v_j
// for each batch element b and head h, with Tq queries and Tk keys (Tq may differ from Tk).
// q / k / v are read in place from packed projection outputs (row strides, column offsets):
//   q[b, i, h, e] = qb[(b * Tq + i) * q_stride + q_off + h * D + e]
//   k[b, j, h, e] = kv[(b * Tk + j) * kv_stride + k_off + h * D + e]
//   v[b, j, h, e] = kv[(b * Tk + j) * kv_stride + v_off + h * D + e]
// One workgroup = QB query rows of one (b, h); one invocation = one query row. Keys and values go
// through workgroup memory in tiles of KT keys; each invocation keeps an online softmax (running
// max m, running sum l, accumulator acc[D] rescaled by exp(m_old - m_new) once per tile), so no
// Tq x Tk matrix ever exists. All arithmetic is f32.

override D: u32 = 64u; // head dim (C / H), 1 ..= MAXD

struct Params {
    B: u32,         // batch elements
    Tq: u32,        // query rows per batch element
    Tk: u32,        // key / value rows per batch element
    C: u32,         // width of q, k, v and out (H * D)
    H: u32,         // heads
    q_stride: u32,  // floats per row of qb
    q_off: u32,     // first q column in a qb row
    kv_stride: u32, // floats per row of kv
    k_off: u32,     // first k column in a kv row
    v_off: u32,     // first v column in a kv row
    n_qblocks: u32, // ceil(Tq / QB): query blocks per (b, h)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qb: array<f32>;        // (B, Tq, q_stride), q at columns q_off .. q_off + C
@group(0) @binding(2) var<storage, read> kv: array<f32>;        // (B, Tk, kv_stride), k at k_off .., v at v_off ..
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // (B, Tq, C)

const QB: u32 = 64u;     // query rows (invocations) per workgroup
const MAXD: u32 = 128u;  // largest head dim
const TILE_F: u32 = 2048u; // floats per K (and per V) tile: 2 x 8 KiB of workgroup memory
const MAXKT: u32 = 32u;  // at most this many keys per tile (size of the private score array)

var<workgroup> ks: array<f32, 2048>; // (KT, D) keys of the current tile
var<workgroup> vs: array<f32, 2048>; // (KT, D) values of the current tile

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
    // Flat workgroup index (the host splits it over x and y past 65535).
    let g = wg.x + wg.y * 65535u;
    if (g >= p.n_qblocks * p.B * p.H) { return; } // uniform over the workgroup
    let qblk = g % p.n_qblocks;
    let bh = g / p.n_qblocks;
    let h = bh % p.H;
    let b = bh / p.H;
    let lid = lid3.x;
    let i = qblk * QB + lid;
    let valid = i < p.Tq;

    let scale = 1.0 / sqrt(f32(D));
    var q: array<f32, MAXD>;
    var acc: array<f32, MAXD>;
    if (valid) {
        let qbase = (b * p.Tq + i) * p.q_stride + p.q_off + h * D;
        for (var e = 0u; e < D; e++) {
            q[e] = qb[qbase + e] * scale;
            acc[e] = 0.0;
        }
    }
    var m = -3.0e38; // running max (finite: exp(m - m_new) is then 0 on the first tile)
    var l = 0.0;     // running sum of exp(s - m)
    var s: array<f32, MAXKT>;

    // Keys per tile: as many as fit TILE_F floats, at most MAXKT (D = 128: 16, 72: 28, <= 64: 32).
    let kt = min(MAXKT, TILE_F / D);
    let kv_head = h * D;
    for (var j0 = 0u; j0 < p.Tk; j0 += kt) {
        let n = min(kt, p.Tk - j0);
        // Cooperative load of n keys and values of this head.
        for (var t = lid; t < n * D; t += QB) {
            let jj = t / D;
            let e = t - jj * D;
            let row = (b * p.Tk + j0 + jj) * p.kv_stride + kv_head + e;
            ks[t] = kv[row + p.k_off];
            vs[t] = kv[row + p.v_off];
        }
        workgroupBarrier();
        if (valid) {
            var mt = m;
            for (var jj = 0u; jj < n; jj++) {
                var dot = 0.0;
                let kb = jj * D;
                for (var e = 0u; e < D; e++) {
                    dot = fma(q[e], ks[kb + e], dot);
                }
                s[jj] = dot;
                mt = max(mt, dot);
            }
            let corr = exp(m - mt);
            m = mt;
            var lt = 0.0;
            for (var jj = 0u; jj < n; jj++) {
                let pj = exp(s[jj] - m);
                s[jj] = pj;
                lt += pj;
            }
            l = l * corr + lt;
            for (var e = 0u; e < D; e++) {
                var a = acc[e] * corr;
                for (var jj = 0u; jj < n; jj++) {
                    a = fma(s[jj], vs[jj * D + e], a);
                }
                acc[e] = a;
            }
        }
        workgroupBarrier();
    }

    if (valid) {
        let inv = 1.0 / l;
        let obase = (b * p.Tq + i) * p.C + h * D;
        for (var e = 0u; e < D; e++) {
            out[obase + e] = acc[e] * inv;
        }
    }
}
