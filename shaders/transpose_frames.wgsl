// Swap the two middle axes of x (B, X, Y, C) into out (B, Y, X, C), optionally adding a table
// row indexed by x: out[b, y, x, c] = x[b, x, y, c] (+ table[x, c]).
// Latte's `(b f) t d -> (b t) f d` before a temporal block (X = frames, Y = token positions,
// with `temp_embed` (F, C) added before the first one) and the way back after it (X = token
// positions, Y = frames, no table). One invocation per output element.

struct Params {
    B: u32,   // clips
    X: u32,   // input's second axis
    Y: u32,   // input's third axis
    C: u32,   // channels
    add: u32, // 1: add table[x, c]; 0: the table binding is unused
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (B, X, Y, C)
@group(0) @binding(2) var<storage, read> table: array<f32>;     // (X, C) when add = 1
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // (B, Y, X, C)

const WG: u32 = 256u;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = (wg.x + wg.y * 65535u) * WG + lid.x;
    if (e >= p.B * p.X * p.Y * p.C) { return; }
    let c = e % p.C;
    let r = e / p.C;  // (b * Y + yi) * X + xi
    let xi = r % p.X;
    let yi = (r / p.X) % p.Y;
    let b = r / (p.X * p.Y);
    var v = x[((b * p.X + xi) * p.Y + yi) * p.C + c];
    if (p.add == 1u) {
        v = v + table[xi * p.C + c];
    }
    out[e] = v;
}
