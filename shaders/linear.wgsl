// Linear layer: y (M, N) = epilogue(x (M, K) . W^T + b), W (N, K) stored as f32, f16, q8_0 or q4_0.
// Tiled (`main`): a 64 x 64 output tile per workgroup of 16 x 16 threads, 4 x 4 outputs per
// thread, K in steps of 16 through workgroup memory; weights are dequantised while loading the tile.
// Direct (`main_direct`): no workgroup memory, no barriers, 4 outputs of one row per thread. For
// software adapters (lavapipe, SwiftShader), which run each workgroup barrier as a coroutine
// switch of every invocation: there the tiled loop is many times slower than this one.
//
// This file is the kernel body shared by two arithmetic precisions; it is not a module on its
// own. The host prepends linear_common.wgsl (constants, parameters, epilogues) and one of
// (src/gpu/ops/mod.rs, `Precision`):
//   linear_f32.wgsl  tiles in f32, fma in f32 (the default, works on every adapter)
//   linear_f16.wgsl  `enable f16;` tiles in f16, products in f16, sums in f32 (needs shader-f16)
// Each defines the tile element type `H`, `to_h` (f32 -> H when a value enters a tile) and
// `madd` (acc + a * b over 4 outputs, accumulated in f32). WGSL has no includes and
// `enable f16` cannot be conditional, so the shared part (bindings, weight decoding, epilogues,
// the tile loop) lives here once instead of being copied into two kernels.

@group(0) @binding(1) var<storage, read> x: array<f32>;        // (M, K)
@group(0) @binding(2) var<storage, read> w: array<u32>;        // (N, K): f32 bits | f16 pairs | q8_0 / q4_0 quants

const TILE: u32 = 64u;
const KT: u32 = 16u;

var<workgroup> xs: array<array<H, 16>, 64>; // x tile (64 rows, 16 k)
var<workgroup> ws: array<array<H, 16>, 64>; // W tile (64 output features, 16 k)

fn weight(n: u32, k: u32) -> f32 {
    let i = n * p.K + k;
    switch WFMT {
        case 1u: {
            let pair = unpack2x16float(w[i / 2u]);
            return select(pair.x, pair.y, (i & 1u) == 1u);
        }
        case 2u: {
            // 32 int8 per block = 8 u32; block b of row n is at n * K/32 + k/32.
            let word = w[i / 4u];
            let q = i32(word << (24u - 8u * (i & 3u))) >> 24u;
            return f32(q) * scales[i / 32u];
        }
        case 3u: {
            // 16 bytes per block = 4 u32: byte j holds element j (low nibble) and j + 16 (high).
            let blk = i / 32u;
            let j = i & 31u;
            let byte_idx = j & 15u;
            let word = w[blk * 4u + byte_idx / 4u];
            let byte = (word >> (8u * (byte_idx & 3u))) & 0xffu;
            let nib = select(byte & 0xfu, byte >> 4u, j >= 16u);
            return (f32(nib) - 8.0) * scales[blk];
        }
        default: {
            return bitcast<f32>(w[i]);
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    let tid = lid.y * 16u + lid.x;
    var acc: array<vec4<f32>, 4>; // acc[i][j]: row lid.y + 16 i, column lid.x + 16 j
    for (var k0 = 0u; k0 < p.K; k0 += KT) {
        // 256 threads load 64 x 16 = 1024 values of each tile: 4 each.
        for (var l = 0u; l < 4u; l++) {
            let e = tid * 4u + l;
            let r = e / KT;
            let kk = e % KT;
            let gk = k0 + kk;
            var xv = 0.0;
            if (row0 + r < p.M && gk < p.K) {
                xv = x[(row0 + r) * p.K + gk];
            }
            xs[r][kk] = to_h(xv);
            var wv = 0.0;
            if (col0 + r < p.N && gk < p.K) {
                wv = weight(col0 + r, gk);
            }
            ws[r][kk] = to_h(wv);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KT; kk++) {
            let b = vec4<H>(ws[lid.x][kk], ws[lid.x + 16u][kk], ws[lid.x + 32u][kk], ws[lid.x + 48u][kk]);
            for (var i = 0u; i < 4u; i++) {
                acc[i] = madd(acc[i], xs[lid.y + 16u * i][kk], b);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y + 16u * i;
        if (r >= p.M) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x + 16u * j;
            if (c >= p.N) { continue; }
            store(r, c, acc[i][j]);
        }
    }
}

@compute @workgroup_size(64, 1, 1)
fn main_direct(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c0 = gid.x * 4u;
    let r = gid.y;
    if (r >= p.M || c0 >= p.N) { return; }
    var acc = vec4<f32>();
    for (var k = 0u; k < p.K; k++) {
        var b = vec4<H>();
        for (var j = 0u; j < 4u; j++) {
            if (c0 + j < p.N) { b[j] = to_h(weight(c0 + j, k)); }
        }
        acc = madd(acc, to_h(x[r * p.K + k]), b);
    }
    for (var j = 0u; j < 4u; j++) {
        if (c0 + j < p.N) { store(r, c0 + j, acc[j]); }
    }
}
