// The part of the linear kernels that does not depend on how x and W are read: the
// specialisation constants, the parameters, the bias / aux / output bindings and the epilogues.
// The host prepends it to linear.wgsl (tiled and direct entries) and to linear_soft.wgsl
// (register-blocked entry for software adapters); bindings 1 (x) and 2 (W) are declared there,
// each file reading them in its own width.

override WFMT: u32 = 0u; // 0 f32, 1 f16 (two per u32, low half first), 2 q8_0, 3 q4_0
override EPI: u32 = 0u;  // 0 y = v; 1 y = gelu_tanh(v); 2 y += gate[b] * v (gated residual, in place);
                         // 3 y = v + aux[row % T] (pos_embed); 4 y += v (accumulate); 5 y = silu(v)

struct Params {
    M: u32,          // rows (tokens of all batch rows)
    N: u32,          // output features
    K: u32,          // input features
    T: u32,          // rows per batch element (EPI 2 gate row = row / T; EPI 3 aux row = row % T)
    gate_stride: u32, // EPI 2: floats per batch row of the gate buffer (6C for adaLN output)
    gate_offset: u32, // EPI 2: first float of the gate vector within its row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(3) var<storage, read> scales: array<f32>;   // (N, K / 32) block scales (q8_0, q4_0)
@group(0) @binding(4) var<storage, read> bias: array<f32>;     // (N)
@group(0) @binding(5) var<storage, read> aux: array<f32>;      // EPI 2: (B, gate_stride); EPI 3: (T, N)
@group(0) @binding(6) var<storage, read_write> y: array<f32>;  // (M, N)


fn gelu_tanh(v: f32) -> f32 {
    // 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))); tanh via exp, clamped against overflow.
    let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
    let e = exp(2.0 * u);
    return 0.5 * v * (1.0 + (e - 1.0) / (e + 1.0));
}

// y[r, c] = epilogue(acc + bias[c])
fn store(r: u32, c: u32, acc: f32) {
    let v = acc + bias[c];
    let o = r * p.N + c;
    switch EPI {
        case 1u: { y[o] = gelu_tanh(v); }
        case 2u: { y[o] = y[o] + aux[(r / p.T) * p.gate_stride + p.gate_offset + c] * v; }
        case 3u: { y[o] = v + aux[(r % p.T) * p.N + c]; }
        case 4u: { y[o] = y[o] + v; }
        case 5u: { y[o] = v / (1.0 + exp(-v)); }
        default: { y[o] = v; }
    }
}
