// out (B, C) = mean over T tokens of x (B, T, C) (the Poolingformer's global mean of V).
// A workgroup covers 64 channels of one batch row; its 4 rows of invocations sum every 4th token
// in f32, the 4 partial sums are added in a fixed order, then divided by T.

struct Params {
    B: u32,      // batch
    T: u32,      // tokens
    C: u32,      // channels
    chunks: u32, // ceil(C / 64): workgroups per batch row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (B, T, C)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (B, C)

const CW: u32 = 64u; // channels per workgroup
const TW: u32 = 4u;  // token lanes per workgroup

var<workgroup> part: array<array<f32, 64>, 4>;

@compute @workgroup_size(64, 4, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let w = wg.x + wg.y * 65535u;
    if (w >= p.B * p.chunks) { return; } // uniform per workgroup
    let b = w / p.chunks;
    let c = (w % p.chunks) * CW + lid.x;
    var s = 0.0;
    if (c < p.C) {
        for (var t = lid.y; t < p.T; t += TW) {
            s += x[(b * p.T + t) * p.C + c];
        }
    }
    part[lid.y][lid.x] = s;
    workgroupBarrier();
    if (lid.y == 0u && c < p.C) {
        let total = (part[0][lid.x] + part[1][lid.x]) + (part[2][lid.x] + part[3][lid.x]);
        out[b * p.C + c] = total / f32(p.T);
    }
}
