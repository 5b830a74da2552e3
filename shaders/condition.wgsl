// Conditioning: out (B, C) = silu(t_emb + table[label[b]]), the SiLU(c) every adaLN takes.
// Labels are validated on the host; the index is clamped to rows - 1 here so a bad label never
// reads out of bounds. One invocation per output element.

struct Params {
    B: u32,    // batch
    C: u32,    // hidden size
    rows: u32, // rows of the label table (classes + 1 null class when trained with dropout)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> t_emb: array<f32>;     // (B, C)
@group(0) @binding(2) var<storage, read> table: array<f32>;     // (rows, C)
@group(0) @binding(3) var<storage, read> labels: array<u32>;    // (B)
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // (B, C)

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wg.x + wg.y * 65535u) * WG + lid.x;
    if (e >= p.B * p.C) { return; }
    let b = e / p.C;
    let c = e % p.C;
    let row = min(labels[b], p.rows - 1u);
    let v = t_emb[e] + table[row * p.C + c];
    out[e] = v / (1.0 + exp(-v));
}
