// The token view: one small card per block showing which tokens it computes, the detail of a
// block (numbers + merge/recover attention maps) and the MACs chart. Pure drawing: the data come
// from engine.layout(grid) (BlockInfo[]) and the per-step trace kept by run.js.

import { setIfChanged, setAttrIfChanged } from './dom.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

export function segmentColours() {
  const css = getComputedStyle(document.documentElement);
  const get = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  return {
    bottom: get('--seg-bottom', '#0e9f8e'),
    middle: get('--seg-middle', '#e0891b'),
    top: get('--seg-top', '#7a5af0'),
    dense: get('--seg-dense', '#3b82c4'),
    temporal: get('--axis-temporal', '#d0457a'),
    spatial: get('--axis-spatial', '#3b82c4'),
    muted: get('--muted', '#888'),
    ink: get('--ink', '#222'),
  };
}

const KIND_LABEL = {
  dit: 'dense', poolingformer: 'pool', merge: 'merge', semantic: 'semantic', recover: 'recover', normal: 'dense',
  pooled: 'pooled',
};

/** `el(name, attrs, text?)`: create an SVG element with attributes (and text), append it to `svg`. */
function svgAppender(svg) {
  return (name, attrs, text) => {
    const e = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text != null) e.textContent = text;
    svg.append(e);
    return e;
  };
}

export function formatMacs(m) {
  if (!Number.isFinite(m)) return '?';
  if (m >= 1e9) return `${(m / 1e9).toFixed(2)} G`;
  if (m >= 1e6) return `${(m / 1e6).toFixed(2)} M`;
  if (m >= 1e3) return `${(m / 1e3).toFixed(1)} K`;
  return String(m);
}

function withAlpha(colour, alpha) {
  // colour is #rrggbb from our CSS; anything else is used as is
  const m = /^#([0-9a-f]{6})$/i.exec(colour);
  if (!m) return colour;
  const v = parseInt(m[1], 16);
  return `rgba(${v >> 16}, ${(v >> 8) & 255}, ${v & 255}, ${alpha})`;
}

/** Draws the faded image (if any) as the background of a token drawing. */
function background(ctx, w, h, image, alpha = 0.55) {
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, w, h);
  if (image) {
    ctx.save();
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = alpha;
    ctx.drawImage(image, 0, 0, w, h);
    ctx.restore();
  }
}

function gridLines(ctx, w, h, side, colour, width = 1) {
  ctx.strokeStyle = colour;
  ctx.lineWidth = width;
  ctx.beginPath();
  for (let i = 0; i <= side; i++) {
    const x = Math.round((i * w) / side) + 0.5;
    const y = Math.round((i * h) / side) + 0.5;
    ctx.moveTo(x, 0); ctx.lineTo(x, h);
    ctx.moveTo(0, y); ctx.lineTo(w, y);
  }
  ctx.stroke();
}

/**
 * One block's tokens over the image: dense n×n grid, the pooling window of every sparse token
 * (rectangles on the dense grid, overlapping where s does not divide n), or the Poolingformer's
 * single global token.
 */
export function drawBlockTokens(canvas, block, n, image, colours) {
  const ctx = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  const colour = colours[block.segment] || colours.dense;
  background(ctx, w, h, image);
  const cw = w / n, ch = h / n;
  if (block.grid === 'sparse' && block.windows?.length) {
    gridLines(ctx, w, h, n, 'rgba(255,255,255,0.12)');
    ctx.fillStyle = withAlpha(colour, 0.16);
    ctx.strokeStyle = colour;
    ctx.lineWidth = Math.max(1, w / 90);
    const inset = ctx.lineWidth;
    for (const [r0, r1, c0, c1] of block.windows) {
      const x = c0 * cw, y = r0 * ch, ww = (c1 - c0) * cw, hh = (r1 - r0) * ch;
      ctx.fillRect(x, y, ww, hh);
      ctx.strokeRect(x + inset, y + inset, ww - 2 * inset, hh - 2 * inset);
      ctx.beginPath();
      ctx.arc(x + ww / 2, y + hh / 2, Math.max(1.5, w / 60), 0, 2 * Math.PI);
      ctx.fillStyle = colour;
      ctx.fill();
      ctx.fillStyle = withAlpha(colour, 0.16);
    }
  } else if (block.grid === 'global') {
    gridLines(ctx, w, h, n, withAlpha(colour, 0.55));
    ctx.strokeStyle = colour;
    ctx.lineWidth = Math.max(2, w / 45);
    ctx.strokeRect(ctx.lineWidth / 2, ctx.lineWidth / 2, w - ctx.lineWidth, h - ctx.lineWidth);
    ctx.beginPath();
    ctx.arc(w / 2, h / 2, w / 7, 0, 2 * Math.PI);
    ctx.fillStyle = withAlpha(colour, 0.85);
    ctx.fill();
    ctx.fillStyle = '#fff';
    ctx.font = `bold ${Math.round(w / 9)}px system-ui, sans-serif`;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.fillText('1', w / 2, h / 2 + 1);
  } else {
    const side = block.side || n;
    ctx.fillStyle = withAlpha(colour, 0.12);
    ctx.fillRect(0, 0, w, h);
    gridLines(ctx, w, h, side, withAlpha(colour, 0.9), Math.max(1, w / 120));
  }
}

/**
 * A temporal block of a video model over frame `image` (its frame k): the frames of the clip
 * stacked behind it, and every attention sequence it runs — one per dense position (n×n grid)
 * or per pooled cell (its pooling window, s×s) — as a dot on the frame with a line back through
 * the stack: one sequence of F tokens, that spot in every frame.
 */
export function drawTemporalTokens(canvas, block, n, image, colours, frames) {
  const ctx = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  const colour = colours[block.segment] || colours.dense;
  const layers = Math.max(0, Math.min(frames - 1, 3));
  const d = Math.round(w * 0.045);
  const fw = w - layers * d, fh = h - layers * d;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, w, h);
  // the other frames, back to front (up and to the right)
  for (let l = layers; l >= 1; l--) {
    const x = l * d, y = (layers - l) * d;
    ctx.fillStyle = '#000';
    ctx.fillRect(x, y, fw, fh);
    ctx.save();
    ctx.globalAlpha = 0.35;
    ctx.imageSmoothingEnabled = false;
    if (image) ctx.drawImage(image, x, y, fw, fh);
    ctx.restore();
    ctx.strokeStyle = colours.temporal;
    ctx.lineWidth = 2;
    ctx.strokeRect(x + 1, y + 1, fw - 2, fh - 2);
  }
  // the shown frame in front
  const oy = layers * d;
  ctx.fillStyle = '#000';
  ctx.fillRect(0, oy, fw, fh);
  if (image) {
    ctx.save();
    ctx.globalAlpha = 0.55;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, 0, oy, fw, fh);
    ctx.restore();
  }
  const cw = fw / n, ch = fh / n;
  const cells = block.grid === 'sparse' && block.windows?.length
    ? block.windows
    : Array.from({ length: n * n }, (_, p) => [Math.floor(p / n), Math.floor(p / n) + 1, p % n, (p % n) + 1]);
  ctx.save();
  ctx.translate(0, oy);
  if (block.grid === 'sparse') {
    gridLines(ctx, fw, fh, n, 'rgba(255,255,255,0.12)');
    ctx.fillStyle = withAlpha(colour, 0.14);
    ctx.strokeStyle = colour;
    ctx.lineWidth = Math.max(1, w / 110);
    const inset = ctx.lineWidth;
    for (const [r0, r1, c0, c1] of cells) {
      const x = c0 * cw, y = r0 * ch, ww = (c1 - c0) * cw, hh = (r1 - r0) * ch;
      ctx.fillRect(x, y, ww, hh);
      ctx.strokeRect(x + inset, y + inset, ww - 2 * inset, hh - 2 * inset);
    }
  } else {
    ctx.fillStyle = withAlpha(colour, 0.1);
    ctx.fillRect(0, 0, fw, fh);
    gridLines(ctx, fw, fh, n, withAlpha(colour, 0.8), Math.max(1, w / 140));
  }
  // one sequence per cell: through the stack of frames
  const dot = Math.max(1.2, Math.min(cw, ch) / 5);
  const lines = cells.length <= 256 && layers > 0;
  ctx.strokeStyle = withAlpha(colours.temporal, 0.55);
  ctx.lineWidth = 1;
  if (lines) {
    ctx.beginPath();
    for (const [r0, r1, c0, c1] of cells) {
      const x = ((c0 + c1) / 2) * cw, y = ((r0 + r1) / 2) * ch;
      ctx.moveTo(x, y);
      ctx.lineTo(x + layers * d, y - layers * d);
    }
    ctx.stroke();
  }
  ctx.fillStyle = colours.temporal;
  for (const [r0, r1, c0, c1] of cells) {
    ctx.beginPath();
    ctx.arc(((c0 + c1) / 2) * cw, ((r0 + r1) / 2) * ch, dot, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.restore();
  // "× F": each dot is a sequence of F tokens
  ctx.font = `bold ${Math.round(w / 9)}px system-ui, sans-serif`;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'bottom';
  ctx.lineWidth = 3;
  ctx.strokeStyle = 'rgba(0,0,0,0.75)';
  ctx.strokeText(`×${frames}`, fw - 4, h - 3);
  ctx.fillStyle = '#fff';
  ctx.fillText(`×${frames}`, fw - 4, h - 3);
}

/** What a video block's attention sequences are: `dense positions` / `pooled cells` (temporal) or `frame tokens` (spatial). */
export function sequenceKind(block) {
  if (block.axis !== 'temporal') return 'frame-tokens';
  return block.grid === 'sparse' ? 'pooled-cells' : 'dense-positions';
}

/** The card's axis line of a video block at frame `frame` (0-based). */
export function axisText(block, frame) {
  if (block.axis === 'temporal') {
    const what = block.grid === 'sparse' ? 'pooled cells' : 'dense positions';
    return `temporal · ${block.tokens} ${what} × ${block.frames} frames`;
  }
  return `spatial · frame ${frame + 1}: ${block.tokens} tokens`;
}

/** The grid under a video block's axis line: the n×n positions, s×s cells, or global pooling. */
function gridText(block) {
  if (block.axis === 'temporal') return block.grid === 'sparse' ? `(${block.side}×${block.side} cells)` : `(${block.side}×${block.side} positions)`;
  if (block.grid === 'sparse') return `(${block.side}×${block.side} pooled)`;
  if (block.grid === 'global') return 'attention via 1 global token';
  return `(${block.side}×${block.side})`;
}

/**
 * The cards' canvases are painted a few per frame, not all in the frame that updates the cards:
 * a step's frame then stays short however many blocks the model has (28 for DiT-XL/2), and the
 * page's thread stays free for input while the engine's worker computes. Each frame paints until
 * CARD_BUDGET_MS have gone (at least one card); a card asked for again before its turn is painted
 * once, with the newest picture. Cards waiting longest go first.
 */
const CARD_BUDGET_MS = 4;
const cardPaints = new Map(); // canvas -> () => void, in the order first asked
let cardFrame = 0;

function paintLater(canvas, paint) {
  cardPaints.set(canvas, paint);
  if (!cardFrame) cardFrame = requestAnimationFrame(paintCards);
}

function paintCards() {
  cardFrame = 0;
  const t0 = performance.now();
  for (const [canvas, paint] of cardPaints) {
    cardPaints.delete(canvas);
    if (canvas.isConnected) paint();
    if (performance.now() - t0 >= CARD_BUDGET_MS) break;
  }
  if (cardPaints.size) cardFrame = requestAnimationFrame(paintCards);
}

/**
 * Creates or updates the block cards. Each card is a real <button> with data-testid="layer-N"
 * and data-tokens = tokens that block computes at the shown step.
 */
export function renderBlocks(container, layout, { n, image, selected, onSelect, video = false, frame = 0 }) {
  const colours = segmentColours();
  if (container.childElementCount !== layout.length) {
    container.replaceChildren();
    for (const b of layout) {
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'block-card';
      btn.dataset.testid = `layer-${b.index}`;
      btn.setAttribute('data-testid', `layer-${b.index}`);
      const canvas = document.createElement('canvas');
      canvas.width = 176; canvas.height = 176;
      const k = document.createElement('span'); k.className = 'bk';
      const t = document.createElement('span'); t.className = 'bt';
      const a = document.createElement('span'); a.className = 'ba';
      btn.append(canvas, k, t, a);
      btn.addEventListener('click', () => onSelect(b.index));
      container.append(btn);
    }
  }
  layout.forEach((b, i) => {
    const btn = container.children[i];
    const canvas = btn.querySelector('canvas');
    setIfChanged(btn, 'className', `block-card seg-${b.segment}`);
    setIfChanged(btn.dataset, 'tokens', String(b.tokens));
    setIfChanged(btn.dataset, 'kind', b.kind);
    setAttrIfChanged(btn, 'aria-pressed', String(selected === b.index));
    setIfChanged(btn, 'title', b.name);
    setIfChanged(btn.querySelector('.bk'), 'textContent', `${b.index} · ${KIND_LABEL[b.kind] || b.kind}`);
    const ba = btn.querySelector('.ba');
    if (video) {
      // what the block's attention runs over, at the chosen frame
      setIfChanged(btn.dataset, 'axis', b.axis);
      setIfChanged(btn.dataset, 'frame', String(frame));
      setIfChanged(btn.dataset, 'sequences', String(b.sequences));
      setIfChanged(btn.dataset, 'sequenceLen', String(b.sequence_len));
      setIfChanged(btn.dataset, 'over', sequenceKind(b));
      const line = axisText(b, frame);
      setIfChanged(btn.querySelector('.bt'), 'textContent', line);
      setIfChanged(ba, 'textContent', gridText(b));
      setIfChanged(ba, 'className', `ba ${b.axis}`);
      setIfChanged(ba, 'hidden', false);
      setAttrIfChanged(btn, 'aria-label', `block ${b.index}, ${b.kind}, ${line} ${gridText(b)}`);
      if (b.axis === 'temporal') paintLater(canvas, () => drawTemporalTokens(canvas, b, n, image, colours, b.frames));
      else paintLater(canvas, () => drawBlockTokens(canvas, b, n, image, colours));
    } else {
      for (const key of ['axis', 'frame', 'sequences', 'sequenceLen', 'over']) if (key in btn.dataset) delete btn.dataset[key];
      setAttrIfChanged(btn, 'aria-label', `block ${b.index}, ${b.kind}, ${b.tokens} tokens`);
      setIfChanged(btn.querySelector('.bt'), 'textContent',
        b.grid === 'sparse' ? `${b.tokens} tok (${b.side}×${b.side})` : b.grid === 'global' ? `${b.tokens} tok · 1 global` : `${b.tokens} tok`);
      setIfChanged(ba, 'textContent', '');
      setIfChanged(ba, 'hidden', true);
      paintLater(canvas, () => drawBlockTokens(canvas, b, n, image, colours));
    }
  });
}

/** The numbers of one block, as a definition list. */
export function renderBlockDetail(el, block, { gpuMs, denseBlock, video = false }) {
  const h = document.createElement('h3');
  h.textContent = `Block ${block.index}: ${block.kind}${video ? ` (${block.axis})` : ''}`;
  const dl = document.createElement('dl');
  dl.className = 'stats';
  const tokens = block.grid === 'sparse' ? `${block.tokens} (${block.side}×${block.side} sparse)` : `${block.tokens}${block.grid === 'global' ? ' (attention through 1 global token)' : ''}`;
  const macs = `${formatMacs(block.macs)}${video ? ` (all ${block.frames} frames)` : ''}${denseBlock && denseBlock.macs !== block.macs ? ` (s = n: ${formatMacs(denseBlock.macs)})` : ''}`;
  const rows = video ? [
    ['name', block.name],
    ['segment', block.segment],
    ['axis', block.axis === 'temporal'
      ? `temporal: across the ${block.frames} frames at one ${block.grid === 'sparse' ? 'pooled cell' : 'position'}`
      : 'spatial: within each frame'],
    ['sequences × length', block.axis === 'temporal'
      ? `${block.sequences} ${block.grid === 'sparse' ? `pooled cells (${block.side}×${block.side})` : `dense positions (${block.side}×${block.side})`} × ${block.sequence_len} frames`
      : `${block.sequences} frames × ${block.sequence_len} tokens`],
    ['tokens per frame', tokens],
    ['MACs', macs],
    ['GPU time', gpuMs == null ? 'not measured' : `${gpuMs.toFixed(3)} ms (batch 2: cond + uncond)`],
  ] : [
    ['name', block.name],
    ['segment', block.segment],
    ['tokens computed', tokens],
    ['MACs', macs],
    ['GPU time', gpuMs == null ? 'not measured' : `${gpuMs.toFixed(3)} ms (batch 2: cond + uncond)`],
  ];
  // The detail is a live region: redraws that change nothing (a playing clip redraws the token
  // view at every frame) leave it alone, so nothing is announced again.
  const key = JSON.stringify([block.index, h.textContent, rows]);
  if (el.dataset.key === key) return;
  el.dataset.key = key;
  el.replaceChildren();
  el.dataset.block = String(block.index);
  if (video) {
    el.dataset.axis = block.axis;
    el.dataset.sequences = String(block.sequences);
    el.dataset.sequenceLen = String(block.sequence_len);
    el.dataset.tokens = String(block.tokens);
  } else {
    for (const key of ['axis', 'sequences', 'sequenceLen', 'tokens']) delete el.dataset[key];
  }
  for (const [k, v] of rows) {
    const dt = document.createElement('dt'); dt.textContent = k;
    const dd = document.createElement('dd'); dd.textContent = v;
    if (k === 'name') dd.className = 'mono';
    dl.append(dt, dd);
  }
  el.append(h, dl);
}

/**
 * Attention of a merge block (sparse queries over dense keys) or a recover block (dense queries
 * over sparse keys), head-averaged, first image. Left: pick a query token (click or arrow keys);
 * right: where it gathers from.
 */
export function renderAttention(container, att, { block, n, image, query, onPick, note = '' }) {
  container.replaceChildren();
  if (!att) {
    const p = document.createElement('p');
    p.className = 'hint';
    p.textContent = block && (block.kind === 'merge' || block.kind === 'recover')
      ? 'No attention map at this step (turn on "capture attention" and generate).'
      : 'Attention maps are shown for merge and recover blocks.';
    container.append(p);
    return;
  }
  const colours = segmentColours();
  const qs = Math.round(Math.sqrt(att.q));
  const ks = Math.round(Math.sqrt(att.k));
  const qi = Math.min(Math.max(query ?? 0, 0), att.q - 1);
  const isMerge = att.kind === 'merge';

  const mk = (caption) => {
    const fig = document.createElement('figure');
    const c = document.createElement('canvas');
    c.width = 440; c.height = 440;
    const cap = document.createElement('figcaption');
    cap.textContent = caption;
    fig.append(c, cap);
    container.append(fig);
    return c;
  };
  const qCanvas = mk(`query: ${isMerge ? 'sparse' : 'dense'} token ${qi} (row ${Math.floor(qi / qs)}, col ${qi % qs}) — click or use the arrow keys to pick`);
  const kCanvas = mk(`attention over the ${att.k} ${isMerge ? 'dense' : 'sparse'} tokens (head average, brighter = more)${note}`);

  // query picker
  {
    const ctx = qCanvas.getContext('2d');
    const w = qCanvas.width;
    background(ctx, w, w, image, 0.7);
    gridLines(ctx, w, w, qs, 'rgba(255,255,255,0.35)');
    const cell = w / qs;
    const r = Math.floor(qi / qs), c = qi % qs;
    if (isMerge && block?.windows?.[qi]) {
      // the query's own pooling window on the dense grid
      const [r0, r1, c0, c1] = block.windows[qi];
      ctx.fillStyle = withAlpha(colours.middle, 0.25);
      ctx.fillRect((c0 * w) / n, (r0 * w) / n, ((c1 - c0) * w) / n, ((r1 - r0) * w) / n);
    }
    ctx.strokeStyle = colours.middle;
    ctx.lineWidth = 4;
    ctx.strokeRect(c * cell + 2, r * cell + 2, cell - 4, cell - 4);
    qCanvas.tabIndex = 0;
    qCanvas.setAttribute('role', 'slider');
    qCanvas.setAttribute('aria-label', 'query token');
    qCanvas.setAttribute('aria-valuemin', '0');
    qCanvas.setAttribute('aria-valuemax', String(att.q - 1));
    qCanvas.setAttribute('aria-valuenow', String(qi));
    qCanvas.addEventListener('click', (ev) => {
      const rect = qCanvas.getBoundingClientRect();
      const col = Math.floor(((ev.clientX - rect.left) / rect.width) * qs);
      const row = Math.floor(((ev.clientY - rect.top) / rect.height) * qs);
      onPick(Math.min(qs - 1, Math.max(0, row)) * qs + Math.min(qs - 1, Math.max(0, col)), true);
    });
    qCanvas.addEventListener('keydown', (ev) => {
      const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
      const m = moves[ev.key];
      if (!m) return;
      ev.preventDefault();
      const nr = Math.min(qs - 1, Math.max(0, r + m[0]));
      const nc = Math.min(qs - 1, Math.max(0, c + m[1]));
      onPick(nr * qs + nc, true);
    });
  }

  // heatmap of row qi
  {
    const ctx = kCanvas.getContext('2d');
    const w = kCanvas.width;
    background(ctx, w, w, image, 0.35);
    const row = att.probs.subarray(qi * att.k, (qi + 1) * att.k);
    let max = 0;
    for (const v of row) max = Math.max(max, v);
    const cell = w / ks;
    for (let j = 0; j < att.k; j++) {
      const a = max > 0 ? row[j] / max : 0;
      ctx.fillStyle = `rgba(255, ${Math.round(120 + 135 * a)}, ${Math.round(40 * a)}, ${0.08 + 0.8 * a})`;
      ctx.fillRect((j % ks) * cell, Math.floor(j / ks) * cell, cell, cell);
    }
    gridLines(ctx, w, w, ks, 'rgba(255,255,255,0.15)');
    if (!isMerge) {
      // the sparse token this dense query was upsampled from (nearest: floor(dst * s / n))
      const r = Math.floor(qi / qs), c = qi % qs;
      const sr = Math.floor((r * ks) / qs), sc = Math.floor((c * ks) / qs);
      ctx.strokeStyle = colours.middle;
      ctx.lineWidth = 3;
      ctx.setLineDash([6, 4]);
      ctx.strokeRect(sc * cell + 2, sr * cell + 2, cell - 4, cell - 4);
      ctx.setLineDash([]);
    }
  }
}

/**
 * A temporal block's attention sequences (video): left, frame k of clip 1 with every sequence's
 * cell (click or arrow keys pick one); right, the picked cell in each of the F frames — the F
 * tokens that one sequence attends over.
 */
export function renderTemporalSequences(container, { block, n, frameImages, frame, query, onPick }) {
  container.replaceChildren();
  const colours = segmentColours();
  const count = block.sequences;
  const qi = Math.min(Math.max(query ?? 0, 0), count - 1);
  const sparse = block.grid === 'sparse' && block.windows?.length;
  const cellOf = (p) => (sparse ? block.windows[p] : [Math.floor(p / n), Math.floor(p / n) + 1, p % n, (p % n) + 1]);
  const side = block.side;
  const [r0, r1, c0, c1] = cellOf(qi);

  const fig = document.createElement('figure');
  const picker = document.createElement('canvas');
  picker.width = 440; picker.height = 440;
  const cap = document.createElement('figcaption');
  const what = sparse ? `pooled cell ${qi} of ${side}×${side}` : `dense position ${qi} of ${side}×${side}`;
  cap.textContent = `${what} (row ${Math.floor(qi / side)}, col ${qi % side}) on frame ${frame + 1} — click or use the arrow keys to pick`;
  fig.append(picker, cap);
  {
    const ctx = picker.getContext('2d');
    const w = picker.width;
    background(ctx, w, w, frameImages[frame] ?? null, 0.7);
    gridLines(ctx, w, w, n, 'rgba(255,255,255,0.18)');
    ctx.fillStyle = colours.temporal;
    for (let p = 0; p < count; p++) {
      const [a0, a1, b0, b1] = cellOf(p);
      ctx.beginPath();
      ctx.arc((((b0 + b1) / 2) * w) / n, (((a0 + a1) / 2) * w) / n, Math.max(2, w / n / 8), 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.fillStyle = withAlpha(colours.temporal, 0.3);
    ctx.fillRect((c0 * w) / n, (r0 * w) / n, ((c1 - c0) * w) / n, ((r1 - r0) * w) / n);
    ctx.strokeStyle = colours.temporal;
    ctx.lineWidth = 4;
    ctx.strokeRect((c0 * w) / n + 2, (r0 * w) / n + 2, ((c1 - c0) * w) / n - 4, ((r1 - r0) * w) / n - 4);
    picker.tabIndex = 0;
    picker.setAttribute('role', 'slider');
    picker.setAttribute('aria-label', 'attention sequence (cell)');
    picker.setAttribute('aria-valuemin', '0');
    picker.setAttribute('aria-valuemax', String(count - 1));
    picker.setAttribute('aria-valuenow', String(qi));
    // the cell under a point: the sequence whose cell centre is nearest
    const nearest = (row, col) => {
      let best = 0, bestD = Infinity;
      for (let p = 0; p < count; p++) {
        const [a0, a1, b0, b1] = cellOf(p);
        const d = ((a0 + a1) / 2 - row) ** 2 + ((b0 + b1) / 2 - col) ** 2;
        if (d < bestD) { bestD = d; best = p; }
      }
      return best;
    };
    picker.addEventListener('click', (ev) => {
      const rect = picker.getBoundingClientRect();
      onPick(nearest(((ev.clientY - rect.top) / rect.height) * n, ((ev.clientX - rect.left) / rect.width) * n), true);
    });
    picker.addEventListener('keydown', (ev) => {
      const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
      const m = moves[ev.key];
      if (!m) return;
      ev.preventDefault();
      const r = Math.min(side - 1, Math.max(0, Math.floor(qi / side) + m[0]));
      const c = Math.min(side - 1, Math.max(0, (qi % side) + m[1]));
      onPick(r * side + c, true);
    });
  }

  const right = document.createElement('figure');
  const strip = document.createElement('div');
  strip.className = 'seq-frames';
  frameImages.forEach((img, j) => {
    const c = document.createElement('canvas');
    c.width = 96; c.height = 96;
    c.setAttribute('aria-label', `frame ${j + 1}`);
    const ctx = c.getContext('2d');
    background(ctx, 96, 96, img, j === frame ? 0.8 : 0.5);
    ctx.strokeStyle = colours.temporal;
    ctx.lineWidth = 3;
    ctx.strokeRect((c0 * 96) / n + 1.5, (r0 * 96) / n + 1.5, ((c1 - c0) * 96) / n - 3, ((r1 - r0) * 96) / n - 3);
    strip.append(c);
  });
  const cap2 = document.createElement('figcaption');
  cap2.textContent = `one attention sequence: this ${sparse ? 'pooled cell' : 'position'} in each of the ${frameImages.length} frames (${block.sequence_len} tokens). `
    + `The block runs ${block.sequences} such sequences per clip${sparse ? ` (s² = ${block.sequences} instead of n² = ${n * n})` : ''}.`;
  right.append(strip, cap2);
  container.append(fig, right);
}

/**
 * The MACs of a forward split by axis (video): one stacked bar per layout (`rows`: [{ label,
 * layout }]), spatial vs temporal blocks; `p` gets the shown grid's numbers as text and as
 * data-spatial / data-temporal / data-total (the first row's).
 */
export function renderAxisSplit(svg, p, rows) {
  const colours = segmentColours();
  svg.replaceChildren();
  const W = 640, barH = 18, gap = 6, labelW = 150;
  const H = rows.length * (barH + gap);
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const el = svgAppender(svg);
  const split = (layout) => {
    const of = (axis) => layout.filter((b) => b.axis === axis).reduce((a, b) => a + b.macs, 0);
    return { spatial: of('spatial'), temporal: of('temporal'), total: layout.reduce((a, b) => a + b.macs, 0) };
  };
  const max = Math.max(1, ...rows.map((r) => split(r.layout).total));
  const lines = [];
  rows.forEach((r, i) => {
    const m = split(r.layout);
    const y = i * (barH + gap);
    const ws = ((W - labelW) * m.spatial) / max, wt = ((W - labelW) * m.temporal) / max;
    el('text', { x: 0, y: y + 13, class: 'label' }, r.label);
    const rs = el('rect', { x: labelW, y, width: ws, height: barH, fill: colours.spatial });
    rs.append(Object.assign(document.createElementNS(SVG_NS, 'title'), { textContent: `spatial blocks: ${formatMacs(m.spatial)} MACs` }));
    const rt = el('rect', { x: labelW + ws, y, width: wt, height: barH, fill: colours.temporal });
    rt.append(Object.assign(document.createElementNS(SVG_NS, 'title'), { textContent: `temporal blocks: ${formatMacs(m.temporal)} MACs` }));
    const pct = (v) => (m.total > 0 ? ((100 * v) / m.total).toFixed(0) : '?');
    if (ws > 60) el('text', { x: labelW + 4, y: y + 13 }, `spatial ${pct(m.spatial)} %`);
    if (wt > 60) el('text', { x: labelW + ws + 4, y: y + 13 }, `temporal ${pct(m.temporal)} %`);
    lines.push(`${r.label}: spatial blocks ${formatMacs(m.spatial)} (${pct(m.spatial)} %) + temporal blocks ${formatMacs(m.temporal)} (${pct(m.temporal)} %) = ${formatMacs(m.total)} MACs per forward`);
    if (i === 0) {
      p.dataset.spatial = String(m.spatial);
      p.dataset.temporal = String(m.temporal);
      p.dataset.total = String(m.total);
    }
  });
  p.textContent = lines.join(' · ');
}

/** Bar chart (SVG) of MACs per block: s = n (no pruning) vs the shown sparse grid. */
export function renderMacsChart(svg, denseLayout, sparseLayout, { denseLabel, sparseLabel, axes = false }) {
  const colours = segmentColours();
  svg.replaceChildren();
  const W = 640, H = 220, left = 48, bottom = axes ? 44 : 34, top = 22, right = 8;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const count = sparseLayout.length;
  const max = Math.max(1, ...denseLayout.map((b) => b.macs), ...sparseLayout.map((b) => b.macs));
  const plotW = W - left - right, plotH = H - top - bottom;
  const slot = plotW / Math.max(count, 1);
  const bw = Math.min(22, slot * 0.38);
  const el = svgAppender(svg);
  // axis + ticks
  el('line', { x1: left, y1: top + plotH, x2: W - right, y2: top + plotH, stroke: colours.muted });
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4, y = top + plotH - (plotH * i) / 4;
    el('line', { x1: left - 3, y1: y, x2: W - right, y2: y, stroke: colours.muted, 'stroke-opacity': 0.2 });
    el('text', { x: left - 5, y: y + 3, 'text-anchor': 'end' }, formatMacs(v));
  }
  sparseLayout.forEach((b, i) => {
    const d = denseLayout[i] || b;
    const x0 = left + i * slot + slot / 2;
    const hd = (plotH * d.macs) / max, hs = (plotH * b.macs) / max;
    const r1 = el('rect', { x: x0 - bw - 1, y: top + plotH - hd, width: bw, height: hd, fill: colours.muted, 'fill-opacity': 0.45 });
    r1.append(Object.assign(document.createElementNS(SVG_NS, 'title'), { textContent: `block ${i} ${denseLabel}: ${formatMacs(d.macs)} MACs` }));
    const r2 = el('rect', { x: x0 + 1, y: top + plotH - hs, width: bw, height: hs, fill: colours[b.segment] || colours.dense });
    r2.append(Object.assign(document.createElementNS(SVG_NS, 'title'), { textContent: `block ${i} ${sparseLabel}: ${formatMacs(b.macs)} MACs` }));
    el('text', { x: x0, y: top + plotH + 12, 'text-anchor': 'middle' }, String(i));
    // The kind under each bar while there is room for it (an XL/2's 28 blocks: the bar's colour
    // says it instead).
    if (count <= 14) el('text', { x: x0, y: top + plotH + 24, 'text-anchor': 'middle' }, KIND_LABEL[b.kind] || b.kind);
    // video: the block's axis under it (S spatial, T temporal)
    if (axes && count <= 40) {
      el('text', { x: x0, y: top + plotH + (count <= 14 ? 36 : 24), 'text-anchor': 'middle', class: b.axis === 'temporal' ? 'temporal' : 'spatial' },
        b.axis === 'temporal' ? 'T' : 'S');
    }
  });
  const sum = (l) => l.reduce((a, b) => a + b.macs, 0);
  const ds = sum(denseLayout), ss = sum(sparseLayout);
  el('rect', { x: left + 4, y: 4, width: 10, height: 10, fill: colours.muted, 'fill-opacity': 0.45 });
  el('text', { x: left + 18, y: 13 }, `${denseLabel}: ${formatMacs(ds)} in all blocks`);
  el('rect', { x: left + 250, y: 4, width: 10, height: 10, fill: colours.middle });
  el('text', { x: left + 264, y: 13 }, `${sparseLabel}: ${formatMacs(ss)} (${ds > 0 ? ((100 * ss) / ds).toFixed(0) : '?'} %)`);
}
