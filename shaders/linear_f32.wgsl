// f32 arithmetic for the linear kernel: LINEAR_WGSL = this file + linear.wgsl (the kernel body;
// see its header). The default precision: needs no optional feature.

alias H = f32; // element type of the x and W tiles in workgroup memory

fn to_h(v: f32) -> H {
    return v;
}

// acc + a * b, fused (one rounding per product and sum).
fn madd(acc: vec4<f32>, a: H, b: vec4<H>) -> vec4<f32> {
    return fma(vec4<f32>(a), b, acc);
}
