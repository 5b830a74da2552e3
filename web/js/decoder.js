// The latent decoder (TAESD / SD-VAE pack): loading it into the engine from a URL or a file,
// unloading it, putting it back into a restarted engine, and its info line.

import { $ } from './dom.js';
import { state } from './state.js';
import { engineError } from './errors.js';

const NO_DECODER = "no decoder: a latent model's output is drawn as its first three channels";

/**
 * Loads a TAESD / SD-VAE pack (URL or File) into the engine; the bytes are kept for engine
 * restarts. Small packs only: the bytes are held whole (TAESD is ~2.5 MB as f16).
 */
export async function loadDecoder(source) {
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
    const info = await state.engine.load_decoder(bytes, undefined);
    state.decoder = { bytes, info, label };
    showDecoderInfo(info);
  } catch (err) {
    await engineError(err, `loading the latent decoder ${label}`);
  }
}

/**
 * A latent decoder from the Hugging Face Hub (hub.js fetchHubDecoder: TAESD whole, an SD-VAE's
 * decoder tensors only), loaded as a pack.
 */
export async function loadHubDecoder(repo) {
  if (!state.engine || state.generating) return;
  $('decoder-info').textContent = `fetching the decoder of ${repo} from the Hub…`;
  try {
    const { fetchHubDecoder } = await import('./hub.js');
    const { pack, fetched, size } = await fetchHubDecoder(state.engine, repo);
    const info = await state.engine.load_decoder(pack, undefined);
    state.decoder = { bytes: pack, info, label: `${repo} (Hub)` };
    state.decoder.fetched = { bytes: fetched, of: size };
    showDecoderInfo(info);
  } catch (err) {
    showDecoderInfo(state.decoder?.info ?? null);
    await engineError(err, `loading the latent decoder ${repo} from the Hub`);
  }
}

/** Drops the decoder: results are latents again. */
export async function unloadDecoder() {
  if (!state.decoder || state.generating) return;
  state.decoder = null;
  showDecoderInfo(null);
  try {
    await state.engine?.unload_decoder();
  } catch (err) {
    await engineError(err, 'unloading the latent decoder');
  }
}

/** A new engine (device loss, backend switch) gets the decoder back from its bytes. */
export async function reloadDecoder() {
  if (!state.decoder) return;
  try {
    state.decoder.info = await state.engine.load_decoder(state.decoder.bytes, state.decoder.info.sha256);
    showDecoderInfo(state.decoder.info);
  } catch (err) {
    await engineError(err, 'reloading the latent decoder');
  }
}

function showDecoderInfo(info) {
  const el = $('decoder-info');
  if (!info) {
    el.textContent = NO_DECODER;
    delete el.dataset.arch;
    return;
  }
  el.textContent = `${info.arch} · ${info.latent_channels} latent channels → ×${info.upscale} · ` +
    `${(info.params / 1e6).toFixed(2)} M parameters · runs on ${info.backend === 'webgpu' ? 'WebGPU' : 'the CPU'}` +
    (info.gpu_bytes != null ? ` (${(info.gpu_bytes / 1e6).toFixed(1)} MB of weights${info.f16_weights > 0 ? ', f16 kept as f16' : ''})` : '');
  el.dataset.arch = info.arch;
}
