// The clip player of a video model (ModelInfo.frames set): the preview shows frame k of every
// clip, the frame sliders (under the preview and in the token view) pick k, Play loops the
// frames at 8 per second, and the strip shows every frame of every clip. All of it follows the
// shown step (live while the sampler runs, and the step scrubber), and is hidden for images.

import { $ } from './dom.js';
import { state } from './state.js';
import { drawClipFrame, drawStrip, drawBatch } from './render.js';
import { renderTokenView } from './tokenpanel.js';
import { shownPixels } from './run.js';

export const PLAY_FPS = 8;

/** Whether the loaded model is a video model. */
export function isVideo() {
  return state.info?.frames != null;
}

/** Frames per clip of the loaded model (1 for an image model). */
export function frameCount() {
  return isVideo() ? Number(state.info.frames) : 1;
}

/**
 * The shown picture on the preview (and, for a video model, the strip): `pix` is
 * `{ data, channels, size }` of a batch of images, clips flattened (num, F, C, H, W).
 */
export function drawPicture(run, pix) {
  if (!run.video) {
    drawBatch($('preview'), pix.data, pix.channels, pix.size, run.num);
    return;
  }
  const k = Math.min(state.frame, run.frames - 1);
  drawClipFrame($('preview'), pix.data, pix.channels, pix.size, run.num, run.frames, k);
  drawStrip($('strip'), pix.data, pix.channels, pix.size, run.num, run.frames);
  $('preview').dataset.frame = String(k);
}

/** A newly loaded model: the player for a video model, nothing of it for an image model. */
export function playerForModel(info) {
  stopPlaying();
  const video = info.frames != null;
  const f = video ? Number(info.frames) : 1;
  state.frame = 0;
  $('player').hidden = !video;
  $('token-frame-row').hidden = !video;
  $('legend-temporal').hidden = !video;
  $('teach-video').hidden = !video;
  $('blocks').classList.toggle('video', video);
  $('preview-hint').hidden = video;
  for (const id of ['frame', 'token-frame']) {
    const el = $(id);
    el.max = String(Math.max(0, f - 1));
    el.value = '0';
    el.disabled = !video;
  }
  const strip = $('strip');
  strip.width = f * info.input_size;
  strip.height = info.input_size;
  strip.style.width = `${f * 64}px`;
  strip.style.maxWidth = '100%';
  strip.getContext('2d').clearRect(0, 0, strip.width, strip.height);
  delete $('preview').dataset.frame;
  updateFrameLabels();
}

function updateFrameLabels() {
  const f = frameCount();
  const text = `frame ${state.frame + 1}/${f}`;
  $('frame-label').textContent = text;
  $('token-frame-label').textContent = `${text} of clip 1 under the token grids`;
  for (const id of ['frame', 'token-frame']) $(id).value = String(state.frame);
  $('frame').setAttribute('aria-valuetext', text);
  $('token-frame').setAttribute('aria-valuetext', text);
}

/** Shows frame `k` (wrapped into 0..F-1): labels, sliders, the preview and the token view. */
export function showFrame(k) {
  const f = frameCount();
  state.frame = ((Math.trunc(k) % f) + f) % f;
  updateFrameLabels();
  redrawFrame();
}

/** The preview and the token view for the current frame (the strip does not change). */
function redrawFrame() {
  const run = state.run;
  if (run?.video) {
    const pix = shownPixels();
    if (pix) {
      const k = Math.min(state.frame, run.frames - 1);
      drawClipFrame($('preview'), pix.data, pix.channels, pix.size, run.num, run.frames, k);
      $('preview').dataset.frame = String(k);
    }
  }
  renderTokenView();
}

export function togglePlay() {
  if (state.playing) stopPlaying();
  else startPlaying();
}

function startPlaying() {
  if (!isVideo() || state.playing) return;
  state.playing = true;
  state.playTimer = setInterval(() => showFrame(state.frame + 1), 1000 / PLAY_FPS);
  updatePlayButton();
}

export function stopPlaying() {
  if (state.playTimer != null) clearInterval(state.playTimer);
  state.playTimer = null;
  state.playing = false;
  updatePlayButton();
}

function updatePlayButton() {
  const b = $('play');
  b.textContent = state.playing ? '❚❚ Pause' : '▶ Play';
  b.setAttribute('aria-pressed', String(state.playing));
  b.dataset.playing = String(state.playing);
}
