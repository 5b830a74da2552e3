// The linear layers' two CPU kernels in wasm, timed in Node's V8 (Chromium's engine): candle's
// matmul (the `gemm` crate; no wasm SIMD kernels, so scalar) and sparsedit's own simd128 kernel
// (src/matmul.rs), on the bundled digit model's shapes and DiT-XL/2's, one after the other in one
// run. Prints a table: median ms per product, GFLOP/s (2 flops per MAC) and the ratio.
//
//   cargo build --release --lib --target wasm32-unknown-unknown --no-default-features --features wasm-bench
//   node scripts/wasm-matmul-bench.mjs [target/wasm32-unknown-unknown/release/sparsedit.wasm]
import fs from 'node:fs';
import os from 'node:os';

const file = process.argv[2] || 'target/wasm32-unknown-unknown/release/sparsedit.wasm';
const module = new WebAssembly.Module(fs.readFileSync(file));
// The library's wasm-bindgen imports are never called by bench_linear: stubs that throw.
const imports = {};
for (const { module: m, name, kind } of WebAssembly.Module.imports(module)) {
  imports[m] ??= {};
  if (kind === 'function') imports[m][name] = () => { throw new Error(`${m}.${name} called`); };
}
const { exports } = new WebAssembly.Instance(module, imports);
if (!exports.bench_linear) throw new Error(`${file}: no bench_linear export (build with --features wasm-bench)`);

const shapes = [
  // [what, rows, in, out]
  ['digit DiT qkv (2 x 64 tokens)', 128, 128, 384],
  ['digit DiT fc1', 128, 128, 512],
  ['digit DiT fc2', 128, 512, 128],
  ['digit Latte fc1 (2 x 8 x 64 tokens)', 1024, 128, 512],
  ['DiT-XL/2 qkv (2 x 256 tokens)', 512, 1152, 3456],
  ['DiT-XL/2 fc2', 512, 4608, 1152],
];
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(`wasm32 + simd128 in Node ${process.version} (V8 ${process.versions.v8}), ${os.cpus()[0].model}, ${os.cpus().length} cores`);
console.log('| shape (rows x in x out) | gemm ms | gemm GFLOP/s | simd128 ms | simd128 GFLOP/s | gemm / simd128 |');
console.log('|---|---:|---:|---:|---:|---:|');
for (const [what, rows, k, n] of shapes) {
  const flops = 2 * rows * k * n;
  const reps = Math.max(1, Math.round(2e8 / flops));
  const times = [[], []];
  const sums = [0, 0];
  for (let round = 0; round < 7; round++) {
    for (const kernel of [0, 1]) { // interleaved, so load on the machine hits both alike
      const t0 = performance.now();
      sums[kernel] = exports.bench_linear(kernel, rows, k, n, reps);
      times[kernel].push((performance.now() - t0) / reps);
    }
  }
  if (Math.abs(sums[0] - sums[1]) > 1e-4 * Math.abs(sums[0]) + 1e-3) throw new Error(`${what}: checksums differ ${sums}`);
  const [g, s] = times.map(median);
  console.log(`| ${what}: ${rows} x ${k} x ${n} | ${g.toFixed(2)} | ${(flops / g / 1e6).toFixed(2)} | ${s.toFixed(2)} | ${(flops / s / 1e6).toFixed(2)} | ${(g / s).toFixed(2)}x |`);
}
