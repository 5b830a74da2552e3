// The sparse-vs-dense compare: the loaded model's counterpart (from the manifest) in a second
// engine (its own worker), both run from the same seed and settings, side by side with their
// difference map.

import { $ } from './dom.js';
import { state } from './state.js';
import { setStatus, engineError, showError } from './errors.js';
import { Engine } from './engine.js';
import { loadModel, formatBytes } from './loader.js';
import { drawBatch, drawDiff } from './render.js';
import { formatMacs } from './tokenview.js';
import { compareCounterpart, isSparseModel, readOpts, syncPooledMiddle, updateButtons } from './controls.js';

/** The counterpart pack in state.compareEngine (loaded once, kept while it stays the same pack). */
async function counterpartEngine(other, text) {
  if (state.compareEngine && state.compareInfo?.sha256 === other.sha256) return;
  text.textContent = `loading ${other.id}…`;
  try { state.compareEngine?.free(); } catch { /* already gone */ }
  state.compareEngine = null;
  state.compareInfo = null;
  const engine = await Engine.create($('prefer-gpu').checked, {
    // a failed compare worker is dropped (the next compare starts another); the page's engine goes on
    onCrash: (err) => {
      if (state.compareEngine !== engine) return;
      state.compareEngine = null;
      state.compareInfo = null;
      showError(err, 'compare engine');
    },
  });
  state.compareEngine = engine;
  const src = { kind: 'url', url: other.url, size: other.size, sha256: other.sha256, label: other.id };
  const { info } = await loadModel(engine, src, {
    onProgress: (p) => { text.textContent = `loading ${other.id}: ${formatBytes(p.received)} / ${formatBytes(p.total)}`; },
  });
  state.compareInfo = info;
}

export async function compare() {
  let opts;
  try {
    await syncPooledMiddle();
    opts = { ...readOpts(), num: 1, trace: false, preview: false };
  } catch (err) {
    await engineError(err, 'settings');
    return;
  }
  const other = compareCounterpart();
  if (!other) return;
  state.comparing = true;
  updateButtons();
  const text = $('compare-text');
  try {
    await counterpartEngine(other, text);
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
      // MACs of all blocks over the whole run (both CFG halves when guidance is on)
      side.macs = (await side.engine.run_plan(o)).macs;
      const t0 = performance.now();
      side.result = await side.engine.generate(o, () => {});
      side.wall = performance.now() - t0;
      if (side.result.cancelled) {
        text.textContent = `cancelled while running ${name}`;
        setStatus(`done — compare cancelled (${name} after ${side.result.ms_steps.length} of ${o.steps} steps)`);
        return;
      }
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
    await engineError(err, 'compare');
  } finally {
    state.comparing = false;
    updateButtons();
  }
}
