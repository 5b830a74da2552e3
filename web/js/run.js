// A generation: generate with its per-step record, the live TAESD preview queue, the step
// scrubber and what the preview canvas and numbers show for the shown step, and cancel.

import { $, setIfChanged } from './dom.js';
import { state, newRun } from './state.js';
import { setStatus, engineError, showError } from './errors.js';
import { drawPicture } from './player.js';
import { isSparseModel, readOpts, syncPooledMiddle, updateButtons } from './controls.js';
import { renderTokenView } from './tokenpanel.js';

export async function generate() {
  if (state.generating) return;
  let opts;
  try {
    await syncPooledMiddle();
    opts = readOpts();
  } catch (err) {
    await engineError(err, 'settings');
    return;
  }
  if (state.generating) return; // a second click while the engine was asked
  state.generating = true;
  updateButtons();
  const run = newRun(opts, state.info);
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
    await engineError(err, 'generate');
  } finally {
    state.generating = false;
    updateButtons();
    updateScrubber();
  }
}

/** Cancel: the running generate (or compare) stops after its current step. */
export function cancel() {
  try {
    state.engine?.cancel();
    state.compareEngine?.cancel();
  } catch (err) {
    showError(err, 'cancel');
  }
}

function onStep(run, step) {
  if (state.run !== run) return;
  // The step's arrays were transferred from the engine's worker: the page's own, kept as they are.
  const rec = {
    iter: step.iter,
    total: step.total,
    timestep: step.timestep,
    grid: step.grid,
    ms: step.ms ?? 0,
    pred: step.pred_x0 ?? null, // the clean-image guess x0
    attention: step.attention ?? [],
    decoded: null, // pred through the live TAESD preview, once decoded
  };
  run.steps.push(rec);
  setStatus(`generating: step ${step.iter + 1}/${step.total}`);
  if (rec.pred && wantsLivePreview(run)) requestPreview(run, rec);
  scheduleDraw();
}

// ---------------------------------------------------------------- live preview

/**
 * A TAESD decoder that fits the model, and the box ticked: SD-VAE is for final images only. Any
 * latent size, on the CPU path too: the decode runs in the engine's worker, never on the page's
 * thread (a slow one only previews fewer steps, see requestPreview).
 */
function wantsLivePreview(run) {
  const d = state.decoder?.info;
  return !!d && d.arch === 'taesd' && d.latent_channels === run.channels && $('live-preview').checked;
}

/**
 * Decodes a step's clean-image guess with TAESD while the sampler goes on. One decode at a time:
 * a step that arrives meanwhile waits, replacing any older waiting one, so the preview never
 * lags more than one decode behind and never queues up work. A failed preview is only logged:
 * the generation it belongs to reports the engine's errors (a lost device included).
 */
function requestPreview(run, rec) {
  if (run.previewBusy) { run.previewNext = rec; return; }
  run.previewBusy = true;
  // a clip's frames decode as images: (num * F) latents, in the clips' flattened order
  state.engine.decode(rec.pred, run.num * run.frames)
    .then((d) => {
      rec.decoded = { image: d.image, channels: d.channels, size: d.size, ms: d.ms, decoder: d.decoder }; // transferred: ours
      run.previews += 1;
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

// ---------------------------------------------------------------- the shown step

function scheduleDraw() {
  if (state.drawPending) return;
  state.drawPending = true;
  requestAnimationFrame(() => {
    state.drawPending = false;
    updateScrubber();
    drawShown();
  });
}

/** Index into run.steps of the shown step, -1 when there is none. */
export function shownIndex() {
  const run = state.run;
  if (!run || run.steps.length === 0) return -1;
  return state.shown < 0 ? run.steps.length - 1 : Math.min(state.shown, run.steps.length - 1);
}

/**
 * What the preview shows at step i: after a finished run's last step, its final sample (and
 * that decoded); else the step's clean-image guess (and its live preview). A cancelled run has
 * no final sample: its last step's guess stands for the partly denoised latent.
 */
export function shownPicture(run, i) {
  const isFinal = !!run.result && !run.result.cancelled && i === run.steps.length - 1 && state.shown < 0;
  const src = isFinal ? run.result : run.steps[i];
  return { isFinal, image: isFinal ? run.result.image : run.steps[i].pred, decoded: src.decoded ?? null };
}

function updateScrubber() {
  const run = state.run;
  const scrub = $('scrub');
  const count = run ? run.steps.length : 0;
  const i = shownIndex();
  setIfChanged(scrub, 'disabled', count === 0);
  setIfChanged(scrub, 'max', String(Math.max(0, count - 1)));
  setIfChanged(scrub, 'value', String(Math.max(0, i)));
  setIfChanged($('scrub-label'), 'textContent', i < 0 ? '–' : `${i + 1}/${run.steps[i].total} · t=${run.steps[i].timestep} · s=${run.steps[i].grid}`);
}

/** The scrubber moved to step `v` (its last position follows the newest step). */
export function scrubTo(v) {
  const run = state.run;
  if (!run) return;
  state.shown = !state.generating && v >= run.steps.length - 1 ? -1 : v;
  updateScrubber();
  drawShown();
}

/**
 * The pixels the preview shows for the shown step, `{ data, channels, size }` (a batch of
 * images, or of clips flattened (num, F, C, H, W)), or null: a latent model's final sample
 * through the decoder; a step through the live TAESD preview when it has one, else its raw
 * latent (first 3 channels).
 */
export function shownPixels() {
  const run = state.run;
  const i = shownIndex();
  if (!run || i < 0) return null;
  const { image, decoded } = shownPicture(run, i);
  if (decoded) return { data: decoded.image, channels: decoded.channels, size: decoded.size };
  if (image) return { data: image, channels: run.channels, size: run.size };
  return null;
}

/** Draws the shown step: preview (and a video's clip player), numbers and the token view. */
function drawShown() {
  const run = state.run;
  const i = shownIndex();
  if (!run || i < 0) { renderTokenView(); return; }
  const st = run.steps[i];
  const { isFinal, decoded } = shownPicture(run, i);
  const pix = shownPixels();
  if (pix) drawPicture(run, pix);
  setIfChanged($('preview').dataset, 'shows', decoded ? (isFinal ? 'decoded' : 'live-preview') : 'latent');
  const how = decoded ? `, decoded by ${decoded.decoder} in ${decoded.ms.toFixed(0)} ms` : '';
  const what = isFinal ? ` (final sample${how})` : decoded ? ` (live preview${how})` : '';
  const cancelledHere = run.result?.cancelled && i === run.steps.length - 1 ? ' · cancelled here' : '';
  setIfChanged($('st-step'), 'textContent', `${st.iter + 1} / ${st.total}${what}${cancelledHere}`);
  setIfChanged($('st-t'), 'textContent', String(st.timestep));
  setIfChanged($('st-grid'), 'textContent', isSparseModel() || state.pooledRange ? `${st.grid}×${st.grid}` : 'dense');
  setIfChanged($('st-ms'), 'textContent', `${st.ms.toFixed(1)} ms`);
  renderTokenView();
}

/** The view before any run on a newly loaded model: a blank preview of its size, no numbers. */
export function resetRunView(info) {
  const preview = $('preview');
  preview.width = info.input_size;
  preview.height = info.input_size;
  preview.style.width = '';
  preview.style.maxWidth = '';
  preview.getContext('2d').clearRect(0, 0, preview.width, preview.height);
  for (const id of ['st-step', 'st-t', 'st-grid', 'st-ms', 'st-total']) $(id).textContent = '–';
  updateScrubber();
}
