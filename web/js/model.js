// The engine and its model: starting (or restarting) the Engine, loading a pack into it from the
// manifest, a URL, a file or the Hugging Face Hub (hub.js), what the page shows about the loaded
// model, the model cache and the Hub packs kept in OPFS, and the restart after a lost GPU device
// or a crashed engine worker.

import { $ } from './dom.js';
import { state } from './state.js';
import { setStatus, showError, engineError, errorMessage } from './errors.js';
import { Engine } from './engine.js';
import { loadModel, isCached, clearCache, formatBytes } from './loader.js';
import { controlsForModel, plannedGrid, updateButtons } from './controls.js';
import { resetRunView } from './run.js';
import { fetchLayouts, renderTokenView } from './tokenpanel.js';
import { reloadDecoder } from './decoder.js';
import { playerForModel } from './player.js';
import { PRESETS, PACK_TYPES, loadHub, listEntries, deleteEntry, listUnfinished, deleteUnfinished, hubSource, parseRepo, rememberInUrl, hasOpfs } from './hub.js';

const ARCH_TITLE = { dit: 'DiT', sparsedit: 'SparseDiT', latte: 'Latte', sparselatte: 'sparse Latte' };

/**
 * A fresh Engine (a new worker) on the backend the "use WebGPU" box asks for; the decoder comes
 * back into it. The badge says which engine runs: WebGPU inside the worker where the browser
 * offers it there, else the CPU path.
 */
export async function createEngine() {
  try { state.engine?.free(); } catch { /* already gone */ }
  state.engine = null;
  state.info = null;
  state.layouts.clear();
  state.gpuTimes.clear();
  const engine = await Engine.create($('prefer-gpu').checked, {
    // a worker that fails between calls: shown, and the engine restarted (when it is still the live one)
    onCrash: (err) => { if (state.engine === engine) engineError(err, 'engine'); },
  });
  state.engine = engine;
  await reloadDecoder();
  const backend = state.engine.backend();
  const badge = $('backend');
  badge.textContent = backend === 'webgpu' ? 'engine: WebGPU (worker)' : 'engine: CPU (worker, no WebGPU)';
  badge.className = `badge ${backend === 'webgpu' ? 'gpu' : 'cpu'}`;
  badge.title = state.engine.adapter();
  badge.dataset.backend = backend;
  badge.setAttribute('data-testid', 'backend');
  // wgpu reports the device type; a CPU-type WebGPU adapter is a software renderer (SwiftShader)
  $('adapter-hint').hidden = !(backend === 'webgpu' && /\bCpu\b/.test(badge.title));
}

// ---------------------------------------------------------------- sources

function sourceLabel(src) {
  if (src.kind === 'file') return src.file.name;
  if (src.kind === 'hub') return src.label;
  return src.label || src.url;
}

function manifestSource(m) {
  return { kind: 'url', url: m.url, size: m.size, sha256: m.sha256, label: m.id };
}

/** A URL (or a manifest id) as a source: with the manifest's size and hash when it lists it. */
export function manifestSourceFor(url) {
  const abs = new URL(url, location.href).href;
  const m = state.manifest.find((e) => e.url === abs || e.id === url);
  return m ? manifestSource(m) : { kind: 'url', url: abs, label: abs };
}

/** The pack picked in the "Bundled pack" list, or null. */
export function selectedManifestSource() {
  const m = state.manifest.find((e) => e.id === $('model-select').value);
  return m ? manifestSource(m) : null;
}

/** Fills the "Bundled pack" list from the manifest (its default entry selected). */
export function fillModelSelect() {
  $('model-select').replaceChildren(...state.manifest.map((m) => {
    const o = document.createElement('option');
    o.value = m.id;
    o.textContent = `${m.id} (${m.arch}, ${m.quant}, ${formatBytes(m.size)})`;
    o.selected = !!m.default;
    return o;
  }));
}

// ---------------------------------------------------------------- loading

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
  const where = { cache: 'from cache', file: 'from file', opfs: 'from this browser\'s storage (OPFS)', hub: 'downloaded + converted' }[p.phase] || 'downloaded';
  $('load-text').textContent =
    `${formatBytes(p.received)}${p.total ? ` / ${formatBytes(p.total)}` : ''} ${where} · ${rate}${eta}`;
}

export async function load(source) {
  if (state.loading || state.generating || !state.engine) return;
  state.loading = true;
  updateButtons();
  setStatus(`loading ${sourceLabel(source)}…`);
  $('load-progress').value = 0;
  try {
    const { info, fromCache, from } = source.kind === 'hub'
      ? await loadHub(state.engine, source, { onProgress, onPlan: showHubPlan })
      : await loadModel(state.engine, source, { onProgress });
    state.info = info;
    state.source = source;
    await modelLoaded();
    if (source.kind === 'hub') rememberInUrl(source);
    const notCached = info.cacheError ? `, not cached (${info.cacheError}): the weights stay loaded for this session` : '';
    const whence = fromCache ? ', from cache' : from === 'opfs' ? ', from this browser\'s storage (OPFS)' : from === 'hub'
      ? `, downloaded from the Hub and converted${info.resumed_from ? ` (resumed: ${formatBytes(info.resumed_from)} of it kept from an earlier visit)` : ''}` : '';
    setStatus(`ready — ${info.name || sourceLabel(source)} (${info.arch}, ${info.num_classes} classes)${whence}${notCached}`);
  } catch (err) {
    state.info = await loadedInfo();
    if (!state.info) $('model-badge').textContent = 'no model';
    await engineError(err, `loading ${sourceLabel(source)}`);
  } finally {
    state.loading = false;
    updateButtons();
    refreshCachedMark();
    if (source.kind === 'hub') renderHubCache();
  }
}

/** The engine's model after a failed load (a failed load keeps the previous one), or null. */
async function loadedInfo() {
  try { return (await state.engine?.model_info()) ?? null; } catch { return null; }
}

/** The page for a newly loaded model: its line, the form, and the token view drawn before "ready". */
async function modelLoaded() {
  const info = state.info;
  state.layouts.clear();
  state.gpuTimes.clear();
  state.run = null;
  state.shown = -1;
  state.selected = null;
  $('model-badge').textContent = `${info.name || info.arch} · ${info.arch}`;
  const sparse = info.arch === 'sparsedit' || info.arch === 'sparselatte';
  const video = info.frames != null;
  $('model-info').textContent =
    `${ARCH_TITLE[info.arch] || info.arch} · ${info.depth} blocks${video ? ' (spatial / temporal pairs)' : ''} · ` +
    `${video ? `clips of ${info.frames} frames of ` : ''}${info.input_size}×${info.input_size}×${info.in_channels} · ` +
    `dense grid ${info.dense_grid}×${info.dense_grid} = ${info.dense_grid ** 2} tokens${video ? ' per frame' : ''}` +
    `${sparse ? ` · default sparse grid ${info.default_grid}×${info.default_grid}` : ''} · ` +
    `${(info.params / 1e6).toFixed(2)} M parameters · ${formatBytes(info.bytes)} · sha256 ${String(info.sha256).slice(0, 12)}…`;
  await controlsForModel(info);
  playerForModel(info);
  resetRunView(info);
  await fetchLayouts([plannedGrid(), info.dense_grid]);
  renderTokenView();
}

// ---------------------------------------------------------------- cache

export async function refreshCachedMark() {
  const src = state.source?.kind === 'url' ? state.source : selectedManifestSource();
  try {
    $('cached-mark').hidden = !(src && (await isCached(src)));
  } catch {
    $('cached-mark').hidden = true;
  }
}

export async function clearModelCache() {
  try {
    await clearCache();
    $('load-text').textContent = 'cache cleared';
  } catch (err) {
    showError(err, 'clear cache');
  }
  refreshCachedMark();
}

// ---------------------------------------------------------------- the Hugging Face Hub

/** Fills the preset and pack-type lists. */
export function fillHubForm() {
  $('hub-preset').replaceChildren(...PRESETS.map((p, i) => {
    const o = document.createElement('option');
    o.value = p.repo;
    o.textContent = `${p.label} (${p.repo})`;
    o.selected = i === 0;
    return o;
  }));
  $('hub-quant').replaceChildren(...PACK_TYPES.map((q, i) => {
    const o = document.createElement('option');
    o.value = q;
    o.textContent = q;
    o.selected = i === 0;
    return o;
  }));
}

/** What the plan line says (kind 'error' when the download cannot go ahead). */
function showHubPlan(text, kind = '') {
  const el = $('hub-plan');
  el.textContent = text;
  el.classList.toggle('error', kind === 'error');
}

/** "Get from the Hub": the repo typed in (owner/name[@revision]) or the preset, as the picked pack type. */
export function loadFromHub() {
  let source;
  try {
    const typed = $('hub-repo').value.trim();
    const { repo, revision } = parseRepo(typed || $('hub-preset').value);
    source = hubSource(repo, revision, $('hub-quant').value);
  } catch (err) {
    showError(err, 'Hub model');
    return Promise.resolve();
  }
  return load(source);
}

/** The list of converted packs kept in OPFS: each with its size, a Load and a Delete button. */
export async function renderHubCache() {
  const list = $('hub-cache');
  let entries = [], unfinished = [];
  try {
    entries = await listEntries();
    unfinished = await listUnfinished();
  } catch (err) {
    list.replaceChildren();
    $('hub-cache-note').textContent = `the kept packs cannot be listed: ${err?.message || err}`;
    return;
  }
  $('hub-cache-note').textContent = !hasOpfs() ? 'this browser has no OPFS: Hub packs are not kept'
    : entries.length ? `${entries.length} pack${entries.length > 1 ? 's' : ''}, ${formatBytes(entries.reduce((a, e) => a + e.size, 0))} in all`
      : 'none yet';
  list.replaceChildren(...entries.map((e) => {
    const li = document.createElement('li');
    li.dataset.key = e.key;
    li.dataset.size = String(e.size);
    li.setAttribute('data-testid', 'hub-entry');
    const text = document.createElement('span');
    text.className = 'grow';
    text.textContent = `${e.repo}@${e.revision} · ${e.quant} · ${formatBytes(e.size)} · source sha256 ${String(e.sha256).slice(0, 12)}…`;
    const loadBtn = document.createElement('button');
    loadBtn.type = 'button';
    loadBtn.textContent = 'Load';
    loadBtn.addEventListener('click', () => load(hubSource(e.repo, e.revision, e.quant)));
    const del = document.createElement('button');
    del.type = 'button';
    del.textContent = 'Delete';
    del.setAttribute('data-testid', 'hub-delete');
    del.addEventListener('click', async () => {
      if (state.loading) return;
      await deleteEntry(e.key);
      renderHubCache();
    });
    li.append(text, loadBtn, del);
    return li;
  }), ...unfinished.map((u) => {
    // a download cut off by a reload or a closed tab: loading that model again resumes it
    const li = document.createElement('li');
    li.setAttribute('data-testid', 'hub-unfinished');
    const text = document.createElement('span');
    text.className = 'grow';
    text.textContent = `${u.label} · unfinished download, ${formatBytes(u.size)} kept: loading it again resumes there`;
    const del = document.createElement('button');
    del.type = 'button';
    del.textContent = 'Delete';
    del.addEventListener('click', async () => {
      if (state.loading) return;
      await deleteUnfinished(u.name);
      renderHubCache();
    });
    li.append(text, del);
    return li;
  }));
}

// ---------------------------------------------------------------- restarts

function dropCompareEngine() {
  try { state.compareEngine?.free(); } catch { /* already gone */ }
  state.compareEngine = null;
  state.compareInfo = null;
}

/** The "use WebGPU" box changed: a new engine on that backend; the model comes back from the cache. */
export async function switchBackend(box) {
  if (state.loading || state.generating || state.comparing) {
    box.checked = !box.checked;
    return;
  }
  const source = state.source;
  try {
    dropCompareEngine();
    setStatus('starting the engine…');
    await createEngine();
    updateButtons();
    if (source) await load(source);
  } catch (err) {
    await engineError(err, 'engine start');
  }
}

/**
 * The engine is gone (errors.js calls this for a `device_lost` or `engine_crashed` error): a
 * fresh Engine, the model reloaded (from the cache when possible). Whatever the lost engine was
 * doing is over.
 */
export async function restartEngine(err) {
  if (state.recovering) return;
  state.recovering = true;
  state.loading = state.generating = state.comparing = false;
  const source = state.source;
  try {
    const why = err?.kind === 'device_lost' ? 'GPU device lost' : `engine stopped (${errorMessage(err)})`;
    setStatus(`error: ${why} — restarting the engine…`, 'error');
    dropCompareEngine();
    await createEngine();
    if (source) await load(source);
  } catch (err) {
    showError(err, 'restarting the engine');
  } finally {
    state.recovering = false;
    updateButtons();
  }
}
