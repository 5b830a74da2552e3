// The page's CPU path, timed: the bundled model, DDIM with CFG, in headless Chromium without
// WebGPU (the engine's candle path in wasm, in its worker). Prints the median of a few runs after
// a warm-up and the longest main-thread task seen meanwhile. Needs a built dist/ (bash scripts/web-build.sh).
//
//   node scripts/browser-cpu-bench.mjs [steps=50] [runs=5]
import { cpuBrowser, waitStatus } from './cpu-browser.mjs';

const steps = Number(process.argv[2] || 50);
const runs = Number(process.argv[3] || 5);

const { browser, url, close } = await cpuBrowser();
try {
  const page = await browser.newPage();
  await page.goto(url);
  await waitStatus(page, /^ready/, 180_000, 250);
  const out = await page.evaluate(async ({ steps, runs }) => {
    const engine = window.sparsedit.engine; // the page's handle on the engine in its worker
    const longest = { ms: 0 };
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) longest.ms = Math.max(longest.ms, e.duration);
    }).observe({ type: 'longtask', buffered: false });
    const opts = { label: 7, seed: 1, steps, cfg: 4, sparsity: 'fixed', grid: 4, num: 1, preview: false, trace: false };
    await engine.generate(opts, () => {}); // warm-up
    const times = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await engine.generate(opts, () => {});
      times.push(performance.now() - t0);
    }
    await new Promise((r) => setTimeout(r, 200)); // long-task entries arrive after the task
    times.sort((a, b) => a - b);
    return { backend: engine.backend(), times, median: times[Math.floor(times.length / 2)], longest: longest.ms };
  }, { steps, runs });
  console.log(`page CPU path (${out.backend}, engine in a worker), ${steps} DDIM steps + CFG, bundled model, s = 4: median ${out.median.toFixed(0)} ms ` +
    `of ${runs} (${out.times.map((t) => t.toFixed(0)).join(', ')}); longest main-thread task ${out.longest.toFixed(0)} ms`);
} finally {
  await close();
}
