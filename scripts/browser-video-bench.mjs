// Time per clip in the page: the bundled moving-digit video packs (dense Latte, spatial-temporal
// SparseDiT), each clicked through the page's own form with its defaults for a video model (DDIM
// 25 steps, CFG 7, the live preview and the attention capture on, one clip), on WebGPU and on the
// CPU path (a Chromium without WebGPU: the engine's candle path in wasm, in its worker). The time
// is the page's own "done in N ms" (the engine's ms_total: from the request to the last step).
// Each setting first runs a 2-step warm-up (pipelines, plans, buffers), then `runs` timed clips
// (`gpu-runs` on WebGPU: on a software adapter one clip takes minutes). Prints one table row per
// (engine, model, sparsity) with the median, and the sparse / dense ratio of each engine.
// Needs a built dist/ (bash scripts/web-build.sh).
//
//   node scripts/browser-video-bench.mjs [runs=3] [gpu-runs=1] [class=7] [steps=the page's 25]
import os from 'node:os';
import { pageBrowser, waitStatus } from './cpu-browser.mjs';

const cpuRuns = Number(process.argv[2] || 3);
const gpuRuns = Number(process.argv[3] || 1);
const cls = Number(process.argv[4] || 7);
const steps = process.argv[5] ? Number(process.argv[5]) : null;
const MODELS = [
  { file: 'latte-tiny-q8_0.gguf', sparsity: ['dense'] },
  { file: 'sparselatte-tiny-q8_0.gguf', sparsity: ['fixed', 'schedule'] },
];

/** One Generate click with the form as it stands; the page's "done in N ms" as a number. */
async function clickGenerate(page) {
  await page.getByTestId('generate').click();
  const done = await waitStatus(page, /^(done|error)/, 30 * 60_000);
  const m = /^done in (\d+) ms/.exec(done);
  if (!m) throw new Error(`generate: ${done}`);
  return Number(m[1]);
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows = [];
for (const webgpu of [true, false]) {
  const { browser, url, close } = await pageBrowser({ webgpu });
  try {
    for (const model of MODELS) {
      const page = await browser.newPage();
      await page.goto(`${url}?model=models/${model.file}`);
      const ready = await waitStatus(page, /^(ready|error)/, 5 * 60_000);
      if (!/^ready/.test(ready)) throw new Error(`${model.file}: ${ready}`);
      const info = await page.evaluate(() => window.sparsedit.info);
      const engine = await page.evaluate(() => window.sparsedit.engine.backend());
      const adapter = webgpu ? await page.evaluate(() => window.sparsedit.engine.adapter()) : 'none';
      if (engine !== (webgpu ? 'webgpu' : 'cpu')) throw new Error(`${model.file}: engine ${engine}, wanted ${webgpu ? 'webgpu' : 'cpu'}`);
      await page.getByTestId(`class-${cls}`).click();
      const pageSteps = steps ? String(steps) : await page.getByTestId('steps').inputValue();
      for (const sparsity of model.sparsity) {
        await page.locator(`input[name="sparsity"][value="${sparsity}"]`).check();
        await page.getByTestId('steps').fill('2');
        await clickGenerate(page); // warm-up: pipelines, plans, buffers
        await page.getByTestId('steps').fill(pageSteps);
        const form = await page.evaluate(() => ({
          steps: document.getElementById('steps').value, sampler: document.getElementById('sampler').value,
          cfg: document.getElementById('cfg').value, grid: document.getElementById('grid').value,
          rmin: document.getElementById('rmin').value, rmax: document.getElementById('rmax').value,
        }));
        const runs = webgpu ? gpuRuns : cpuRuns;
        const times = [];
        for (let i = 0; i < runs; i++) times.push(await clickGenerate(page));
        const setting = sparsity === 'dense' ? 'dense' : sparsity === 'fixed' ? `s = ${form.grid}` : `schedule ${form.rmin}:${form.rmax}`;
        const row = { engine: webgpu ? `WebGPU (${adapter.trim()})` : 'CPU path (wasm)', runs, model: model.file, frames: info.frames, setting,
          form: `${form.sampler.toUpperCase()} ${form.steps}, CFG ${form.cfg}`, times, median: median(times), steps: Number(form.steps) };
        rows.push(row);
        console.log(`# ${row.engine} ${row.model} ${setting}: ${times.join(', ')} ms`);
      }
      await page.close();
    }
  } finally {
    await close();
  }
}

console.log(`\nIn-page time per clip (${os.cpus()[0].model}, ${os.cpus().length} cores; Chromium headless; median of the runs after a warm-up; class ${cls})\n`);
console.log('| engine | pack | sparsity | sampler | runs | per clip | per step | vs dense |');
console.log('|---|---|---|---|---:|---:|---:|---:|');
for (const r of rows) {
  const dense = rows.find((d) => d.engine === r.engine && d.setting === 'dense');
  const ratio = dense ? `${(r.median / dense.median).toFixed(2)}x` : '';
  console.log(`| ${r.engine} | ${r.model} (${r.frames} frames) | ${r.setting} | ${r.form} | ${r.runs} | ${(r.median / 1000).toFixed(2)} s | ${(r.median / r.steps).toFixed(0)} ms | ${ratio} |`);
}
