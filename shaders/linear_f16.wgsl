enable f16;
// f16 arithmetic for the linear kernel: LINEAR_F16_WGSL = this file + linear.wgsl (the kernel
// body, with the bindings, weight decoding and epilogues shared with the f32 path; see its
// header). `enable f16` must come before every declaration, hence a file of its own; it needs a
// device opened with shader-f16 (`Gpu::has_f16`).
//
// The x and W tiles are held in workgroup memory as f16 (half the bytes of the f32 path), each
// product is computed in f16, and products are summed in f32: every term carries at most three
// roundings to 11 significant bits (x, W, product: relative error <= 3 * 2^-11 per term) and
// the sum adds no f16 rounding, so the error of an output is about 2^-11 times the root sum of
// squares of its terms, independent of how long K is. Weights and biases arrive as they are
// stored (f16 weights are exact in a tile), epilogues run in f32.

alias H = f16; // element type of the x and W tiles in workgroup memory

// Largest finite f16. Values beyond it saturate (a WGSL f32 -> f16 conversion of an
// out-of-range value is otherwise indeterminate); models whose activations reach it need F32.
const F16_MAX: f32 = 65504.0;

fn to_h(v: f32) -> H {
    return f16(clamp(v, -F16_MAX, F16_MAX));
}

// acc + a * b: four f16 products, each widened to f32 before it is added.
fn madd(acc: vec4<f32>, a: H, b: vec4<H>) -> vec4<f32> {
    return acc + vec4<f32>(a * b);
}
