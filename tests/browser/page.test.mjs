// Browser tests of the demo page: Debian's chromium (WebGPU through SwiftShader) driven by
// playwright-core, against the Trunk-built page in dist/ served from 127.0.0.1 by this test.
//
//   bash scripts/web-build.sh && node --test tests/browser/
//
// Environment: CHROMIUM (default /usr/bin/chromium), SPARSEDIT_CLI (default target/debug/sparsedit).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer } from '../../scripts/static-server.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const DIST = path.join(ROOT, 'dist');
const ARTIFACTS = path.join(ROOT, 'target', 'browser-artifacts');
const MODEL = 'sparsedit-tiny-q8_0.gguf';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CLI = process.env.SPARSEDIT_CLI || path.join(ROOT, 'target', 'debug', 'sparsedit');

// One generation, the same on both sides.
const CLASS = 7, SEED = 1234, STEPS = 10, CFG = 4, GRID = 4;
const TOLERANCE = 1e-2;
// The tiny SparseDiT (dense grid 8×8 = 64 tokens) at sparse grid s = 4, hard-coded so the test
// can fail even when engine.layout() and the page agree with each other.
const TINY_KINDS = ['poolingformer', 'merge', 'semantic', 'semantic', 'recover', 'merge', 'semantic', 'semantic', 'recover', 'normal'];
// The dense tiny DiT in training-free mode (pooled middle = blocks 2..8 of 10) at s = 4.
const DENSE_MODEL = 'dit-tiny-q8_0.gguf';
const POOLED_TOKENS_S4 = [64, 64, 16, 16, 16, 16, 16, 16, 64, 64];
const TINY_TOKENS_S4 = [64, 16, 16, 16, 64, 16, 16, 16, 64, 64];

// Video packs (converted from tests/fixtures/data in `before`): the pixel-space Latte of 8 frames
// and the spatial-temporal sparse Latte of 3 frames (6x6 dense grid, s = 4 by default).
const VIDEO_PACK = 'latte-f8-rgb.gguf';
const SPARSE_VIDEO_PACK = 'sparselatte-f3.gguf';

const GENERATE_TIMEOUT = 10 * 60_000;

// The engine's worker (web/js/worker.js) with every GPUDevice it requests kept in
// self.__gpuDevices: static imports run in order, so the hook is in place before the worker's
// first message opens the engine.
const GPU_CAPTURE_WORKER = "import '/test/gpu-capture.js';\nimport '/js/worker.js';\n";
const GPU_CAPTURE = `if (self.GPUAdapter) {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...args) {
    const device = await requestDevice.apply(this, args);
    (self.__gpuDevices ||= []).push(device);
    return device;
  };
}
`;

/** The page's engine workers (the compare engine has a second one). */
const engineWorkers = (page) => page.workers().filter((w) => /\/(js\/worker|test\/gpu-capture-worker)\.js$/.test(w.url()));
const LOAD_TIMEOUT = 3 * 60_000;

// The config.json of DiT-XL/2 256 in diffusers' layout (the opt-in XL test from the Hub).
const XL_CONFIG = JSON.stringify({
  _class_name: 'DiTTransformer2DModel', sample_size: 32, patch_size: 2, num_attention_heads: 16, attention_head_dim: 72,
  num_layers: 28, in_channels: 4, out_channels: 8, num_embeds_ada_norm: 1000,
});

let server, baseUrl, browser;
// The Range headers of test/dit-flaky's weight requests (null: a whole-file GET).
const flakyRequests = [];
// The same for test/dit-reload, whose first download stalls after RELOAD_STALL bytes.
const reloadRequests = [];
const RELOAD_STALL = 300_000;
// Requests for the stand-in Hub's decoder weights: { path, range }.
const vaeRequests = [];
// Requests for the stand-in Hub's files (paths under /hub/…/resolve/ and /cdn/), in order.
const hubRequests = [];

function readSafetensors(file, name) {
  const buf = fs.readFileSync(file);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8'));
  const t = header[name];
  assert.ok(t, `${file}: no tensor "${name}" (has ${Object.keys(header).join(', ')})`);
  assert.equal(t.dtype, 'F32', `${name}: dtype ${t.dtype}`);
  const [b, e] = t.data_offsets;
  const start = 8 + headerLen + b;
  const bytes = buf.subarray(start, 8 + headerLen + e);
  const out = new Float32Array(bytes.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = bytes.readFloatLE(4 * i);
  return { shape: t.shape, data: out };
}

function ensureCli() {
  if (!fs.existsSync(CLI) || !process.env.SPARSEDIT_CLI) {
    // a no-op when cargo test already built it
    execFileSync('cargo', ['build', '--locked', '--bin', 'sparsedit'], { cwd: ROOT, stdio: 'inherit' });
  }
}

function cliSample(model = MODEL, steps = STEPS, extra = []) {
  ensureCli();
  const tag = extra.join('-').replace(/[^a-z0-9-]/gi, '');
  const out = path.join(ARTIFACTS, `cli-${model}-class${CLASS}-seed${SEED}-steps${steps}${tag ? `-${tag}` : ''}.safetensors`);
  execFileSync(CLI, [
    'sample', '--model', path.join(ROOT, 'web', 'models', model), '--class', String(CLASS), '--seed', String(SEED),
    '--steps', String(steps), '--cfg', String(CFG), '--semantic-size', String(GRID), '--backend', 'cpu',
    '--latent-out', out, ...extra,
  ], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
  return readSafetensors(out, 'sample');
}

function maxAbsDiff(a, b) {
  let worst = 0, at = -1;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= worst)) { worst = d; at = i; }
  }
  return { worst, at };
}

/** A page that records every request, console message, page error and CSP violation. */
async function openPage(query = '') {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1100 } });
  const page = await context.newPage();
  const log = { requests: [], console: [], errors: [] };
  page.on('request', (r) => log.requests.push(r.url()));
  page.on('console', (m) => log.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log.errors.push(String(e)));
  await page.addInitScript(() => {
    // The engine's worker through a stand-in that keeps the WebGPU devices it creates, so a test
    // can destroy one (a "lost" device); see GPU_CAPTURE_WORKER.
    const PageWorker = window.Worker;
    window.Worker = class extends PageWorker {
      constructor(url, opts) {
        super(/\/js\/worker\.js$/.test(String(url)) ? '/test/gpu-capture-worker.js' : url, opts);
      }
    };
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  await page.goto(baseUrl + query);
  return { context, page, log };
}

const statusText = (page) => page.getByTestId('status').textContent();

/**
 * Retries `check` (an async function that asserts) until it passes or `timeout` ms pass: for what
 * the page draws after asking its engine's worker (the token view, the hint follow a setting a
 * moment later).
 */
async function eventually(check, timeout = 10_000) {
  const end = Date.now() + timeout;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > end) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function waitStatus(page, re, timeout) {
  await page.waitForFunction(
    (src) => new RegExp(src).test(document.querySelector('[data-testid="status"]')?.textContent || ''),
    re.source, { timeout, polling: 250 });
  return statusText(page);
}

async function cacheEntries(page) {
  return page.evaluate(async () => {
    const out = [];
    for (const name of await caches.keys()) {
      const cache = await caches.open(name);
      for (const req of await cache.keys()) out.push(`${name} ${req.url}`);
    }
    return out;
  });
}

/** The end of a page's run: no request left 127.0.0.1, no CSP violation, no page error shown. */
async function assertCleanRun(page, log) {
  assertLocalOnly(log);
  const csp = await page.evaluate(() => window.__csp);
  const cspConsole = log.console.filter((m) => /Content Security Policy/i.test(m));
  assert.deepEqual([...csp, ...cspConsole], [], 'CSP violations');
  assert.deepEqual(log.errors, [], 'page errors');
  assert.equal(await page.getByTestId('errors').isVisible(), false, 'error area shown');
}

function assertLocalOnly(log) {
  const foreign = log.requests.filter((u) => !/^(data:|blob:)/.test(u) && new URL(u).hostname !== '127.0.0.1');
  assert.deepEqual(foreign, [], `requests left 127.0.0.1: ${foreign.join(', ')}`);
}

/**
 * Runs `body(page)` in a Chromium without WebGPU (the page's CPU engine: quick, and what the
 * no-WebGPU fallback runs), on the page opened at `query`; asserts that no request left
 * 127.0.0.1.
 */
async function withCpuPage(query, body, { init } = {}) {
  const cpuBrowser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  try {
    const page = await cpuBrowser.newPage();
    const requests = [];
    page.on('request', (r) => requests.push(r.url()));
    if (init) await page.addInitScript(init);
    await page.goto(`${baseUrl}${query}`);
    await body(page);
    assertLocalOnly({ requests });
  } finally {
    await cpuBrowser.close();
  }
}

/** The middle of the element with `testid` (or that id), on screen: where clickAt clicks it. */
async function middleOf(page, testid) {
  const el = page.locator(`[data-testid="${testid}"], #${testid}`).first();
  await el.scrollIntoViewIfNeeded();
  const box = await el.boundingBox();
  assert.ok(box, `${testid} is not on screen`);
  return { x: box.x + box.width / 2, y: box.y + box.height / 2 };
}

/**
 * A mouse click (press and release) at `at` (middleOf), as a user's: none of the actionability
 * checks that Playwright's locator clicks run on the page's thread.
 */
async function clickAt(page, at) {
  await page.mouse.click(at.x, at.y);
}

/** Sets class, seed, steps and CFG, presses Generate and waits for `done`. */
async function generateIn(page, { cls = CLASS, seed = SEED, steps = STEPS, cfg = CFG } = {}) {
  await page.getByTestId(`class-${cls}`).click();
  await page.getByTestId('seed').fill(String(seed));
  await page.getByTestId('steps').fill(String(steps));
  await page.getByTestId('cfg').fill(String(cfg));
  await page.getByTestId('generate').click();
  const done = await waitStatus(page, /^(done|error)/, GENERATE_TIMEOUT);
  assert.match(done, /^done/, done);
  return done;
}

before(async () => {
  assert.ok(fs.existsSync(path.join(DIST, 'index.html')), 'dist/index.html missing: run bash scripts/web-build.sh first');
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  // Broken copies of the bundled pack, served beside the page.
  const good = fs.readFileSync(path.join(DIST, 'models', MODEL));
  const manifest = JSON.parse(fs.readFileSync(path.join(DIST, 'models', 'manifest.json'), 'utf8'));
  const entry = manifest.models.find((m) => m.file === MODEL);
  assert.ok(entry, `manifest has no ${MODEL}`);
  const corrupt = Buffer.from(good);
  for (let i = corrupt.length - 4096; i < corrupt.length - 4000; i++) corrupt[i] ^= 0x5a; // tensor data only
  const badManifest = { models: [{ ...entry, id: 'corrupt', file: 'corrupt.gguf', default: true }] };
  const extra = {
    '/test/gpu-capture-worker.js': { body: GPU_CAPTURE_WORKER, type: 'text/javascript' },
    '/test/gpu-capture.js': { body: GPU_CAPTURE, type: 'text/javascript' },
    '/bad/corrupt.gguf': { body: corrupt },
    '/bad/manifest.json': { body: JSON.stringify(badManifest), type: 'application/json' },
    '/bad/truncated.gguf': { body: good.subarray(0, Math.floor(good.length * 0.6)) },
  };
  // A small random DiT with ImageNet's 1000 classes (tests/fixtures/gen.py case G), converted by
  // the CLI, for the class-name picker.
  const imagenetPack = path.join(ARTIFACTS, 'dit-1000-classes.gguf');
  ensureCli();
  execFileSync(CLI, ['convert', path.join(ROOT, 'tests/fixtures/data/dit_1000_classes/model.safetensors'), '--heads', '2',
    '-o', imagenetPack], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
  extra['/extra/dit-1000-classes.gguf'] = { body: fs.readFileSync(imagenetPack) };
  // A small random latent DiT (4 channels, 8x8; fixture dit_dense) and the TAESD fixture decoder.
  for (const [name, src, args] of [['dit-latent.gguf', 'dit_dense/model.pt', ['--heads', '4']], ['taesd.gguf', 'taesd/taesd_decoder.pth', []],
    ['latte.gguf', 'latte_f3_p2/model.pt', ['--heads', '4', '--quant', 'q8_0']],
    // the video UI: a pixel-space Latte (3 channels, 12 px, 8 frames, 4 classes) and a sparse
    // Latte (4 channels, 12 px, 3 frames, 5 classes; num_heads / semantic_size of its config.json)
    [VIDEO_PACK, 'latte_f8_p2_rgb/model.safetensors', ['--heads', '2']],
    // it records a fine-tuning schedule, which the page's schedule fields start from
    [SPARSE_VIDEO_PACK, 'sparselatte_f3/model.safetensors', ['--heads', '4', '--semantic-size', '4', '--trained-rates', '0.7:0.88']]]) {
    const out = path.join(ARTIFACTS, name);
    execFileSync(CLI, ['convert', path.join(ROOT, 'tests/fixtures/data', src), ...args, '-o', out], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    extra[`/extra/${name}`] = { body: fs.readFileSync(out) };
  }
  // A stand-in for the Hugging Face Hub (the page's ?hub=/hub): the tree API of a diffusers DiT
  // repo (sizes and the LFS sha256 of the fixture written by diffusers), its config.json, and
  // the weights behind a redirect to a CDN-like path, as huggingface.co answers. test/dit-bad-sha
  // lists a wrong sha256; test/dit-quota is for the storage-quota check.
  const hubDir = path.join(ROOT, 'tests/fixtures/data/dit_dense_diffusers/transformer');
  const hubWeights = fs.readFileSync(path.join(hubDir, 'diffusion_pytorch_model.safetensors'));
  const hubConfig = fs.readFileSync(path.join(hubDir, 'config.json'));
  const hubSha = createHash('sha256').update(hubWeights).digest('hex');
  for (const [repo, oid] of [['test/dit', hubSha], ['test/dit-bad-sha', 'ab'.repeat(32)], ['test/dit-quota', hubSha], ['test/dit-flaky', hubSha], ['test/dit-reload', hubSha]]) {
    const tree = [
      { type: 'file', oid: '1'.repeat(40), size: hubConfig.length, path: 'transformer/config.json' },
      { type: 'file', oid: '2'.repeat(40), size: hubWeights.length, path: 'transformer/diffusion_pytorch_model.safetensors', lfs: { oid, size: hubWeights.length, pointerSize: 135 } },
    ];
    extra[`/hub/api/models/${repo}/tree/main/transformer`] = { body: JSON.stringify(tree), type: 'application/json' };
    extra[`/hub/${repo}/resolve/main/transformer/config.json`] = { body: hubConfig, type: 'application/json' };
    extra[`/hub/${repo}/resolve/main/transformer/diffusion_pytorch_model.safetensors`] = { redirect: `/cdn/${repo}/${hubSha}` };
    // test/dit-flaky's first download breaks off after 400,000 bytes
    // (test/dit-reload's stalls after RELOAD_STALL bytes)
    extra[`/cdn/${repo}/${hubSha}`] = {
      body: hubWeights, dropAfter: repo === 'test/dit-flaky' ? 400_000 : null, stallAfter: repo === 'test/dit-reload' ? RELOAD_STALL : null,
    };
  }
  if (process.env.SPARSEDIT_HUB_XL) {
    // DiT-XL/2 256's shapes in diffusers' layout (3.0 GB of f32, pseudo-random weights, written
    // once into target/browser-artifacts) behind the same stand-in Hub, as test/dit-xl.
    const xl = writeSyntheticXl(path.join(ARTIFACTS, 'dit-xl2-256-diffusers.safetensors'));
    const tree = [
      { type: 'file', oid: '1'.repeat(40), size: XL_CONFIG.length, path: 'transformer/config.json' },
      { type: 'file', oid: '2'.repeat(40), size: xl.size, path: 'transformer/diffusion_pytorch_model.safetensors', lfs: { oid: xl.sha256, size: xl.size, pointerSize: 135 } },
    ];
    extra['/hub/api/models/test/dit-xl/tree/main/transformer'] = { body: JSON.stringify(tree), type: 'application/json' };
    extra['/hub/test/dit-xl/resolve/main/transformer/config.json'] = { body: XL_CONFIG, type: 'application/json' };
    extra['/hub/test/dit-xl/resolve/main/transformer/diffusion_pytorch_model.safetensors'] = { redirect: `/cdn/test/dit-xl/${xl.sha256}` };
    extra[`/cdn/test/dit-xl/${xl.sha256}`] = { file: xl.file };
  }
  // Latent decoders in diffusers folders at the repo root: test/taesd (AutoencoderTiny) and
  // test/sdvae (AutoencoderKL), the weights behind a redirect to a CDN path that serves ranges.
  for (const [repo, folder] of [['test/taesd', 'taesd_diffusers'], ['test/sdvae', 'sdvae']]) {
    const dir = path.join(ROOT, 'tests/fixtures/data', folder);
    const w = fs.readFileSync(path.join(dir, 'diffusion_pytorch_model.safetensors'));
    const cfg = fs.readFileSync(path.join(dir, 'config.json'));
    const oid = createHash('sha256').update(w).digest('hex');
    const tree = [
      { type: 'file', oid: '3'.repeat(40), size: cfg.length, path: 'config.json' },
      { type: 'file', oid: '4'.repeat(40), size: w.length, path: 'diffusion_pytorch_model.safetensors', lfs: { oid, size: w.length, pointerSize: 135 } },
    ];
    extra[`/hub/api/models/${repo}/tree/main`] = { body: JSON.stringify(tree), type: 'application/json' };
    extra[`/hub/${repo}/resolve/main/config.json`] = { body: cfg, type: 'application/json' };
    extra[`/hub/${repo}/resolve/main/diffusion_pytorch_model.safetensors`] = { redirect: `/cdn/vae/${repo}` };
    extra[`/cdn/vae/${repo}`] = { body: w };
  }
  const onRequest = (p, req) => {
    if (p.startsWith('/cdn/') || /^\/hub\/.*\/resolve\//.test(p)) hubRequests.push(p);
    if (p.startsWith('/cdn/vae/')) vaeRequests.push({ path: p, range: req.headers.range || null });
    if (p.startsWith('/cdn/test/dit-flaky/')) flakyRequests.push(req.headers.range || null);
    if (p.startsWith('/cdn/test/dit-reload/')) reloadRequests.push(req.headers.range || null);
  };
  ({ server, url: baseUrl } = await startServer({ root: DIST, port: 0, extra, onRequest }));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--enable-unsafe-webgpu', '--headless', '--no-sandbox', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
});

after(async () => {
  await browser?.close();
  server?.close();
});

test('sparse model: loads, runs on WebGPU, matches the CLI, token view, cache, compare', { timeout: 30 * 60_000 }, async (t) => {
  const { context, page, log } = await openPage();
  try {
    const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    assert.match(status, /^ready/, `status after load: ${status}`);
    assert.equal(await page.getByTestId('cfg').inputValue(), '4', 'the image model starts at DiT\'s CFG 4');

    await t.test('WebGPU is present: the engine runs on it', async () => {
      const backend = await page.evaluate(() => window.sparsedit.engine.backend());
      const adapter = await page.evaluate(() => window.sparsedit.engine.adapter());
      console.log(`# backend ${backend}, adapter: ${adapter}`);
      assert.equal(backend, 'webgpu');
      assert.match(await page.getByTestId('backend').textContent(), /WebGPU/);
    });

    await t.test('the verified pack is in the Cache API', async () => {
      const entries = await cacheEntries(page);
      assert.ok(entries.some((e) => e.startsWith('sparsedit-models-v1 ') && e.includes(MODEL)), `cache: ${entries.join(', ')}`);
      assert.ok(!entries.some((e) => e.includes('pending')), `pending left: ${entries.join(', ')}`);
    });

    let image;
    await t.test(`class ${CLASS}, seed ${SEED}, ${STEPS} DDIM steps, CFG ${CFG}, s = ${GRID} matches the native CLI`, async () => {
      for (let k = 0; k < 10; k++) assert.equal(await page.getByTestId(`class-${k}`).count(), 1, `class-${k} button`);
      await page.getByTestId(`class-${CLASS}`).click();
      await page.getByTestId('seed').fill(String(SEED));
      await page.getByTestId('steps').fill(String(STEPS));
      await page.getByTestId('sampler').selectOption('ddim');
      await page.getByTestId('cfg').fill(String(CFG));
      await page.check('input[name="sparsity"][value="fixed"]');
      await page.getByTestId('grid').fill(String(GRID));
      await page.getByTestId('num').fill('1');
      const t0 = Date.now();
      await page.getByTestId('generate').click();
      const done = await waitStatus(page, /^(done|error)/, GENERATE_TIMEOUT);
      const wall = Date.now() - t0;
      await page.screenshot({ path: path.join(ARTIFACTS, 'sparse-generated.png'), fullPage: true });
      assert.match(done, /^done/, `status: ${done}`);
      const res = await page.evaluate(() => {
        const r = window.sparsedit.lastResult;
        return { image: Array.from(r.image), channels: r.channels, size: r.size, ms_total: r.ms_total, ms_steps: Array.from(r.ms_steps), grids: Array.from(r.grids), cancelled: r.cancelled };
      });
      console.log(`# in-browser generation: ${res.ms_total.toFixed(0)} ms engine total, ${wall} ms wall; per step: ${res.ms_steps.map((m) => m.toFixed(0)).join(' ')} ms`);
      assert.equal(res.cancelled, false);
      assert.deepEqual(res.grids, Array(STEPS).fill(GRID));
      image = res.image;

      const cli = cliSample();
      assert.equal(image.length, cli.data.length, `length: page ${image.length}, CLI ${cli.data.length} (shape ${cli.shape})`);
      let worst = 0, at = -1;
      for (let i = 0; i < image.length; i++) {
        const d = Math.abs(image[i] - cli.data[i]);
        if (!(d <= worst)) { worst = d; at = i; }
      }
      console.log(`# max |page - CLI| = ${worst.toExponential(3)} at ${at}`);
      assert.ok(worst <= TOLERANCE, `max abs difference ${worst} at index ${at}: page ${image[at]}, CLI ${cli.data[at]}`);
      // the canvas shows the image
      const drawn = await page.evaluate(() => {
        const c = document.querySelector('[data-testid="preview"]');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i];
        return { w: c.width, h: c.height, sum: s };
      });
      assert.equal(drawn.h, res.size);
      assert.ok(drawn.sum > 0, 'preview canvas is blank');
    });

    await t.test('token view: every block with the tokens it computes at s = 4', async () => {
      const info = await page.evaluate(() => window.sparsedit.info);
      assert.equal(info.arch, 'sparsedit');
      assert.equal(info.depth, TINY_KINDS.length);
      assert.equal(info.dense_grid, 8);
      const layout = await page.evaluate(async (g) => (await window.sparsedit.engine.layout(g)).map((b) => ({ kind: b.kind, tokens: Number(b.tokens) })), GRID);
      assert.deepEqual(layout.map((b) => b.kind), TINY_KINDS);
      assert.deepEqual(layout.map((b) => b.tokens), TINY_TOKENS_S4);
      const shown = [];
      for (let n = 0; n < info.depth; n++) {
        const el = page.getByTestId(`layer-${n}`);
        assert.equal(await el.count(), 1, `layer-${n}`);
        shown.push(Number(await el.getAttribute('data-tokens')));
      }
      assert.deepEqual(shown, TINY_TOKENS_S4);
      assert.equal(await page.getByTestId(`layer-${info.depth}`).count(), 0);
      // a merge block shows its attention map after a click
      await page.getByTestId('layer-1').click();
      assert.ok(await page.locator('#attn canvas').count() >= 2, 'attention heatmaps of the merge block');
      await page.screenshot({ path: path.join(ARTIFACTS, 'token-view.png'), fullPage: true });
    });

    await t.test('the engine\'s run plan: the sparsity hint and the token view before a run follow it', async () => {
      const plan = (o) => page.evaluate((o) => window.sparsedit.engine.run_plan(o), o);
      const base = { label: CLASS, seed: SEED, steps: STEPS, sampler: 'ddim', eta: 0, cfg: CFG, num: 1 };
      // MACs of a fixed grid: every step's forward at s = 4, both CFG halves.
      const fixed = await plan({ ...base, sparsity: 'fixed', grid: GRID });
      const perForward = await page.evaluate(async (g) => (await window.sparsedit.engine.layout(g)).reduce((a, b) => a + b.macs, 0), GRID);
      assert.deepEqual(fixed.grids, Array(STEPS).fill(GRID));
      assert.equal(fixed.timesteps.length, STEPS);
      assert.ok(fixed.timesteps[0] > fixed.timesteps[STEPS - 1], `timesteps in run order: ${fixed.timesteps}`);
      assert.equal(fixed.macs, perForward * STEPS * 2);
      const bad = await page.evaluate((o) => window.sparsedit.engine.run_plan(o).then(() => 'no error', (e) => e.kind), { ...base, sparsity: 'fixed', grid: 99 });
      assert.equal(bad, 'invalid_argument');
      // Timestep-wise: the hint names the first and the last step's grid, as planned.
      const sched = await plan({ ...base, sparsity: 'schedule', r_min: 0.6, r_max: 0.85 });
      // (the hint follows the engine's plan, asked from its worker: it comes a moment later)
      const hintMatches = (re) => page.waitForFunction((src) => new RegExp(src).test(document.getElementById('sparsity-hint').textContent), re.source, { timeout: 10_000 });
      await page.check('input[name="sparsity"][value="schedule"]');
      await hintMatches(new RegExp(`s = ${sched.grids[0]} at the noisy start to s = ${sched.grids[STEPS - 1]} at the last`));
      assert.ok(sched.grids[0] < sched.grids[STEPS - 1], `schedule grids ${sched.grids}`);
      await page.check('input[name="sparsity"][value="fixed"]');
      await hintMatches(/^4×4 = 16 sparse tokens/);
    });

    await t.test('cancel: the run stops, the page shows its last step and the partly denoised latent comes back', async () => {
      await page.getByTestId('steps').fill(String(STEPS));
      await page.getByTestId('generate').click();
      await waitStatus(page, /^(generating: step [1-9]|done|error)/, GENERATE_TIMEOUT);
      await page.getByTestId('cancel').click();
      const s = await waitStatus(page, /^(done|error)/, GENERATE_TIMEOUT);
      assert.match(s, new RegExp(`^done — cancelled after \\d+ of ${STEPS} steps`), s);
      const got = await page.evaluate(() => {
        const r = window.sparsedit.lastResult, info = window.sparsedit.info;
        const c = document.querySelector('[data-testid="preview"]');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let sum = 0; for (let i = 0; i < d.length; i += 4) sum += d[i];
        return {
          cancelled: r.cancelled, length: r.image.length, want: info.in_channels * info.input_size ** 2,
          finite: Array.from(r.image).every(Number.isFinite), steps: r.ms_steps.length,
          label: document.querySelector('[data-testid="step"]').textContent, sum,
        };
      });
      assert.equal(got.cancelled, true);
      assert.ok(got.steps < STEPS, `${got.steps} steps ran`);
      assert.equal(got.length, got.want, 'the partly denoised latent');
      assert.ok(got.finite);
      assert.match(got.label, /cancelled here/);
      assert.ok(got.sum > 0, 'preview canvas is blank');
      assert.equal(await page.getByTestId('generate').isDisabled(), false);
    });

    await t.test('compare: dense DiT and SparseDiT side by side', async () => {
      await page.getByTestId('steps').fill('2'); // SwiftShader is slow: two steps per model
      await page.getByTestId('compare').click();
      const s = await waitStatus(page, /^(done — compare|error)/, GENERATE_TIMEOUT);
      await page.screenshot({ path: path.join(ARTIFACTS, 'compare.png'), fullPage: true });
      assert.match(s, /^done — compare:/, s);
      // the captions' MACs are the engine's run plans (2 steps, CFG on)
      const caps = await page.evaluate(() => [document.getElementById('cmp-dense-cap').textContent, document.getElementById('cmp-sparse-cap').textContent]);
      assert.match(caps[0], /^dense DiT: [\d.]+ [KMG]? ?MACs in blocks/, caps[0]);
      assert.match(caps[1], /^SparseDiT \(s 4\): .* MACs \(\d+ %\)/, caps[1]);
    });

    await t.test('no request left 127.0.0.1, no CSP violation, no page error', () => assertCleanRun(page, log));

    await t.test('a lost GPU device: the error is shown, the engine restarts and reloads from the cache', async () => {
      // the devices live in the engines' workers
      const destroyed = await Promise.all(engineWorkers(page).map((w) => w.evaluate(() => {
        for (const d of self.__gpuDevices || []) d.destroy();
        return (self.__gpuDevices || []).length;
      }).catch(() => 0)));
      assert.ok(destroyed.reduce((a, b) => a + b, 0) >= 1, 'no WebGPU device seen');
      await page.getByTestId('steps').fill('1');
      await page.getByTestId('generate').click();
      await page.waitForFunction(() => /GPU device lost/.test(document.querySelector('[data-testid="errors"]')?.textContent || ''), null, { timeout: GENERATE_TIMEOUT, polling: 250 });
      const s = await waitStatus(page, /^ready.*from cache/, LOAD_TIMEOUT);
      assert.match(s, /^ready/);
      assert.equal(await page.evaluate(() => window.sparsedit.engine.backend()), 'webgpu');
      await page.getByTestId('generate').click();
      const d = await waitStatus(page, /^(done|error)/, GENERATE_TIMEOUT);
      assert.match(d, /^done/, d);
    });

    await t.test('switching to the CPU engine reloads the model from the cache', async () => {
      await page.getByTestId('prefer-gpu').uncheck();
      const s = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
      assert.match(s, /^ready.*from cache/, s);
      assert.equal(await page.evaluate(() => window.sparsedit.engine.backend()), 'cpu');
    });
  } finally {
    await context.close();
  }
});

test('a corrupt or truncated pack shows an error and is never cached', { timeout: 10 * 60_000 }, async () => {
  const { context, page, log } = await openPage('?manifest=/bad/manifest.json');
  try {
    let status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    await page.screenshot({ path: path.join(ARTIFACTS, 'corrupt.png'), fullPage: true });
    assert.match(status, /^error/, `corrupt pack (wrong sha256): ${status}`);
    assert.ok(await page.getByTestId('errors').isVisible(), 'error area visible');

    await page.goto(`${baseUrl}?model=/bad/truncated.gguf`);
    status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    await page.screenshot({ path: path.join(ARTIFACTS, 'truncated.png'), fullPage: true });
    assert.match(status, /^error/, `truncated pack: ${status}`);

    const entries = await cacheEntries(page);
    const bad = entries.filter((e) => /corrupt|truncated/.test(e));
    assert.deepEqual(bad, [], `cache holds a broken pack: ${bad.join(', ')}`);
    assertLocalOnly(log);
  } finally {
    await context.close();
  }
});

test('without WebGPU the engine falls back to the CPU path (and still matches the CLI)', { timeout: 10 * 60_000 }, async () => {
  // Chromium without --enable-unsafe-webgpu (and with --disable-gpu) offers no WebGPU adapter here.
  await withCpuPage('', async (page) => {
    const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    assert.match(status, /^ready/, status);
    assert.equal(await page.evaluate(() => window.sparsedit.engine.backend()), 'cpu');
    assert.match(await page.getByTestId('backend').textContent(), /CPU/);
    await page.getByTestId('grid').fill(String(GRID));
    const done = await generateIn(page);
    const image = await page.evaluate(() => Array.from(window.sparsedit.lastResult.image));
    const cli = cliSample();
    const { worst, at } = maxAbsDiff(image, cli.data);
    console.log(`# CPU path in the browser: ${done}; max |page - CLI| = ${worst.toExponential(3)}`);
    assert.equal(image.length, cli.data.length);
    assert.ok(worst <= TOLERANCE, `max abs difference ${worst} at index ${at}`);
    // Cancelled on the CPU path from on_step (the worker starts the next step only once the page
    // took the last, so the cancel lands first): the result holds the partly denoised latent, as
    // on WebGPU.
    const cancelled = await page.evaluate(async (o) => {
      const engine = window.sparsedit.engine, info = window.sparsedit.info;
      const r = await engine.generate(o, (step) => { if (step.iter === 0) engine.cancel(); });
      return { cancelled: r.cancelled, steps: r.ms_steps.length, length: r.image.length, want: info.in_channels * info.input_size ** 2 };
    }, { label: CLASS, seed: SEED, steps: STEPS, cfg: CFG, sparsity: 'fixed', grid: GRID, num: 1 });
    assert.deepEqual(cancelled, { cancelled: true, steps: 1, length: cancelled.want, want: cancelled.want });
  });
});

test('the engine runs in a worker: the page stays responsive during a CPU-path generation, cancel stops it mid-run, a worker error reaches the page', { timeout: 10 * 60_000 }, async (t) => {
  const init = () => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  };
  await withCpuPage('', async (page) => {
    const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    assert.match(status, /^ready/, status);
    assert.equal(await page.evaluate(() => window.sparsedit.engine.backend()), 'cpu');
    assert.equal(engineWorkers(page).length, 1, `workers: ${page.workers().map((w) => w.url())}`);
    // the bundled digits start on DDIM at 25 steps (DPM-Solver++ is the default of ImageNet DiTs only)
    assert.deepEqual([await page.getByTestId('sampler').inputValue(), await page.getByTestId('steps').inputValue()], ['ddim', '25']);

    const STEPS_LONG = 60;
    await t.test('during a CPU-path generation no main-thread task reaches 50 ms and a click is handled within 100 ms; cancel stops the run', async () => {
      await page.evaluate(() => {
        window.__longtasks = [];
        new PerformanceObserver((list) => {
          for (const e of list.getEntries()) window.__longtasks.push({ start: e.startTime, ms: e.duration });
        }).observe({ type: 'longtask' });
        // how long a click waited for the page's thread: from the input event to its handler
        window.__clicks = [];
        document.getElementById('seed-random').addEventListener('click', (ev) => {
          window.__clicks.push({ ms: performance.now() - ev.timeStamp, at: ev.timeStamp, generating: window.sparsedit.state.generating });
        });
      });
      // the buttons in view first: what is measured is the engine's run, not the test scrolling the
      // page; then clicks as a user's (mouse press and release at the button): Playwright's locator
      // clicks add listeners and forced layouts of their own on the page's thread, counted otherwise
      const at = {};
      for (const id of ['seed-random', 'cancel', 'generate']) at[id] = await middleOf(page, id);
      // A first, short generation: the page's first run pays one-off costs (compiling its drawing
      // code, the canvases' first backing stores) that a visitor sees once; logged, not asserted.
      const tWarm = await page.evaluate(() => performance.now());
      await page.getByTestId('steps').fill('3');
      await clickAt(page, at.generate);
      assert.match(await waitStatus(page, /^(done|error)/, GENERATE_TIMEOUT), /^done/);
      await page.waitForTimeout(200);
      const warm = await page.evaluate((t) => window.__longtasks.filter((e) => e.start >= t).map((e) => Math.round(e.ms)), tWarm);
      console.log(`# the page's first generation (3 steps): main-thread long tasks ${warm.length ? `${warm.join(', ')} ms` : 'none'}`);
      await page.getByTestId('steps').fill(String(STEPS_LONG));
      await page.waitForTimeout(200);
      const tClick = await page.evaluate(() => performance.now());
      await clickAt(page, at.generate);
      // measured from the Generate click on: the click's own task, which starts the run, and
      // every step while the worker computes
      await waitStatus(page, /^(generating: step [1-9]|done|error)/, GENERATE_TIMEOUT);
      const t0 = await page.evaluate(() => performance.now());
      await waitStatus(page, /^(generating: step ([3-9]|\d\d)|done|error)/, GENERATE_TIMEOUT);
      for (let k = 0; k < 5; k++) {
        await clickAt(page, at['seed-random']);
        await page.waitForTimeout(50);
      }
      await clickAt(page, at.cancel);
      const done = await waitStatus(page, /^(done|error)/, GENERATE_TIMEOUT);
      const got = await page.evaluate(({ t0, tClick }) => ({
        startTasks: window.__longtasks.filter((e) => e.start >= tClick && e.start < t0),
        longtasks: window.__longtasks.filter((e) => e.start >= tClick),
        clicks: window.__clicks,
        cancelled: window.sparsedit.lastResult.cancelled,
        steps: window.sparsedit.lastResult.ms_steps.length,
        msPerStep: window.sparsedit.lastResult.ms_total / window.sparsedit.lastResult.ms_steps.length,
      }), { t0, tClick });
      const longest = Math.max(0, ...got.longtasks.map((e) => e.ms));
      console.log(`# CPU path in the worker: ${got.steps} of ${STEPS_LONG} steps (${got.msPerStep.toFixed(0)} ms/step) before the cancel; ` +
        `main-thread long tasks from the Generate click on: ${got.longtasks.length} (longest ${longest.toFixed(0)} ms, at ${got.longtasks.map((e) => (e.start - tClick).toFixed(0)).join(', ')} ms after it); ` +
        `click handled after ${got.clicks.map((c) => `${c.ms.toFixed(1)} ms (at ${(c.at - t0).toFixed(0)})`).join(', ')}; ` +
        `of them before the first step: ${got.startTasks.map((e) => `${e.ms.toFixed(0)} ms`).join(', ') || 'none'}`);
      assert.match(done, new RegExp(`^done — cancelled after \\d+ of ${STEPS_LONG} steps`), done);
      assert.equal(got.cancelled, true);
      assert.ok(got.steps >= 3 && got.steps < STEPS_LONG, `${got.steps} steps ran`);
      assert.ok(longest < 50, `longest main-thread task ${longest} ms: ${JSON.stringify(got.longtasks)}`);
      assert.equal(got.clicks.length, 5);
      assert.ok(got.clicks.every((c) => c.generating), 'every click came during the generation');
      assert.ok(got.clicks.every((c) => c.ms < 100), `click latencies ${got.clicks.map((c) => c.ms)}`);
    });

    await t.test('an error inside the worker reaches the page as a clear message; the engine restarts', async () => {
      const [worker] = engineWorkers(page);
      await worker.evaluate(() => { setTimeout(() => { throw new Error('test: an error inside the engine worker'); }, 0); });
      await page.waitForFunction(() => /engine's worker failed: .*an error inside the engine worker/.test(document.querySelector('[data-testid="errors"]').textContent), null, { timeout: 30_000, polling: 100 });
      const s = await waitStatus(page, /^ready.*from cache/, LOAD_TIMEOUT);
      assert.match(s, /^ready/);
      // an engine error of a call (kind and message) comes back as a rejected promise
      const bad = await page.evaluate(() => window.sparsedit.engine.run_plan({ sparsity: 'fixed', grid: 99 }).then(() => 'no error', (e) => `${e.kind}: ${e.message}`));
      assert.match(bad, /^invalid_argument: .*99/, bad);
      await page.getByTestId('steps').fill('2');
      await page.getByTestId('generate').click();
      assert.match(await waitStatus(page, /^(done|error)/, GENERATE_TIMEOUT), /^done in/);
    });

    await t.test('no CSP violation', async () => {
      assert.deepEqual(await page.evaluate(() => window.__csp), []);
    });
  }, { init });
});

test('DPM-Solver++ (2M) picked in the page samples what the CLI samples', { timeout: 10 * 60_000 }, async () => {
  await withCpuPage('', async (page) => {
    assert.match(await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT), /^ready/);
    await page.getByTestId('grid').fill(String(GRID));
    await page.getByTestId('sampler').selectOption('dpm-solver++');
    const done = await generateIn(page, { steps: 8 });
    const r = await page.evaluate(() => ({ image: Array.from(window.sparsedit.lastResult.image), steps: window.sparsedit.lastResult.ms_steps.length }));
    assert.equal(r.steps, 8);
    const cli = cliSample(MODEL, 8, ['--sampler', 'dpm-solver++']);
    const { worst, at } = maxAbsDiff(r.image, cli.data);
    console.log(`# DPM-Solver++ in the page (CPU path): ${done}; max |page - CLI| = ${worst.toExponential(3)}`);
    assert.ok(worst <= TOLERANCE, `max abs difference ${worst} at index ${at}`);
  });
});

test('a plain DiT, training-free: the middle blocks on pooled tokens, drawn and sampled as the CLI does', { timeout: 10 * 60_000 }, async () => {
  // The CPU engine keeps this quick; the WGSL path of the pooled middle is checked against the
  // CPU one in tests/gpu_model.rs.
  await withCpuPage(`?model=/models/${DENSE_MODEL}`, async (page) => {
    const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    assert.match(status, /^ready/, status);
    assert.equal(await page.evaluate(() => window.sparsedit.info.arch), 'dit');
    const tokens = async () => {
      const out = [];
      for (let n = 0; n < 10; n++) out.push(Number(await page.getByTestId(`layer-${n}`).getAttribute('data-tokens')));
      return out;
    };
    assert.deepEqual(await tokens(), Array(10).fill(64), 'dense mode: every block on 64 tokens');
    await page.locator('input[name="sparsity"][value="fixed"]').check();
    await page.getByTestId('grid').fill(String(GRID));
    await page.getByTestId('grid').dispatchEvent('input');
    await eventually(async () => assert.deepEqual(await tokens(), POOLED_TOKENS_S4, 'training-free at s = 4'));
    await eventually(async () => assert.match(await page.locator('#sparsity-hint').textContent(), /Training-free/));
    const steps = 4;
    await generateIn(page, { steps });
    await page.screenshot({ path: path.join(ARTIFACTS, 'training-free.png'), fullPage: true });
    const image = await page.evaluate(() => Array.from(window.sparsedit.lastResult.image));
    const cli = cliSample(DENSE_MODEL, steps, ['--pooled-middle', 'default']);
    const dense = cliSample(DENSE_MODEL, steps);
    assert.equal(image.length, cli.data.length);
    const { worst, at } = maxAbsDiff(image, cli.data);
    console.log(`# training-free in the browser: max |page - CLI --pooled-middle| = ${worst.toExponential(3)}`);
    assert.ok(worst <= TOLERANCE, `max abs difference ${worst} at index ${at}`);
    assert.ok(maxAbsDiff(image, dense.data).worst > 10 * TOLERANCE, 'the pooled middle changed nothing');
  });
});

test('a 1000-class model: ImageNet names in the picker, searchable by name, synonym or index', { timeout: 10 * 60_000 }, async () => {
  await withCpuPage('?model=/extra/dit-1000-classes.gguf', async (page) => {
    const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    assert.match(status, /^ready.*1000 classes/, status);
    // an ImageNet latent DiT (as DiT-XL/2 from the Hub) starts on DPM-Solver++ (2M), 25 steps
    assert.deepEqual([await page.getByTestId('sampler').inputValue(), await page.getByTestId('steps').inputValue()], ['dpm-solver++', '25']);
    const b207 = page.getByTestId('class-207');
    await b207.waitFor({ timeout: 30_000 });
    assert.equal(await b207.textContent(), '207 · Golden Retriever');
    assert.equal(await page.getByTestId('class-999').count(), 1);
    const search = page.locator('#class-search');
    assert.ok(await search.isVisible(), 'search box shown for 1000 classes');
    const visible = async () => page.evaluate(() => Array.from(document.querySelectorAll('#classes button'))
      .filter((b) => !b.hidden).map((b) => Number(b.dataset.k)));
    await search.fill('golden retriever');
    assert.deepEqual(await visible(), [207]);
    await search.fill('Carassius'); // a synonym: goldfish, Carassius auratus
    assert.deepEqual(await visible(), [1]);
    await search.fill('207');
    assert.deepEqual(await visible(), [207]);
    await b207.click();
    assert.equal(await b207.getAttribute('aria-pressed'), 'true');
    await page.screenshot({ path: path.join(ARTIFACTS, 'imagenet-classes.png'), fullPage: true });
  });
});

test('a latent model with a TAESD decoder: the final sample is decoded in the page as the CLI decodes it', { timeout: 10 * 60_000 }, async () => {
  await withCpuPage('?model=/extra/dit-latent.gguf&decoder=/extra/taesd.gguf', async (page) => {
    const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    assert.match(status, /^ready/, status);
    assert.equal(await page.getByTestId('decoder-info').getAttribute('data-arch'), 'taesd');
    const steps = 3, cls = 3;
    await generateIn(page, { cls, steps });
    const dec = await page.evaluate(() => {
      const d = window.sparsedit.lastResult.decoded;
      return d && { size: Number(d.size), channels: Number(d.channels), decoder: d.decoder, image: Array.from(d.image) };
    });
    assert.ok(dec, 'no decoded image in the result');
    assert.deepEqual([dec.size, dec.channels, dec.decoder], [64, 3, 'taesd']);
    const canvas = await page.evaluate(() => ({ w: document.getElementById('preview').width, h: document.getElementById('preview').height }));
    assert.deepEqual(canvas, { w: 64, h: 64 }, 'the preview shows the decoded 64x64 image');
    await page.screenshot({ path: path.join(ARTIFACTS, 'decoded.png'), fullPage: true });
    // The CLI: the same sample's latents, decoded by `decode` (raw TAESD output in [0, 1]).
    const z = path.join(ARTIFACTS, 'latent-z.safetensors'), img = path.join(ARTIFACTS, 'latent-img.safetensors');
    ensureCli();
    execFileSync(CLI, ['sample', '--model', path.join(ARTIFACTS, 'dit-latent.gguf'), '--class', String(cls), '--seed', String(SEED),
      '--steps', String(steps), '--cfg', String(CFG), '--backend', 'cpu', '--latent-out', z], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    execFileSync(CLI, ['decode', '--decoder', path.join(ARTIFACTS, 'taesd.gguf'), '--latents', z, '--out', img, '--backend', 'cpu'],
      { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    const want = readSafetensors(img, 'image');
    assert.deepEqual(want.shape, [1, 3, 64, 64]);
    const { worst, at } = maxAbsDiff(dec.image, Array.from(want.data, (v) => 2 * v - 1));
    console.log(`# decoded in the page vs CLI decode: max abs diff ${worst.toExponential(3)}`);
    assert.ok(worst <= TOLERANCE, `max abs difference ${worst} at index ${at}`);

    // Live TAESD preview: step clean-image guesses went through engine.decode (at least one; a
    // step that comes while one decodes waits, replacing an older waiting one), each the decode
    // of that step's pred_x0, and scrubbing to a previewed step shows it decoded.
    await page.waitForFunction(() => (window.sparsedit.state.run.previews || 0) >= 1 && !window.sparsedit.state.run.previewBusy, null, { timeout: 60_000 });
    const live = await page.evaluate(async () => {
      const run = window.sparsedit.state.run;
      const i = run.steps.findIndex((s) => s.decoded);
      const st = run.steps[i];
      const again = await window.sparsedit.engine.decode(st.pred, 1);
      const final = await window.sparsedit.engine.decode(window.sparsedit.lastResult.image, 1);
      const scrub = document.getElementById('scrub');
      scrub.value = String(i);
      scrub.dispatchEvent(new Event('input'));
      const maxDiff = (a, b) => a.reduce((m, v, j) => Math.max(m, Math.abs(v - b[j])), 0);
      return {
        i, previews: run.previews, size: st.decoded.size,
        sameAsDecode: maxDiff(st.decoded.image, again.image),
        finalSame: maxDiff(final.image, window.sparsedit.lastResult.decoded.image),
        predVsFinal: maxDiff(st.decoded.image, window.sparsedit.lastResult.decoded.image),
        shows: document.getElementById('preview').dataset.shows,
        label: document.querySelector('[data-testid="step"]').textContent,
      };
    });
    console.log(`# live TAESD preview: ${live.previews} step(s) decoded; ${live.label}`);
    assert.equal(live.size, 64);
    assert.equal(live.sameAsDecode, 0, 'the preview is engine.decode of the step\'s pred_x0');
    assert.equal(live.finalSame, 0, 'engine.decode of the final latent is result.decoded');
    if (live.i < steps - 1) assert.ok(live.predVsFinal > 0, 'an early step preview equals the final image');
    assert.equal(live.shows, 'live-preview');
    assert.match(live.label, /live preview, decoded by taesd/);
    // Wrong sizes are errors, not panics.
    const bad = await page.evaluate(() => window.sparsedit.engine.decode(new Float32Array(7), 1).then(() => 'resolved', (e) => String(e.message)));
    assert.match(bad, /7 latent values for 1 latents of 4x8x8/);
  });
});

test('the wasm engine takes a video pack (Latte): it streams into WebGPU and samples the clip the CLI samples', { timeout: 10 * 60_000 }, async () => {
  const { context, page } = await openPage();
  try {
    await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    const steps = 4, cls = 2;
    const got = await page.evaluate(async ({ steps, cls, seed }) => {
      const engine = window.sparsedit.engine;
      const bytes = new Uint8Array(await (await fetch('/extra/latte.gguf')).arrayBuffer());
      await engine.begin_load(bytes.length, null);
      for (let i = 0; i < bytes.length; i += 4096) await engine.push(bytes.subarray(i, i + 4096));
      const info = await engine.finish_load();
      let n = 0, badPreview = null;
      const r = await engine.generate({ label: cls, seed, steps, cfg: 4, sampler: 'ddim', num: 1, preview: true }, (s) => {
        n += 1;
        if (!s.pred_x0 || s.pred_x0.length !== 3 * 4 * 8 * 8) badPreview = `preview of ${s.pred_x0 && s.pred_x0.length} values`;
      });
      if (badPreview) throw new Error(badPreview);
      return { info: { arch: info.arch, frames: Number(info.frames), backend: info.backend }, n, shape: Array.from(r.shape, Number), latent: Array.from(r.image) };
    }, { steps, cls, seed: SEED }).catch((e) => ({ error: String(e) }));
    assert.ok(!got.error, got.error);
    assert.deepEqual(got.info, { arch: 'latte', frames: 3, backend: 'webgpu' });
    assert.equal(got.n, steps);
    assert.deepEqual(got.shape, [1, 3, 4, 8, 8]);
    ensureCli();
    const z = path.join(ARTIFACTS, 'latte-z.safetensors');
    execFileSync(CLI, ['sample', '--model', path.join(ARTIFACTS, 'latte.gguf'), '--class', String(cls), '--seed', String(SEED),
      '--steps', String(steps), '--cfg', '4', '--sampler', 'ddim', '--latent-out', z], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    const want = readSafetensors(z, 'sample');
    assert.deepEqual(want.shape, [1, 3, 4, 8, 8]);
    const scale = want.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const { worst: d } = maxAbsDiff(got.latent, want.data);
    console.log(`# Latte clip in the page's engine vs the CLI: max |diff| ${d.toExponential(2)} (scale ${scale.toFixed(1)})`);
    assert.ok(d <= 1e-4 * scale, `page vs CLI clip: max |diff| ${d} (scale ${scale})`);
  } finally {
    await context.close();
  }
});

// ---------------------------------------------------------------- video UI

/** RGBA bytes of a canvas (by data-testid) with its size. */
async function canvasPixels(page, testid) {
  return page.evaluate((id) => {
    const c = document.querySelector(`[data-testid="${id}"]`);
    return { w: c.width, h: c.height, data: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data) };
  }, testid);
}

/** The RGB bytes the page draws for image `idx` of flat (N, 3, S, S) data in [-1, 1], row-major. */
function imageBytes(data, idx, size) {
  const hw = size * size, base = idx * 3 * hw, out = [];
  const toByte = (v) => Math.max(0, Math.min(255, Math.round((v + 1) * 127.5)));
  for (let p = 0; p < hw; p++) out.push(toByte(data[base + p]), toByte(data[base + hw + p]), toByte(data[base + 2 * hw + p]));
  return out;
}

/** RGB bytes of the size×size region of canvas pixels `px` at (x0, y0). */
function regionBytes(px, x0, y0, size) {
  const out = [];
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const i = 4 * ((y0 + y) * px.w + x0 + x);
      out.push(px.data[i], px.data[i + 1], px.data[i + 2]);
    }
  }
  return out;
}

/** Moves a range input (by data-testid) to `v` as a user would (an input event). */
async function setRange(page, testid, v) {
  await page.getByTestId(testid).evaluate((el, v) => {
    el.value = String(v);
    el.dispatchEvent(new Event('input', { bubbles: true }));
  }, v);
}

test('video (Latte, 8 frames): the page samples the CLI\'s clip on WebGPU and on the CPU path; the clip player and its strip', { timeout: 20 * 60_000 }, async (t) => {
  const cls = 2, steps = 4, cfg = 4, F = 8, S = 12;
  /** The CLI's clips (`sample --latent-out`, CPU) for the settings, `num` clips. */
  const cliClips = (num) => {
    ensureCli();
    const z = path.join(ARTIFACTS, `latte-f8-rgb-z-num${num}.safetensors`);
    execFileSync(CLI, ['sample', '--model', path.join(ARTIFACTS, VIDEO_PACK), '--class', String(cls), '--seed', String(SEED),
      '--steps', String(steps), '--cfg', String(cfg), '--sampler', 'ddim', '--num', String(num), '--backend', 'cpu', '--latent-out', z],
    { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    const want = readSafetensors(z, 'sample');
    assert.deepEqual(want.shape, [num, F, 3, S, S]);
    return want;
  };
  const want = cliClips(1);

  /**
   * Generates `num` clips in `page` and compares them with the CLI's; returns the page's clips.
   * On WebGPU it also records what the preview shows while the sampler runs (live, every step).
   */
  const sameAsCli = async (page, engineName, num = 1, cli = want) => {
    await page.getByTestId('sampler').selectOption('ddim');
    await page.getByTestId('num').fill(String(num));
    await page.evaluate(() => {
      // the preview while generating: its step label and a checksum of its pixels, every 40 ms
      const seen = window.__livePreview = [];
      const poll = () => {
        const c = document.querySelector('[data-testid="preview"]');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let sum = 0; for (let i = 0; i < d.length; i++) sum += d[i] * ((i % 97) + 1);
        seen.push(`${document.querySelector('[data-testid="step"]').textContent} ${sum}`);
        if (!/^done|^error/.test(document.querySelector('[data-testid="status"]').textContent)) setTimeout(poll, 40);
      };
      setTimeout(poll, 0);
    });
    const done = await generateIn(page, { cls, steps, cfg });
    const res = await page.evaluate(() => {
      const r = window.sparsedit.lastResult;
      return { shape: Array.from(r.shape, Number), image: Array.from(r.image), backend: window.sparsedit.engine.backend(), live: window.__livePreview };
    });
    assert.equal(res.backend, engineName);
    assert.deepEqual(res.shape, [num, F, 3, S, S]);
    assert.equal(res.image.length, cli.data.length);
    const scale = cli.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const { worst, at } = maxAbsDiff(res.image, cli.data);
    console.log(`# Latte: ${num} clip(s) of ${F} frames in the page on ${engineName} vs the CLI: max |diff| ${worst.toExponential(2)} (scale ${scale.toFixed(2)}); ${done}`);
    assert.ok(worst <= 1e-4 * scale, `page vs CLI clip on ${engineName}: max |diff| ${worst} at ${at} (scale ${scale})`);
    if (engineName === 'webgpu') {
      // the sampler yields between steps there: the preview showed each step's guess as it came
      const steps = new Set(res.live.filter((l) => !/^–/.test(l)).map((l) => l.split(' ')[0]));
      const pictures = new Set(res.live.filter((l) => !/^–/.test(l)).map((l) => l.split(' ').at(-1)));
      console.log(`# live while sampling on WebGPU: steps ${[...steps].join(', ')} shown, ${pictures.size} distinct previews`);
      assert.ok(steps.size >= 2 && pictures.size >= 2, `live preview: steps ${[...steps]}, ${pictures.size} pictures`);
    }
    return res.image;
  };

  const { context, page, log } = await openPage(`?model=/extra/${VIDEO_PACK}`);
  try {
    const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    assert.match(status, /^ready.*\(latte, 4 classes\)/, status);
    const info = await page.evaluate(() => window.sparsedit.info);
    assert.equal(Number(info.frames), F);
    assert.equal(await page.locator('#player').isVisible(), true, 'the player is shown for a video model');
    // guidance starts where Latte's sample script (and the CLI) puts it, not at DiT's 4
    assert.equal(await page.getByTestId('cfg').inputValue(), '7', 'a Latte model starts at CFG 7');
    assert.equal(await page.getByTestId('frame-label').textContent(), `frame 1/${F}`);

    let clip;
    await t.test('WebGPU: the clip equals the CLI\'s for the seed', async () => {
      clip = await sameAsCli(page, 'webgpu');
    });

    await t.test('the player: the frame slider and Play step through the frames; the strip holds every frame', async () => {
      assert.ok(clip, 'no clip');
      // the strip: F frames across, one row (one clip), each frame the page's clip frame, as `sample --out` lays it out
      const strip = await canvasPixels(page, 'strip');
      assert.deepEqual([strip.w, strip.h], [F * S, S], 'strip: F frames across, one clip');
      for (let k = 0; k < F; k++) assert.deepEqual(regionBytes(strip, k * S, 0, S), imageBytes(clip, k, S), `strip frame ${k}`);
      // the preview: frame 1 of the clip
      let preview = await canvasPixels(page, 'preview');
      assert.deepEqual([preview.w, preview.h], [S, S]);
      assert.deepEqual(regionBytes(preview, 0, 0, S), imageBytes(clip, 0, S), 'preview shows frame 1');
      // the slider: frame 6
      await setRange(page, 'frame', 5);
      assert.equal(await page.getByTestId('frame-label').textContent(), `frame 6/${F}`);
      preview = await canvasPixels(page, 'preview');
      assert.deepEqual(regionBytes(preview, 0, 0, S), imageBytes(clip, 5, S), 'preview shows frame 6');
      assert.notDeepEqual(imageBytes(clip, 5, S), imageBytes(clip, 0, S), 'frames 1 and 6 look the same');
      // the token view follows the frame
      assert.equal(await page.getByTestId('token-frame').inputValue(), '5');
      assert.equal(await page.getByTestId('layer-0').getAttribute('data-frame'), '5');
      assert.match(await page.getByTestId('layer-0').textContent(), /spatial · frame 6: 36 tokens/);
      assert.match(await page.getByTestId('layer-1').textContent(), /temporal · 36 dense positions × 8 frames/);
      // Play: the label and the preview run through the frames (8 per second), Pause stops them
      await page.getByTestId('play').click();
      assert.equal(await page.getByTestId('play').getAttribute('aria-pressed'), 'true');
      const seen = await page.evaluate(() => new Promise((resolve) => {
        const labels = new Set();
        const sums = new Set();
        const t0 = performance.now();
        const poll = () => {
          labels.add(document.querySelector('[data-testid="frame-label"]').textContent);
          const c = document.querySelector('[data-testid="preview"]');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let s = 0; for (let i = 0; i < d.length; i++) s += d[i] * ((i % 97) + 1);
          sums.add(s);
          if (performance.now() - t0 < 2000) setTimeout(poll, 40); else resolve({ labels: [...labels], sums: sums.size });
        };
        poll();
      }));
      console.log(`# playing for 2 s: ${seen.labels.length} frame labels (${seen.labels.join(', ')}), ${seen.sums} distinct previews`);
      assert.ok(seen.labels.length >= 4, `frames seen while playing: ${seen.labels}`);
      assert.ok(seen.sums >= 4, `distinct previews while playing: ${seen.sums}`);
      await page.getByTestId('play').click();
      assert.equal(await page.getByTestId('play').getAttribute('aria-pressed'), 'false');
      const label = await page.getByTestId('frame-label').textContent();
      await page.waitForTimeout(500);
      assert.equal(await page.getByTestId('frame-label').textContent(), label, 'paused: the frame stays');
      const k = Number(/frame (\d+)\//.exec(label)[1]) - 1;
      preview = await canvasPixels(page, 'preview');
      assert.deepEqual(regionBytes(preview, 0, 0, S), imageBytes(clip, k, S), `paused on frame ${k + 1}: the preview shows it`);
      // the step scrubber: step 1's clean-clip guess, the frame kept; back to the final sample
      const pred0 = await page.evaluate(() => Array.from(window.sparsedit.state.run.steps[0].pred));
      assert.equal(pred0.length, F * 3 * S * S, 'a step\'s pred_x0 is a whole clip');
      await setRange(page, 'scrub', 0);
      preview = await canvasPixels(page, 'preview');
      assert.deepEqual(regionBytes(preview, 0, 0, S), imageBytes(pred0, k, S), 'scrubbed to step 1: its guess of the frame');
      const strip0 = await canvasPixels(page, 'strip');
      for (let j = 0; j < F; j++) assert.deepEqual(regionBytes(strip0, j * S, 0, S), imageBytes(pred0, j, S), `step 1 strip frame ${j}`);
      assert.notDeepEqual(imageBytes(pred0, k, S), imageBytes(clip, k, S), 'step 1 equals the final sample');
      await setRange(page, 'scrub', steps - 1);
      preview = await canvasPixels(page, 'preview');
      assert.deepEqual(regionBytes(preview, 0, 0, S), imageBytes(clip, k, S), 'back to the final sample');
      // the spatial / temporal split of the MACs and the teaching text are shown for a video model
      assert.equal(await page.locator('#macs-axis-box').isVisible(), true);
      assert.equal(await page.locator('#teach-video').isVisible(), true);
      await page.screenshot({ path: path.join(ARTIFACTS, 'video-player.png'), fullPage: true });
    });

    await t.test('no request left 127.0.0.1, no CSP violation, no page error', () => assertCleanRun(page, log));
  } finally {
    await context.close();
  }

  await t.test('the CPU path: the clip equals the CLI\'s; an image model then hides the video UI', async () => {
    await withCpuPage(`?model=/extra/${VIDEO_PACK}`, async (page) => {
      const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
      assert.match(status, /^ready/, status);
      await sameAsCli(page, 'cpu');
      // two clips: the preview shows frame k of each side by side, the strip one row per clip
      const clips = await sameAsCli(page, 'cpu', 2, cliClips(2));
      await setRange(page, 'frame', 3);
      const preview = await canvasPixels(page, 'preview');
      assert.deepEqual([preview.w, preview.h], [2 * S + 1, S]);
      assert.deepEqual(regionBytes(preview, 0, 0, S), imageBytes(clips, 3, S), 'clip 1, frame 4');
      assert.deepEqual(regionBytes(preview, S + 1, 0, S), imageBytes(clips, F + 3, S), 'clip 2, frame 4');
      const strip = await canvasPixels(page, 'strip');
      assert.deepEqual([strip.w, strip.h], [F * S, 2 * S]);
      for (let i = 0; i < 2; i++) {
        for (let k = 0; k < F; k++) assert.deepEqual(regionBytes(strip, k * S, i * S, S), imageBytes(clips, i * F + k, S), `strip: clip ${i + 1}, frame ${k + 1}`);
      }
      assert.match(await page.locator('#num').evaluate((el) => el.closest('label').textContent), /^Clips/);
      // the bundled image model: no player, no strip, no video text, no axis on the cards
      await page.locator('#load-bundled').click();
      const s = await waitStatus(page, /^(ready — .*\(sparsedit|error)/, LOAD_TIMEOUT);
      assert.match(s, /^ready/, s);
      for (const sel of ['#player', '[data-testid="strip"]', '[data-testid="play"]', '#token-frame-row', '#macs-axis-box', '#teach-video']) {
        assert.equal(await page.locator(sel).isVisible(), false, `${sel} shown for an image model`);
      }
      assert.equal(await page.getByTestId('layer-0').getAttribute('data-axis'), null);
      assert.equal(await page.getByTestId('layer-1').getAttribute('data-tokens'), '16');
      assert.match(await page.locator('#num').evaluate((el) => el.closest('label').textContent), /^Images/);
      await page.getByTestId('num').fill('1');
      await page.getByTestId('steps').fill('2');
      await page.getByTestId('generate').click();
      const done = await waitStatus(page, /^(done|error)/, GENERATE_TIMEOUT);
      assert.match(done, /^done/, done);
      const image = await canvasPixels(page, 'preview');
      assert.deepEqual([image.w, image.h], [16, 16], 'an image model\'s preview is one 16x16 image');
    });
  });
});

// The sparse Latte (2 Poolingformer pairs, 2 SDTMs of [merge, semantic, recover, dense] pairs, 1
// top pair; 20 blocks) at s = 4: the axis of every block, its tokens per frame, and the temporal
// blocks that run over the s×s pooled cells (the temporal partners of the merge and semantic
// blocks) instead of the n×n = 36 dense positions.
const SPARSE_LATTE_AXES = Array.from({ length: 20 }, (_, i) => (i % 2 ? 'temporal' : 'spatial'));
const SPARSE_LATTE_TOKENS_S4 = [36, 36, 16, 16, 16, 16, 36, 36, 36, 36, 16, 16, 16, 16, 36, 36, 36, 36, 36, 36];
const SPARSE_LATTE_POOLED_TEMPORAL = [3, 5, 11, 13];

test('video (sparse Latte, 3 frames): every block card shows its axis and tokens for the chosen frame; the SDTMs\' temporal blocks run over pooled cells; the MACs split by axis', { timeout: 10 * 60_000 }, async () => {
  const F = 3, n = 6;
  // with the TAESD fixture decoder: a latent clip's frames are decoded as images (num * F)
  await withCpuPage(`?model=/extra/${SPARSE_VIDEO_PACK}&decoder=/extra/taesd.gguf`, async (page) => {
    const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    assert.match(status, /^ready.*\(sparselatte, 5 classes\)/, status);
    const info = await page.evaluate(() => window.sparsedit.info);
    assert.deepEqual([info.arch, Number(info.frames), Number(info.depth), Number(info.dense_grid), Number(info.default_grid)], ['sparselatte', F, 20, n, 4]);
    // the schedule the pack records its fine-tuning with fills the page's schedule fields
    assert.deepEqual(Array.from(info.trained_rates, Number), [0.7, 0.88]);
    assert.deepEqual(await page.evaluate(() => [document.getElementById('rmin').value, document.getElementById('rmax').value]), ['0.7', '0.88']);
    const layout = await page.evaluate(async () => (await window.sparsedit.engine.layout(4)).map((b) => ({
      axis: b.axis, tokens: Number(b.tokens), grid: b.grid, sequences: Number(b.sequences), len: Number(b.sequence_len), macs: Number(b.macs),
    })));
    assert.deepEqual(layout.map((b) => b.axis), SPARSE_LATTE_AXES);
    assert.deepEqual(layout.map((b) => b.tokens), SPARSE_LATTE_TOKENS_S4);
    assert.deepEqual(layout.flatMap((b, i) => (b.axis === 'temporal' && b.grid === 'sparse' ? [i] : [])), SPARSE_LATTE_POOLED_TEMPORAL);

    /** What every card says at the chosen frame. */
    const cards = () => page.evaluate((depth) => Array.from({ length: depth }, (_, i) => {
      const el = document.querySelector(`[data-testid="layer-${i}"]`);
      return {
        axis: el.dataset.axis, tokens: Number(el.dataset.tokens), frame: Number(el.dataset.frame), over: el.dataset.over,
        sequences: Number(el.dataset.sequences), len: Number(el.dataset.sequenceLen), text: el.querySelector('.bt').textContent,
      };
    }), 20);
    const expectCards = (got, frame, s) => {
      got.forEach((c, i) => {
        const pooled = SPARSE_LATTE_POOLED_TEMPORAL.includes(i);
        const tokens = SPARSE_LATTE_TOKENS_S4[i] === 16 ? s * s : n * n;
        assert.equal(c.axis, SPARSE_LATTE_AXES[i], `block ${i} axis`);
        assert.equal(c.tokens, tokens, `block ${i} tokens`);
        assert.equal(c.frame, frame, `block ${i} frame`);
        if (c.axis === 'spatial') {
          assert.equal(c.over, 'frame-tokens');
          assert.equal(c.text, `spatial · frame ${frame + 1}: ${tokens} tokens`);
          assert.deepEqual([c.sequences, c.len], [F, tokens], `block ${i}: F sequences of its tokens`);
        } else {
          assert.equal(c.over, pooled ? 'pooled-cells' : 'dense-positions', `block ${i}`);
          assert.equal(c.text, `temporal · ${tokens} ${pooled ? 'pooled cells' : 'dense positions'} × ${F} frames`);
          assert.deepEqual([c.sequences, c.len], [tokens, F], `block ${i}: a sequence of F frames per ${pooled ? 'cell' : 'position'}`);
        }
      });
    };
    const macsSplit = () => page.evaluate(() => {
      const p = document.querySelector('[data-testid="macs-axis"]');
      return { spatial: Number(p.dataset.spatial), temporal: Number(p.dataset.temporal), total: Number(p.dataset.total), text: p.textContent };
    });
    const layoutMacs = (g) => page.evaluate(async (g) => (await window.sparsedit.engine.layout(g)).reduce((a, b) => a + Number(b.macs), 0), g);

    // before a run, at the planned grid: frame 1, then s = 3 (9 pooled cells)
    expectCards(await cards(), 0, 4);
    await page.getByTestId('grid').fill('3');
    await page.getByTestId('grid').dispatchEvent('input');
    await eventually(async () => expectCards(await cards(), 0, 3));
    let split = await macsSplit();
    assert.equal(split.total, await layoutMacs(3));
    await page.getByTestId('grid').fill('4');
    await page.getByTestId('grid').dispatchEvent('input');

    // a short run (the cards draw its frames), then frame 3 chosen in the token view
    await generateIn(page, { cls: 1, steps: 2 });
    const dec = await page.evaluate(() => {
      const d = window.sparsedit.lastResult.decoded;
      return d && { size: Number(d.size), channels: Number(d.channels), length: d.image.length, frame1: Array.from(d.image.subarray(0, 3 * 96 * 96)) };
    });
    assert.ok(dec, 'no decoded clip');
    assert.deepEqual([dec.size, dec.channels, dec.length], [96, 3, F * 3 * 96 * 96]);
    const decodedStrip = await canvasPixels(page, 'strip');
    assert.deepEqual([decodedStrip.w, decodedStrip.h], [F * 96, 96], 'the strip shows the decoded frames');
    assert.deepEqual(regionBytes(decodedStrip, 0, 0, 96), imageBytes(dec.frame1, 0, 96), 'decoded frame 1');
    // the live TAESD preview decodes a step's whole clip (num * F latents)
    await page.waitForFunction(() => (window.sparsedit.state.run.previews || 0) >= 1 && !window.sparsedit.state.run.previewBusy, null, { timeout: 60_000 });
    const live = await page.evaluate(() => window.sparsedit.state.run.steps.find((st) => st.decoded)?.decoded.image.length);
    assert.equal(live, F * 3 * 96 * 96);
    await setRange(page, 'token-frame', 2);
    assert.equal(await page.getByTestId('frame-label').textContent(), `frame 3/${F}`);
    assert.equal(await page.getByTestId('frame').inputValue(), '2');
    expectCards(await cards(), 2, 4);

    // the MACs of a forward, split by axis, add up to the total
    split = await macsSplit();
    const total = await layoutMacs(4);
    console.log(`# sparse Latte at s = 4: ${split.text}`);
    assert.ok(split.spatial > 0 && split.temporal > 0, JSON.stringify(split));
    assert.equal(split.spatial + split.temporal, split.total);
    assert.equal(split.total, total);
    assert.equal(split.spatial, layout.filter((b) => b.axis === 'spatial').reduce((a, b) => a + b.macs, 0));
    assert.match(split.text, /^s = 4: spatial blocks .* \+ temporal blocks .* = .* MACs per forward · s = n = 6 \(no pruning\): /);

    // a temporal block on pooled cells: its detail and its sequences across the frames
    await page.getByTestId('layer-3').click();
    const detail = page.locator('#block-detail');
    assert.equal(await detail.getAttribute('data-axis'), 'temporal');
    assert.deepEqual([await detail.getAttribute('data-sequences'), await detail.getAttribute('data-sequence-len'), await detail.getAttribute('data-tokens')], ['16', '3', '16']);
    const text = await detail.textContent();
    assert.match(text, /temporal: across the 3 frames at one pooled cell/);
    assert.match(text, /16 pooled cells \(4×4\) × 3 frames/);
    assert.match(text, /tokens per frame16 \(4×4 sparse\)/);
    assert.match(text, /MACs[\d.]+ [KMG]? ?\(all 3 frames\)/);
    assert.equal(await page.locator('#attn .seq-frames canvas').count(), F, 'the picked cell in each frame');
    await page.screenshot({ path: path.join(ARTIFACTS, 'video-tokens-temporal.png'), fullPage: true });
    // a temporal block on dense positions, and a spatial merge block (its attention map: frame 1)
    await page.getByTestId('layer-1').click();
    assert.match(await detail.textContent(), /36 dense positions \(6×6\) × 3 frames/);
    await page.getByTestId('layer-2').click();
    assert.equal(await detail.getAttribute('data-axis'), 'spatial');
    assert.match(await detail.textContent(), /3 frames × 16 tokens/);
    const attnCaps = await page.locator('#attn figcaption').allTextContents();
    if (attnCaps.length >= 2) assert.match(attnCaps[1], /frame 1 of clip 1/);
    assert.equal(await page.locator('#teach-video').isVisible(), true);
    assert.match(await page.locator('#teach-video').textContent(), /s² sequences instead of n²/);
    assert.equal(await page.locator('#compare-run').isDisabled(), true, 'no compare counterpart for a video model');
    await page.screenshot({ path: path.join(ARTIFACTS, 'video-tokens.png'), fullPage: true });
  });
});

test('a synthetic full-size DiT-XL/2 pack (random weights, q8_0, ~720 MB) streams into WebGPU buffers with the wasm heap under 256 MB, generates at 256 px and decodes with a full-size TAESD', { timeout: 40 * 60_000 }, async () => {
  // Written by the CLI into dist/ (served from disk); weights never pass through one buffer.
  const dir = path.join(DIST, 'big');
  const pack = path.join(dir, 'dit-xl2-256-random-q8_0.gguf');
  const taesd = path.join(dir, 'taesd-random-f32.gguf'); // the published width: 1.22 M parameters
  fs.mkdirSync(dir, { recursive: true });
  ensureCli();
  if (!fs.existsSync(pack)) {
    execFileSync(CLI, ['random-pack', '--preset', 'dit-xl2-256', '--quant', 'q8_0', '-o', pack], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
  }
  if (!fs.existsSync(taesd)) {
    execFileSync(CLI, ['random-pack', '--preset', 'taesd', '--quant', 'f32', '-o', taesd], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
  }
  const size = fs.statSync(pack).size;
  assert.ok(size > 650e6, `pack of ${size} bytes`);
  const { context, page, log } = await openPage(`?model=/big/${path.basename(pack)}&decoder=/big/${path.basename(taesd)}`);
  try {
    const t0 = Date.now();
    const status = await waitStatus(page, /^(ready|error)/, 15 * 60_000);
    assert.match(status, /^ready/, status);
    const loadS = (Date.now() - t0) / 1e3;
    const got = await page.evaluate(async () => ({
      backend: window.sparsedit.engine.backend(),
      heap: await window.sparsedit.engine.heap_bytes(),
      info: window.sparsedit.info,
      blocks: (await window.sparsedit.engine.layout(8)).length,
    }));
    console.log(`# XL/2 pack of ${(size / 1e6).toFixed(0)} MB streamed on ${got.backend} in ${loadS.toFixed(0)} s: wasm heap ${(got.heap / 2 ** 20).toFixed(1)} MiB; ${status}`);
    assert.equal(got.backend, 'webgpu');
    assert.ok(got.heap < 256 * 2 ** 20, `wasm heap ${got.heap} bytes`);
    assert.equal(Number(got.info.depth), 28);
    assert.equal(Number(got.info.num_classes), 1000);
    assert.equal(Number(got.info.bytes), size);
    assert.equal(got.blocks, 28);
    assert.equal(await page.getByTestId('class-207').textContent(), '207 · Golden Retriever');
    assert.equal(await page.getByTestId('decoder-info').getAttribute('data-arch'), 'taesd');

    // One DDIM step without guidance (one forward of batch 1), training-free at s = 8: the
    // middle blocks 5..23 on 64 pooled tokens, the rest on 256. SwiftShader runs an XL/2
    // forward in minutes; more steps would add nothing the small models do not check.
    await page.locator('input[name="sparsity"][value="fixed"]').check();
    await page.getByTestId('grid').fill('8');
    await page.getByTestId('grid').dispatchEvent('input');
    const cls = 207, steps = 1, cfg = 1;
    // (an ImageNet DiT starts on DPM-Solver++, which takes 2 steps at least: one DDIM step here)
    await page.getByTestId('sampler').selectOption('ddim');
    const t1 = Date.now();
    await generateIn(page, { cls, steps, cfg });
    const genS = (Date.now() - t1) / 1e3;
    const res = await page.evaluate(async () => {
      const r = window.sparsedit.lastResult, d = r.decoded;
      return {
        latent: Array.from(r.image),
        decoded: d && { size: Number(d.size), channels: Number(d.channels), decoder: d.decoder, ms: Number(d.ms), image: Array.from(d.image) },
        heap: await window.sparsedit.engine.heap_bytes(),
      };
    });
    assert.ok(res.decoded, 'no decoded image in the result');
    assert.deepEqual([res.decoded.size, res.decoded.channels, res.decoded.decoder], [256, 3, 'taesd']);
    assert.ok(res.heap < 256 * 2 ** 20, `wasm heap ${res.heap} bytes after generating and decoding`);
    // The decoder runs on the CPU path here (software adapter), in the engine's worker: the
    // 32x32 latent's step is previewed too, without blocking the page.
    assert.ok(await page.evaluate(() => window.sparsedit.state.run.previews || 0) >= 1, 'a live preview of the 32x32 latent');
    await page.screenshot({ path: path.join(ARTIFACTS, 'xl2-generated.png'), fullPage: true });

    // The CLI on the CPU: the same seed and settings, then `decode` of its latent.
    const z = path.join(ARTIFACTS, 'xl2-z.safetensors'), img = path.join(ARTIFACTS, 'xl2-img.safetensors');
    execFileSync(CLI, ['sample', '--model', pack, '--class', String(cls), '--seed', String(SEED), '--steps', String(steps),
      '--cfg', String(cfg), '--semantic-size', '8', '--pooled-middle', 'default', '--backend', 'cpu', '--latent-out', z],
    { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    execFileSync(CLI, ['decode', '--decoder', taesd, '--latents', z, '--out', img, '--backend', 'cpu'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    const wantZ = readSafetensors(z, 'sample'), wantImg = readSafetensors(img, 'image');
    assert.deepEqual(wantZ.shape, [1, 4, 32, 32]);
    assert.deepEqual(wantImg.shape, [1, 3, 256, 256]);
    const scale = wantZ.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const dz = maxAbsDiff(res.latent, wantZ.data);
    const di = maxAbsDiff(res.decoded.image, Array.from(wantImg.data, (v) => 2 * v - 1));
    console.log(`# XL/2 in the browser (WebGPU, SwiftShader): 1 step in ${genS.toFixed(0)} s incl. pipeline compilation, TAESD 256 px decode ${res.decoded.ms.toFixed(0)} ms; `
      + `wasm heap ${(res.heap / 2 ** 20).toFixed(1)} MiB; max |page - CLI|: latent ${dz.worst.toExponential(3)} (max |z| ${scale.toFixed(2)}), image ${di.worst.toExponential(3)}`);
    assert.ok(dz.worst <= TOLERANCE * Math.max(1, scale), `latent: max abs difference ${dz.worst} at index ${dz.at}`);
    assert.ok(di.worst <= TOLERANCE, `decoded image: max abs difference ${di.worst} at index ${di.at}`);
    assertLocalOnly(log);
  } finally {
    await context.close();
  }
});

/** The page's OPFS folder of Hub packs: [name, size] of every file. */
async function opfsFiles(page) {
  return page.evaluate(async () => {
    const root = await navigator.storage.getDirectory();
    let dir;
    try { dir = await root.getDirectoryHandle('sparsedit-hub'); } catch { return []; }
    const out = [];
    for await (const [name, h] of dir.entries()) if (h.kind === 'file') out.push([name, (await h.getFile()).size]);
    return out.sort();
  });
}

test('latent decoders from the Hub: TAESD whole (sha256 checked), an SD-VAE by its decoder tensors only (HTTP ranges); both decode as the CLI', { timeout: 10 * 60_000 }, async () => {
  await withCpuPage('?model=/extra/dit-latent.gguf&hub=/hub', async (page) => {
    assert.match(await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT), /^ready/);
    for (const [repo, folder, arch] of [['test/taesd', 'taesd_diffusers', 'taesd'], ['test/sdvae', 'sdvae', 'sdvae']]) {
      await page.evaluate((r) => { const sel = document.getElementById('hub-decoder'); sel.add(new Option(r, r)); sel.value = r; }, repo);
      vaeRequests.length = 0;
      await page.getByTestId('hub-decoder-load').click();
      await page.waitForFunction((a) => document.querySelector('[data-testid="decoder-info"]').dataset.arch === a, arch, { timeout: 60_000, polling: 200 });
      const size = fs.statSync(path.join(ROOT, 'tests/fixtures/data', folder, 'diffusion_pytorch_model.safetensors')).size;
      const ranged = vaeRequests.map((r) => r.range);
      const bytes = ranged.reduce((sum, r) => { const m = /bytes=(\d+)-(\d+)/.exec(r || ''); return sum + (m ? Number(m[2]) - Number(m[1]) + 1 : size); }, 0);
      console.log(`# ${repo}: ${vaeRequests.length} weight request(s), ${bytes} of ${size} bytes fetched`);
      if (arch === 'sdvae') {
        assert.ok(ranged.every((r) => r), `every SD-VAE weight request is ranged: ${JSON.stringify(ranged)}`);
        assert.ok(bytes < size, `only the decoder's tensors: ${bytes} of ${size} bytes`);
      } else {
        assert.deepEqual(ranged, [null], 'TAESD comes whole (its sha256 is checked)');
      }
      await generateIn(page, { cls: 3, steps: 3 });
      const dec = await page.evaluate(() => Array.from(window.sparsedit.lastResult.decoded.image));
      // The CLI: convert the same folder (f16, as the page) and decode the same sample.
      ensureCli();
      const pack = path.join(ARTIFACTS, `hub-${arch}.gguf`), z = path.join(ARTIFACTS, `hub-${arch}-z.safetensors`), img = path.join(ARTIFACTS, `hub-${arch}-img.safetensors`);
      execFileSync(CLI, ['convert', path.join(ROOT, 'tests/fixtures/data', folder), '-o', pack, '--quant', 'f16'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
      execFileSync(CLI, ['sample', '--model', path.join(ARTIFACTS, 'dit-latent.gguf'), '--class', '3', '--seed', String(SEED),
        '--steps', '3', '--cfg', String(CFG), '--backend', 'cpu', '--latent-out', z], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
      execFileSync(CLI, ['decode', '--decoder', pack, '--latents', z, '--out', img, '--backend', 'cpu'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
      const want = readSafetensors(img, 'image');
      // raw decoder output: TAESD in [0, 1], the SD-VAE in [-1, 1]; the page's is in [-1, 1]
      const scaled = Array.from(want.data, (v) => (arch === 'taesd' ? 2 * v - 1 : v));
      const { worst, at } = maxAbsDiff(dec, scaled);
      console.log(`# ${repo} from the Hub, decoded in the page vs CLI decode of convert(folder): max abs diff ${worst.toExponential(3)}`);
      assert.ok(worst <= TOLERANCE, `max abs difference ${worst} at index ${at}`);
    }
  });
});

test('fitting the device: a weight larger than the adapter\'s buffers stops a Hub download before it starts; a small device is warned', { timeout: 10 * 60_000 }, async () => {
  const { context, page } = await openPage();
  try {
    assert.match(await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT), /^ready/);
    const r = await page.evaluate(async () => {
      const hub = await import('/js/hub.js');
      // DiT-XL/2 256 as diffusers' config.json states it
      const cfg = JSON.stringify({ _class_name: 'DiTTransformer2DModel', sample_size: 32, patch_size: 2, num_attention_heads: 16,
        attention_head_dim: 72, in_channels: 4, out_channels: 8, num_layers: 28, num_embeds_ada_norm: 1000 });
      const f32 = await window.sparsedit.engine.plan_diffusers_pack(cfg, 'f32', 'xl');
      const q8 = await window.sparsedit.engine.plan_diffusers_pack(cfg, 'q8_0', 'xl');
      const tight = { max_buffer_size: 9 * 2 ** 20, max_storage_buffer_binding_size: 9 * 2 ** 20 };
      const real = window.sparsedit.engine.gpu_limits();
      return {
        largest: [f32.largest_tensor_bytes, q8.largest_tensor_bytes],
        f32: hub.deviceFit(f32, 'f32', tight, 8), q8: hub.deviceFit(q8, 'q8_0', tight, 8),
        small: hub.deviceFit(q8, 'q8_0', null, 1), roomy: hub.deviceFit(q8, 'q8_0', real, 8), real,
      };
    });
    console.log(`# XL/2 largest weight: f32 ${r.largest[0]} B, q8_0 ${r.largest[1]} B; adapter limits ${JSON.stringify(r.real)}`);
    // adaLN_modulation.1 (6C x C = 6912 x 1152) is the largest weight: 31.9 MB as f32, 8.5 MB as
    // q8_0 (34-byte blocks of 32): over a 9 MiB buffer limit as f32, under it as q8_0
    assert.deepEqual(r.largest, [6912 * 1152 * 4, 6912 * 1152 / 32 * 34]);
    assert.match(r.f32.problem, /largest weight takes .* as f32.*Choose q8_0 or q4_0.*Nothing was downloaded/);
    assert.deepEqual(r.q8, {});
    assert.match(r.small.warning, /reports 1 GB of memory .* may not fit/);
    assert.ok(r.real && r.real.max_buffer_size > 0, 'the WebGPU engine reports its limits');
    assert.ok(!r.roomy.problem, r.roomy.problem);
  } finally {
    await context.close();
  }
});

test('a Hub download that breaks off is picked up where it stopped (Range) and converts to the same model', { timeout: 10 * 60_000 }, async () => {
  ensureCli();
  const cliPack = path.join(ARTIFACTS, 'dit-diffusers-q8_0.gguf');
  execFileSync(CLI, ['convert', path.join(ROOT, 'tests/fixtures/data/dit_dense_diffusers'), '-o', cliPack, '--quant', 'q8_0'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
  flakyRequests.length = 0;
  await withCpuPage('?hub=/hub&hf=test/dit-flaky&pack=q8_0', async (page) => {
    const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    assert.match(status, /^ready — test\/dit-flaky .*downloaded from the Hub and converted/, status);
    console.log(`# test/dit-flaky weight requests (Range): ${JSON.stringify(flakyRequests)}`);
    assert.equal(flakyRequests[0], null, 'the first request is a whole-file GET');
    const resumed = flakyRequests.slice(1).map((r) => Number(/^bytes=(\d+)-$/.exec(r || '')?.[1]));
    assert.ok(resumed.length >= 1 && resumed.every((b) => b > 0 && b <= 400_000), `resumed from where it stopped: ${JSON.stringify(flakyRequests)}`);
    await generateIn(page, { cls: 3, steps: 4 });
    const image = await page.evaluate(() => Array.from(window.sparsedit.lastResult.image));
    const out = path.join(ARTIFACTS, 'cli-dit-flaky-q8_0.safetensors');
    execFileSync(CLI, ['sample', '--model', cliPack, '--class', '3', '--seed', String(SEED), '--steps', '4',
      '--cfg', String(CFG), '--backend', 'cpu', '--latent-out', out], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    const cli = readSafetensors(out, 'sample');
    const scale = cli.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const { worst, at } = maxAbsDiff(image, cli.data);
    console.log(`# resumed download's model vs the CLI's: max |diff| ${worst.toExponential(3)} (scale ${scale.toFixed(1)})`);
    assert.ok(worst <= 1e-4 * scale + 1e-3, `max abs difference ${worst} at index ${at}`);
  });
});

test('a Hub download cut off by a page reload resumes from the bytes kept in OPFS (a ranged GET for the rest): the same pack as an uninterrupted download', { timeout: 10 * 60_000 }, async () => {
  reloadRequests.length = 0;
  await withCpuPage('?hub=/hub&hf=test/dit-reload&pack=q8_0', async (page) => {
    // The first download stalls after RELOAD_STALL bytes: the worker has kept them in OPFS.
    await eventually(async () => {
      const files = await opfsFiles(page);
      assert.deepEqual(files.filter(([n]) => n.endsWith('.safetensors.partial')).map(([, size]) => size), [RELOAD_STALL], JSON.stringify(files));
    }, 120_000);
    await page.reload();
    const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    console.log(`# test/dit-reload weight requests (Range): ${JSON.stringify(reloadRequests)}; ${status}`);
    assert.match(status, /^ready — test\/dit-reload .*downloaded from the Hub and converted \(resumed: .* kept from an earlier visit\)/, status);
    assert.deepEqual(reloadRequests, [null, `bytes=${RELOAD_STALL}-`], 'after the reload only the rest was asked for');
    const resumed = await page.evaluate(() => window.sparsedit.info);
    let files = await opfsFiles(page);
    assert.deepEqual(files.filter(([n]) => n.endsWith('.partial')), [], 'the kept download is deleted once converted');
    assert.deepEqual(files.filter(([n]) => n.endsWith('.gguf')).map(([, size]) => size), [Number(resumed.bytes)]);

    // The same model downloaded in one go (the kept pack deleted first): the very same pack.
    await page.getByTestId('hub-delete').click();
    await eventually(async () => assert.deepEqual(await opfsFiles(page), []));
    await page.reload();
    const again = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
    assert.match(again, /^ready — test\/dit-reload .*downloaded from the Hub and converted$/, again);
    assert.deepEqual(reloadRequests, [null, `bytes=${RELOAD_STALL}-`, null]);
    const whole = await page.evaluate(() => window.sparsedit.info);
    assert.equal(resumed.sha256, whole.sha256, 'the resumed pack equals the uninterrupted one byte for byte');
  });
});

test('a DiT from the Hugging Face Hub (diffusers layout): converted while it downloads, kept in OPFS, reloaded from there; wrong sha256 and short quota keep nothing', { timeout: 15 * 60_000 }, async (t) => {
  const weights = (repo) => hubRequests.filter((p) => (p.includes(`/${repo}/`) && p.endsWith('.safetensors')) || p.startsWith(`/cdn/${repo}/`));
  // The CLI's pack of the same files: `convert <snapshot folder> --quant q8_0`.
  ensureCli();
  const cliPack = path.join(ARTIFACTS, 'dit-diffusers-q8_0.gguf');
  execFileSync(CLI, ['convert', path.join(ROOT, 'tests/fixtures/data/dit_dense_diffusers'), '-o', cliPack, '--quant', 'q8_0'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
  const cls = 3, steps = 10;

  await withCpuPage('?hub=/hub&hf=test/dit&pack=q8_0', async (page) => {
    await t.test('?hf= converts the Hub\'s safetensors as it arrives and loads it', async () => {
      const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
      assert.match(status, /^ready — test\/dit .*downloaded from the Hub and converted/, status);
      assert.equal(weights('test/dit').length, 2, `weights fetched once (resolve + CDN): ${hubRequests.join(', ')}`);
      const info = await page.evaluate(() => window.sparsedit.info);
      assert.deepEqual([info.arch, Number(info.num_classes), Number(info.depth), Number(info.input_size)], ['dit', 7, 3, 8]);
      const plan = await page.getByTestId('hub-plan').textContent();
      console.log(`# Hub plan: ${plan}`);
      assert.match(plan, /download 1\.15 MB .*sha256 .* keep a q8_0 pack of 287\.\d KB in this browser \(OPFS\)/, plan);
      assert.match(plan, /wasm memory|GPU memory/);
    });

    await t.test('the pack kept in OPFS: one entry, its size in the list, no temporary file', async () => {
      const files = await opfsFiles(page);
      assert.equal(files.length, 2, JSON.stringify(files));
      const pack = files.find(([n]) => n.endsWith('.gguf'));
      assert.ok(pack && files.some(([n]) => n.endsWith('.json')), JSON.stringify(files));
      const info = await page.evaluate(() => window.sparsedit.info);
      assert.equal(pack[1], Number(info.bytes), 'the kept file is the loaded pack');
      const entry = page.getByTestId('hub-entry');
      assert.equal(await entry.count(), 1);
      assert.equal(Number(await entry.getAttribute('data-size')), pack[1]);
      assert.match(await entry.textContent(), /test\/dit@main · q8_0 · 287\.\d KB/);
    });

    await t.test('its sample equals `sparsedit sample` of the CLI-converted pack', async () => {
      await generateIn(page, { cls, steps });
      const image = await page.evaluate(() => Array.from(window.sparsedit.lastResult.image));
      const out = path.join(ARTIFACTS, 'cli-dit-diffusers-q8_0.safetensors');
      execFileSync(CLI, ['sample', '--model', cliPack, '--class', String(cls), '--seed', String(SEED), '--steps', String(steps),
        '--cfg', String(CFG), '--backend', 'cpu', '--latent-out', out], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
      const cli = readSafetensors(out, 'sample');
      assert.equal(image.length, cli.data.length);
      const { worst, at } = maxAbsDiff(image, cli.data);
      const scale = cli.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      // The pack the page kept, sampled by the CLI: the same tensors as `convert`'s pack, so the
      // same sample to the bit (the page's difference is wasm vs native arithmetic).
      const kept = await page.evaluate(async () => {
        const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('sparsedit-hub');
        for await (const [name, h] of dir.entries()) {
          if (name.endsWith('.gguf')) return Array.from(new Uint8Array(await (await h.getFile()).arrayBuffer()));
        }
        return null;
      });
      const keptPack = path.join(ARTIFACTS, 'hub-kept-q8_0.gguf');
      fs.writeFileSync(keptPack, Buffer.from(kept));
      const outKept = path.join(ARTIFACTS, 'cli-hub-kept-q8_0.safetensors');
      execFileSync(CLI, ['sample', '--model', keptPack, '--class', String(cls), '--seed', String(SEED), '--steps', String(steps),
        '--cfg', String(CFG), '--backend', 'cpu', '--latent-out', outKept], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
      const fromKept = maxAbsDiff(readSafetensors(outKept, 'sample').data, cli.data).worst;
      console.log(`# Hub-converted pack in the page vs CLI convert + sample: max |diff| = ${worst.toExponential(3)} (max |z| ${scale.toFixed(2)}); CLI sample of the kept OPFS pack vs of convert's: ${fromKept}`);
      assert.equal(fromKept, 0, 'the kept pack samples as convert\'s does');
      assert.ok(worst <= TOLERANCE * Math.max(1, scale), `max abs difference ${worst} at index ${at}`);
    });

    await t.test('a reload loads the pack from OPFS without asking for the weights', async () => {
      const before = weights('test/dit').length;
      await page.reload();
      const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
      assert.match(status, /^ready — test\/dit .*from this browser's storage \(OPFS\)/, status);
      assert.equal(weights('test/dit').length, before, `weights fetched again: ${hubRequests.join(', ')}`);
      assert.match(page.url(), /hf=test%2Fdit|hf=test\/dit/);
    });

    await t.test('offline (the Hub unreachable), a reload still loads the kept pack', async () => {
      await page.route('**/hub/**', (route) => route.abort('internetdisconnected'));
      try {
        await page.reload();
        const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
        assert.match(status, /^ready — test\/dit .*from this browser's storage \(OPFS\)/, status);
        assert.match(await page.getByTestId('hub-plan').textContent(), /the Hub is unreachable/);
      } finally {
        await page.unroute('**/hub/**');
      }
    });

    await t.test('a wrong sha256 in the tree listing: an error, nothing kept, the loaded model stays', async () => {
      await page.getByTestId('hub-repo').fill('test/dit-bad-sha');
      await page.getByTestId('hub-load').click();
      const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
      assert.match(status, /^error: .*sha256 mismatch/, status);
      assert.equal(weights('test/dit-bad-sha').length, 2, 'it was downloaded');
      const files = await opfsFiles(page);
      assert.deepEqual(files.filter(([n]) => n.includes('bad-sha')), [], JSON.stringify(files));
      assert.equal(files.length, 2, 'the good entry stays');
      assert.equal(await page.getByTestId('hub-entry').count(), 1);
      assert.equal(await page.evaluate(async () => (await window.sparsedit.engine.model_info())?.name), 'test/dit');
    });

    await t.test('Delete removes the entry and its files', async () => {
      await page.getByTestId('hub-delete').click();
      await page.waitForFunction(() => document.querySelectorAll('[data-testid="hub-entry"]').length === 0, null, { timeout: 10_000 });
      assert.deepEqual(await opfsFiles(page), []);
      assert.match(await page.getByTestId('hub-cache-note').textContent(), /none yet/);
    });
  });

  await t.test('a storage quota too small for the pack: a clear message, nothing downloaded', async () => {
    const init = () => {
      navigator.storage.estimate = async () => ({ quota: 200_000, usage: 150_000 });
    };
    await withCpuPage('?hub=/hub&hf=test/dit-quota&pack=q8_0', async (page) => {
      const status = await waitStatus(page, /^(ready|error)/, LOAD_TIMEOUT);
      assert.match(status, /^error: .*not enough storage for this pack: it needs 287\.\d KB, this browser grants the page 48\.8 KB more/, status);
      assert.match(await page.getByTestId('hub-plan').textContent(), /not enough storage.*nothing was downloaded/);
      assert.deepEqual(weights('test/dit-quota'), [], 'the weights were requested');
      assert.deepEqual(await opfsFiles(page), []);
    }, { init });
  });
});

// ---------------------------------------------------------------- DiT-XL/2 from the Hub (opt-in)

/**
 * A diffusers-layout safetensors file with DiT-XL/2 256's tensors (f32, in the order Python's
 * safetensors writes them, the per-block embedder copies identical), written once; returns
 * { file, size, sha256 }.
 */
function writeSyntheticXl(file) {
  const meta = `${file}.json`;
  if (fs.existsSync(file) && fs.existsSync(meta)) return { file, ...JSON.parse(fs.readFileSync(meta, 'utf8')) };
  const c = 1152, p = 2;
  const t = [['pos_embed.proj.weight', [c, 4, p, p]], ['pos_embed.proj.bias', [c]]];
  for (let i = 0; i < 28; i++) {
    for (const [n, s] of [['attn1.to_q', [c, c]], ['attn1.to_k', [c, c]], ['attn1.to_v', [c, c]], ['attn1.to_out.0', [c, c]],
      ['ff.net.0.proj', [4 * c, c]], ['ff.net.2', [c, 4 * c]], ['norm1.linear', [6 * c, c]],
      ['norm1.emb.timestep_embedder.linear_1', [c, 256]], ['norm1.emb.timestep_embedder.linear_2', [c, c]]]) {
      t.push([`transformer_blocks.${i}.${n}.weight`, s], [`transformer_blocks.${i}.${n}.bias`, [s[0]]]);
    }
    t.push([`transformer_blocks.${i}.norm1.emb.class_embedder.embedding_table.weight`, [1001, c]]);
  }
  t.push(['proj_out_1.weight', [2 * c, c]], ['proj_out_1.bias', [2 * c]], ['proj_out_2.weight', [p * p * 8, c]], ['proj_out_2.bias', [p * p * 8]]);
  t.sort((a, b) => (a[0] < b[0] ? -1 : 1));
  const header = {};
  let pos = 0;
  for (const [n, s] of t) {
    const bytes = 4 * s.reduce((a, b) => a * b, 1);
    header[n] = { dtype: 'F32', shape: s, data_offsets: [pos, pos + bytes] };
    pos += bytes;
  }
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const hash = createHash('sha256');
  const fd = fs.openSync(`${file}.partial`, 'w');
  const write = (b) => { hash.update(b); fs.writeSync(fd, b); };
  write(len);
  write(json);
  for (const [n, s] of t) {
    // the embedder copies of every block hold the same values: seed by the name without the block
    const key = n.includes('norm1.emb.') ? n.replace(/^transformer_blocks\.\d+\./, '') : n;
    let x = 2166136261;
    for (const ch of key) x = Math.imul(x ^ ch.charCodeAt(0), 16777619) >>> 0;
    const total = s.reduce((a, b) => a * b, 1);
    for (let done = 0; done < total;) {
      const k = Math.min(total - done, 1 << 20);
      const f = new Float32Array(k);
      for (let i = 0; i < k; i++) {
        x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
        f[i] = (x / 4294967296 - 0.5) * 0.1;
      }
      write(Buffer.from(f.buffer));
      done += k;
    }
  }
  fs.closeSync(fd);
  fs.renameSync(`${file}.partial`, file);
  const out = { size: 8 + json.length + pos, sha256: hash.digest('hex') };
  fs.writeFileSync(meta, JSON.stringify(out));
  return { file, ...out };
}

test('DiT-XL/2 256 shapes from the Hub (3.0 GB f32 safetensors): converted to q8_0 while streaming into WebGPU with the wasm heap bounded, kept in OPFS, reloaded from there', {
  timeout: 40 * 60_000,
  skip: !process.env.SPARSEDIT_HUB_XL && 'set SPARSEDIT_HUB_XL=1 (writes a 3.0 GB file, minutes)',
}, async () => {
  const { context, page, log } = await openPage('?hub=/hub&hf=test/dit-xl&pack=q8_0');
  try {
    const t0 = Date.now();
    const status = await waitStatus(page, /^(ready|error)/, 30 * 60_000);
    const secs = (Date.now() - t0) / 1e3;
    assert.match(status, /^ready — test\/dit-xl .*downloaded from the Hub and converted/, status);
    const got = await page.evaluate(async () => ({ heap: await window.sparsedit.engine.heap_bytes(), info: window.sparsedit.info, backend: window.sparsedit.engine.backend() }));
    const plan = await page.getByTestId('hub-plan').textContent();
    const files = await opfsFiles(page);
    console.log(`# XL/2 from the Hub on ${got.backend}: ${secs.toFixed(0)} s for download + convert + GPU upload; wasm heap ${(got.heap / 2 ** 20).toFixed(1)} MiB; pack ${got.info.bytes} bytes; OPFS ${JSON.stringify(files)}; ${plan}`);
    assert.equal(got.backend, 'webgpu');
    assert.ok(got.heap < 256 * 2 ** 20, `wasm heap ${got.heap} bytes`);
    assert.deepEqual([Number(got.info.depth), Number(got.info.num_classes), Number(got.info.input_size)], [28, 1000, 32]);
    assert.equal(files.find(([n]) => n.endsWith('.gguf'))?.[1], Number(got.info.bytes));
    const t1 = Date.now();
    await page.reload();
    const again = await waitStatus(page, /^(ready|error)/, 30 * 60_000);
    assert.match(again, /from this browser's storage \(OPFS\)/, again);
    const heap2 = await page.evaluate(() => window.sparsedit.engine.heap_bytes());
    console.log(`# XL/2 reloaded from OPFS in ${((Date.now() - t1) / 1e3).toFixed(0)} s, wasm heap ${(heap2 / 2 ** 20).toFixed(1)} MiB`);
    assert.ok(heap2 < 256 * 2 ** 20, `wasm heap ${heap2} bytes`);
    assert.equal(hubRequests.filter((r) => r.startsWith('/cdn/test/dit-xl/')).length, 1);
    assertLocalOnly(log);
  } finally {
    await context.close();
  }
});
