// Linear layer for software adapters (lavapipe, SwiftShader): y (M, N) = epilogue(x (M, K) . W^T + b)
// with K a multiple of 4. No workgroup memory and no barriers (a barrier is a coroutine switch of
// every invocation there); each invocation computes a 4 x 4 block of y, reading x and W 16 bytes
// at a time, so each load feeds 4 to 16 products: fewer, wider loads are what made it faster on
// lavapipe (blocks of 8 x 2 or 16 x 1 with rows shared by the workgroup were slower). Measured
// (docs/BENCHMARKS.md): 1.6-2.8x the tiled kernel, 4x the direct one.
// Quantized blocks (32 weights, one scale) are summed unscaled and scaled once per block.
// The host prepends linear_common.wgsl (constants, parameters, epilogues).

@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;  // (M, K / 4)
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;  // (N, K): f32 bits | f16 pairs | q8_0 / q4_0 quants, padded to 16 bytes

// W[n, k..k+4] (k a multiple of 4), unscaled for the quantized formats.
fn weight4(n: u32, k: u32) -> vec4<f32> {
    let i = n * p.K + k;
    switch WFMT {
        case 1u: {
            let v = w[i / 8u];
            let h = select(v.xy, v.zw, (i & 4u) != 0u);
            return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
        }
        case 2u: {
            // 32 int8 per block = 8 u32; one u32 holds the 4 weights, sign-extended per byte.
            let word = w[i / 16u][(i / 4u) & 3u];
            let q = vec4<i32>(i32(word << 24u), i32(word << 16u), i32(word << 8u), i32(word)) >> vec4<u32>(24u);
            return vec4<f32>(q);
        }
        case 3u: {
            // 16 bytes per block: byte j holds element j (low nibble) and j + 16 (high).
            let j = i & 31u;
            let word = w[i / 32u][(j & 15u) / 4u];
            let shift = select(0u, 4u, j >= 16u);
            let nib = (vec4<u32>(word) >> (vec4<u32>(0u, 8u, 16u, 24u) + shift)) & vec4<u32>(0xfu);
            return vec4<f32>(nib) - 8.0;
        }
        default: {
            return bitcast<vec4<f32>>(w[i / 4u]);
        }
    }
}

// x: (M, K / 4) vec4; w: (N, K) in WFMT; y (M, N). Grid: (ceil(N / 256), ceil(M / 4)).
@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c0 = gid.x * 4u;
    let r0 = gid.y * 4u;
    if (r0 >= p.M || c0 >= p.N) { return; }
    let k4 = p.K / 4u;
    // Rows / columns past the end read the last valid one; their results are not stored.
    var xr: array<u32, 4>; // first vec4 of each row of x
    var wn: array<u32, 4>; // weight row of each column
    for (var i = 0u; i < 4u; i++) {
        xr[i] = min(r0 + i, p.M - 1u) * k4;
        wn[i] = min(c0 + i, p.N - 1u);
    }
    var acc = array<vec4<f32>, 4>(); // acc[i][j] = y[r0 + i, c0 + j] before the epilogue
    var part: array<vec4<f32>, 4>;   // one block's unscaled sums
    for (var kb = 0u; kb < p.K; kb += 32u) {
        // One 32-weight block of each column: its scale (quantized formats; K % 32 == 0 there).
        var s = vec4<f32>(1.0);
        if (WFMT >= 2u) {
            let blocks = p.K / 32u;
            let b = kb / 32u;
            s = vec4<f32>(scales[wn[0] * blocks + b], scales[wn[1] * blocks + b], scales[wn[2] * blocks + b], scales[wn[3] * blocks + b]);
        }
        // Zeroed explicitly: in Chromium (Tint, then SwiftShader) a `var` declared here kept the
        // previous block's sums, though WGSL says it starts at zero each time.
        for (var i = 0u; i < 4u; i++) { part[i] = vec4<f32>(); }
        let kend = min(kb + 32u, p.K);
        for (var k = kb; k < kend; k += 4u) {
            let w0 = weight4(wn[0], k);
            let w1 = weight4(wn[1], k);
            let w2 = weight4(wn[2], k);
            let w3 = weight4(wn[3], k);
            for (var i = 0u; i < 4u; i++) {
                let xv = x[xr[i] + k / 4u];
                part[i] += vec4<f32>(dot(xv, w0), dot(xv, w1), dot(xv, w2), dot(xv, w3));
            }
        }
        for (var i = 0u; i < 4u; i++) { acc[i] = fma(part[i], s, acc[i]); }
    }
    for (var i = 0u; i < 4u; i++) {
        if (r0 + i >= p.M) { break; }
        for (var j = 0u; j < 4u; j++) {
            if (c0 + j < p.N) { store(r0 + i, c0 + j, acc[i][j]); }
        }
    }
}
