// Drawing model outputs (Float32Array, N*C*H*W, values ~[-1, 1]) onto canvases.

const toByte = (v) => Math.max(0, Math.min(255, Math.round((v + 1) * 127.5)));

/** One image (index `i` of the batch) as ImageData: 1 channel -> grey, >= 3 -> first 3 as RGB. */
export function imageData(data, channels, size, i = 0) {
  const hw = size * size;
  const img = new ImageData(size, size);
  const base = i * channels * hw;
  for (let p = 0; p < hw; p++) {
    let r, g, b;
    if (channels >= 3) {
      r = toByte(data[base + p]); g = toByte(data[base + hw + p]); b = toByte(data[base + 2 * hw + p]);
    } else if (channels === 2) {
      r = toByte(data[base + p]); g = toByte(data[base + hw + p]); b = r;
    } else {
      r = g = b = toByte(data[base + p]);
    }
    img.data[4 * p] = r; img.data[4 * p + 1] = g; img.data[4 * p + 2] = b; img.data[4 * p + 3] = 255;
  }
  return img;
}

/** An offscreen canvas holding image `i` at its native size (for scaled drawImage). */
export function imageCanvas(data, channels, size, i = 0) {
  const c = document.createElement('canvas');
  c.width = size; c.height = size;
  c.getContext('2d').putImageData(imageData(data, channels, size, i), 0, 0);
  return c;
}

/**
 * Draws all `num` images side by side on `canvas` at native resolution; CSS (image-rendering:
 * pixelated) scales it up with nearest-neighbour sampling.
 */
export function drawBatch(canvas, data, channels, size, num) {
  drawRow(canvas, data, channels, size, Array.from({ length: num }, (_, i) => i));
}

/** Images `indices` of the batch side by side (1 px apart), at a display height of 256 px. */
function drawRow(canvas, data, channels, size, indices) {
  const num = indices.length;
  const gap = num > 1 ? 1 : 0;
  const w = num * size + (num - 1) * gap;
  if (canvas.width !== w || canvas.height !== size) {
    canvas.width = w; canvas.height = size;
    // keep the on-screen height, widen for several images
    canvas.style.width = `${Math.round((256 * w) / size)}px`;
    canvas.style.maxWidth = '100%';
  }
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, w, size);
  indices.forEach((img, i) => ctx.putImageData(imageData(data, channels, size, img), i * (size + gap), 0));
}

/**
 * Video: frame `k` of each of the `num` clips side by side. The data are clips (num, F, C, H, W)
 * flattened, so clip i's frame k is image i*F + k.
 */
export function drawClipFrame(canvas, data, channels, size, num, frames, k) {
  drawRow(canvas, data, channels, size, Array.from({ length: num }, (_, i) => i * frames + k));
}

/**
 * Video: every frame of every clip, one row per clip with its F frames left to right and no gap
 * (the layout of the CLI's `sample --out` for a video model), each frame shown `zoom` px wide.
 */
export function drawStrip(canvas, data, channels, size, num, frames, zoom = 64) {
  const w = frames * size, h = num * size;
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w; canvas.height = h;
    canvas.style.width = `${frames * zoom}px`;
    canvas.style.maxWidth = '100%';
  }
  const ctx = canvas.getContext('2d');
  for (let i = 0; i < num; i++) {
    for (let k = 0; k < frames; k++) ctx.putImageData(imageData(data, channels, size, i * frames + k), k * size, i * size);
  }
}

/** |a - b| of image 0, shown with a heat colour scale; returns the max abs difference. */
export function drawDiff(canvas, a, b, channels, size) {
  const hw = size * size;
  const img = new ImageData(size, size);
  let max = 0;
  const d = new Float32Array(hw);
  for (let p = 0; p < hw; p++) {
    let m = 0;
    for (let c = 0; c < channels; c++) m = Math.max(m, Math.abs(a[c * hw + p] - b[c * hw + p]));
    d[p] = m;
    max = Math.max(max, m);
  }
  for (let p = 0; p < hw; p++) {
    const [r, g, bl] = heat(d[p] / 2); // full scale = the whole [-1, 1] range
    img.data.set([r, g, bl, 255], 4 * p);
  }
  canvas.width = size; canvas.height = size;
  canvas.getContext('2d').putImageData(img, 0, 0);
  return max;
}

/** A perceptual-ish black -> red -> yellow -> white scale for x in [0, 1]. */
export function heat(x) {
  const t = Math.max(0, Math.min(1, x));
  const r = Math.round(255 * Math.min(1, t * 3));
  const g = Math.round(255 * Math.min(1, Math.max(0, t * 3 - 1)));
  const b = Math.round(255 * Math.min(1, Math.max(0, t * 3 - 2)));
  return [r, g, b];
}
