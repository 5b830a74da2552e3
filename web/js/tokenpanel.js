// The token view panel for the shown step (before a run: the planned grid): the block strip,
// the selected block's numbers and attention maps, the MACs chart, and GPU time per block.

import { $, setIfChanged } from './dom.js';
import { state } from './state.js';
import { engineError, showError } from './errors.js';
import { imageCanvas } from './render.js';
import {
  renderBlocks, renderBlockDetail, renderAttention, renderMacsChart, renderAxisSplit, renderTemporalSequences, formatMacs,
} from './tokenview.js';
import { isSparseModel, plannedGrid, updateButtons } from './controls.js';
import { shownIndex, shownPicture } from './run.js';
import { isVideo, frameCount } from './player.js';

/**
 * The engine's BlockInfo[] at grid side `grid`, cached per model and pooled-middle setting; null
 * while it is asked for (the view is drawn again when it comes).
 */
function layoutFor(grid) {
  if (!state.info) return [];
  const have = state.layouts.get(grid);
  if (Array.isArray(have)) return have;
  if (!have) askLayout(grid);
  return null;
}

function askLayout(grid) {
  const asked = state.engine.layout(grid);
  state.layouts.set(grid, asked);
  return asked.then(
    (layout) => {
      // a setting changed meanwhile (state.layouts cleared): this answer is stale
      if (state.layouts.get(grid) !== asked) return;
      state.layouts.set(grid, layout);
      renderTokenView();
    },
    (err) => {
      if (state.layouts.get(grid) !== asked) return;
      state.layouts.set(grid, []); // not asked again for this model and setting
      showError(err, `token view at s = ${grid}`);
    },
  );
}

/** Asks for the layouts at `grids` and resolves once they are in (the view is drawn at once after). */
export async function fetchLayouts(grids) {
  await Promise.all(grids.map((g) => {
    const have = state.layouts.get(g);
    // (a failed ask is shown by askLayout; the view then draws without it)
    return Array.isArray(have) ? null : have ? have.catch(() => {}) : askLayout(g);
  }));
}

function shownGrid() {
  const i = shownIndex();
  return i >= 0 ? state.run.steps[i].grid : plannedGrid();
}

/**
 * The shown step's first image at its native size (drawn under the token grids), or null; for a
 * video model frame `frame` of its first clip (image `frame` of the flattened clips).
 */
function shownImageCanvas(frame = 0) {
  const run = state.run;
  const i = shownIndex();
  if (!run || i < 0) return null;
  const { image } = shownPicture(run, i);
  return image ? imageCanvas(image, run.channels, run.size, run.video ? Math.min(frame, run.frames - 1) : 0) : null;
}

export function renderTokenView() {
  const info = state.info;
  if (!info) { $('blocks').replaceChildren(); return; }
  const grid = shownGrid();
  const layout = layoutFor(grid);
  const n = info.dense_grid;
  const denseLayout = layoutFor(n);
  if (!layout || !denseLayout) return; // drawn when they come
  const video = isVideo();
  const frame = video ? Math.min(state.frame, frameCount() - 1) : 0;
  const image = shownImageCanvas(frame);
  renderBlocks($('blocks'), layout, { n, image, selected: state.selected, onSelect: selectBlock, video, frame });
  const macs = layout.reduce((a, b) => a + b.macs, 0);
  setIfChanged($('st-macs'), 'textContent', `${formatMacs(macs)} per forward, batch 1${video ? ` (all ${frameCount()} frames)` : ''}`);
  const denseLabel = isSparseModel() ? `s = n = ${n} (no pruning)` : 'dense';
  const sparseLabel = isSparseModel() ? `s = ${grid}` : (state.pooledRange && grid < n ? `training-free, s = ${grid}` : 'dense');
  // redrawn only when what it shows changes (not at every step of a run: it has no image)
  const chartKey = `${info.sha256}|${state.pooledSpec}|${grid}|${denseLabel}|${sparseLabel}|${video}`;
  if ($('macs-chart').dataset.drawn !== chartKey) {
    renderMacsChart($('macs-chart'), denseLayout, layout, { denseLabel, sparseLabel, axes: video });
    $('macs-chart').dataset.drawn = chartKey;
  }
  setIfChanged($('macs-axis-box'), 'hidden', !video);
  if (video) {
    // the shown grid first (its numbers go into the data attributes), then s = n when it differs
    const rows = [{ label: sparseLabel, layout }];
    if (grid !== n && (isSparseModel() || state.pooledRange)) rows.push({ label: denseLabel, layout: denseLayout });
    renderAxisSplit($('macs-axis-bar'), $('macs-axis'), rows);
  }
  const block = state.selected != null ? layout[state.selected] : null;
  const onPick = (q, focus) => {
    state.query = q;
    renderTokenView();
    if (focus) $('attn').querySelector('canvas')?.focus();
  };
  if (block) {
    const times = state.gpuTimes.get(grid);
    const t = times?.find((x) => x.name === block.name) ?? times?.[block.index];
    renderBlockDetail($('block-detail'), block, { gpuMs: t ? t.ms : null, denseBlock: denseLayout[block.index], video });
    if (video && block.axis === 'temporal') {
      const frameImages = Array.from({ length: frameCount() }, (_, k) => shownImageCanvas(k));
      renderTemporalSequences($('attn'), { block, n, frameImages, frame, query: state.query, onPick });
    } else {
      const i = shownIndex();
      const att = i >= 0 ? state.run.steps[i].attention.find((a) => a.block === block.index) : null;
      // a video model's maps are those of the first frame of the first clip
      renderAttention($('attn'), att, {
        block, n, image: video ? shownImageCanvas(0) : image, query: state.query, onPick,
        note: video ? ' — frame 1 of clip 1' : '',
      });
    }
  } else {
    $('attn').replaceChildren();
  }
}

function selectBlock(index) {
  if (state.selected !== index) state.query = 0;
  state.selected = index;
  renderTokenView();
}

/**
 * GPU time per block at the shown grid (the engine's block_times: one forward of batch 2, the
 * [cond; uncond] pair a guided step runs).
 */
export async function measureGpu() {
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
      $('gpu-note').textContent = `s = ${grid}: ${total.toFixed(2)} ms for all blocks (one forward of batch 2: cond + uncond)`;
      if (state.selected == null) state.selected = 0;
      renderTokenView();
    }
  } catch (err) {
    $('gpu-note').textContent = '';
    await engineError(err, 'GPU timing');
  } finally {
    updateButtons();
  }
}
