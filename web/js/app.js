// The page's wiring: the test hook, the form's and buttons' events to the modules that act on
// them, and start-up (engine, manifest, the model and decoder the URL asks for). The engine is
// src/wasm.rs's `Engine` in a Web Worker, behind engine.js's async mirror of it.

import { $ } from './dom.js';
import { state } from './state.js';
import { setStatus, showError, engineError, installErrorHandlers, onEngineLost } from './errors.js';
import { loadManifest } from './loader.js';
import { filterClasses, randomSeed, refreshPlan, syncPooledMiddle, updateButtons, updateSparsityHint } from './controls.js';
import { generate, cancel, scrubTo } from './run.js';
import { compare } from './compare.js';
import { loadDecoder, loadHubDecoder, unloadDecoder } from './decoder.js';
import { measureGpu, renderTokenView } from './tokenpanel.js';
import { showFrame, togglePlay } from './player.js';
import {
  createEngine, load, manifestSourceFor, selectedManifestSource, fillModelSelect, refreshCachedMark,
  clearModelCache, switchBackend, restartEngine, fillHubForm, loadFromHub, renderHubCache,
} from './model.js';
import { sourceFromUrl, dropPartials } from './hub.js';

const params = new URLSearchParams(location.search);
const MANIFEST_URL = params.get('manifest') || 'models/manifest.json';

// Test hook (and handy in the console): the live engine and the last generate() result.
window.sparsedit = {
  get engine() { return state.engine; },
  get lastResult() { return state.lastResult; },
  get info() { return state.info; },
  state,
};

installErrorHandlers();
onEngineLost(restartEngine);

// ---------------------------------------------------------------- model and decoder

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
$('decoder-file').addEventListener('change', (ev) => {
  const file = ev.target.files?.[0];
  // an emptied file field (a picked file dropped) drops its decoder too
  if (file) loadDecoder(file);
  else unloadDecoder();
});
$('hub-decoder-load').addEventListener('click', () => loadHubDecoder($('hub-decoder').value));
$('clear-cache').addEventListener('click', clearModelCache);
$('hub-load').addEventListener('click', loadFromHub);
$('hub-preset').addEventListener('change', () => { $('hub-repo').value = ''; });
$('prefer-gpu').addEventListener('change', (ev) => switchBackend(ev.target));

// ---------------------------------------------------------------- the form

$('class-search').addEventListener('input', (ev) => filterClasses(ev.target.value));
// The plan (and so the hint and the token view before a run) follows every setting it reads.
for (const el of document.querySelectorAll('input[name="sparsity"], #grid, #rmin, #rmax, #steps, #sampler, #eta, #cfg, #seed, #num')) {
  el.addEventListener('input', async () => {
    if (['grid', 'rmin', 'rmax', 'steps', 'sampler', 'cfg'].includes(el.id)) el.dataset.touched = '1';
    try { await syncPooledMiddle(); } catch (err) { await engineError(err, 'sparsity'); }
    await refreshPlan();
    updateSparsityHint();
    if (!state.run) renderTokenView();
  });
}
$('seed-random').addEventListener('click', randomSeed);

// ---------------------------------------------------------------- run, token view, compare

$('generate').addEventListener('click', generate);
$('cancel').addEventListener('click', cancel);
$('scrub').addEventListener('input', (ev) => scrubTo(Number(ev.target.value)));
$('measure-gpu').addEventListener('click', measureGpu);
// the clip player (video models): Play / Pause, and the frame sliders of the preview and the token view
$('play').addEventListener('click', togglePlay);
for (const id of ['frame', 'token-frame']) $(id).addEventListener('input', (ev) => showFrame(Number(ev.target.value)));
$('compare-run').addEventListener('click', compare);

// ---------------------------------------------------------------- start-up

async function start() {
  try {
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
  fillModelSelect();
  fillHubForm();
  updateButtons();
  // No conversion runs yet: a temporary OPFS file is one a closed tab left behind.
  await dropPartials().catch(() => {});
  renderHubCache();
  const requested = params.get('model');
  let source = null;
  let hub = null;
  try { hub = sourceFromUrl(); } catch (err) { showError(err, 'hf= in the address'); }
  if (hub) {
    source = hub;
    $('hub-quant').value = hub.quant;
    if (![...$('hub-preset').options].some((o) => o.value === hub.repo && hub.revision === 'main')) {
      $('hub-repo').value = hub.revision === 'main' ? hub.repo : `${hub.repo}@${hub.revision}`;
    } else {
      $('hub-preset').value = hub.repo;
    }
  } else if (requested) {
    $('model-url').value = requested;
    try { source = manifestSourceFor(requested); } catch (err) { showError(err, 'model URL'); }
  } else {
    source = selectedManifestSource();
  }
  const decoderUrl = params.get('decoder');
  if (decoderUrl) await loadDecoder(decoderUrl);
  if (source) await load(source);
  else if (!requested && !hub) setStatus('error: no model in the manifest', 'error');
}

start();
