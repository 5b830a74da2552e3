// Models straight from the Hugging Face Hub, converted in the page and kept in the Origin Private
// File System (OPFS).
//
// A DiT published in diffusers' layout (`facebook/DiT-XL-2-256`: transformer/config.json +
// transformer/diffusion_pytorch_model.safetensors) is downloaded once: every chunk of the
// safetensors body goes to the engine's worker (engine.push_convert_and_load): its converter
// (src/convert_stream.rs) makes the pack's bytes as soon as they can be, which go into the engine's
// streamed loader there (uploading each tensor when it completes) and come back to the page for an
// OPFS file. Each chunk is awaited before the next is read, so neither the 2.7 GB source nor the
// pack is ever held whole. The file is written under a temporary
// name and committed (renamed, then its record written) only after the converter has checked the
// source's size and sha256 against the Hub's and the loader has built the model; on any error
// both are deleted and nothing is kept.
//
// OPFS entries are keyed by (repo, revision, source sha256, pack type). Loading the same model again
// (the same preset, or a reload: the page's URL then says ?hf=repo@revision&pack=type) reads the
// pack from OPFS, checked against the size and sha256 recorded when it was written, without
// downloading the weights again (the Hub's tree listing is still asked, to notice a new revision;
// offline, the newest entry of that repo / revision / type is used). `?hub=<base URL>` points the
// page at another Hub (tests use a local stand-in).

import { Meter, streamInto, formatBytes } from './loader.js';

export const PRESETS = [
  { repo: 'facebook/DiT-XL-2-256', label: 'DiT-XL/2 256 × ImageNet' },
  { repo: 'facebook/DiT-XL-2-512', label: 'DiT-XL/2 512 × ImageNet' },
];
export const PACK_TYPES = ['q8_0', 'q4_0', 'f16'];

const params = new URLSearchParams(location.search);
/** The Hub's base URL: https://huggingface.co unless `?hub=` says otherwise (may be relative). */
export const HUB = new URL(params.get('hub') || 'https://huggingface.co', location.href).href.replace(/\/+$/, '');

const OPFS_DIR = 'sparsedit-hub';
const WEIGHTS = ['diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.fp16.safetensors'];
const PARTIAL = '.partial';
/**
 * The downloaded weights, kept in OPFS while they convert (`<repo>~<revision>~<sha256>` + this):
 * a reload or a closed tab resumes the download from there (replayed through a new converter,
 * then a ranged GET for the rest). Deleted once the pack is committed.
 */
const SOURCE_PARTIAL = '.safetensors.partial';
/** What the storage check leaves free beyond the pack (browsers round usage up). */
const QUOTA_MARGIN = 1.02;
/** Most f32 weight bytes the CPU engine takes (wasm32 memory is 4 GB; the model is built from copies). */
const CPU_PATH_MAX_F32 = 1024 * 1024 * 1024;

export const hasOpfs = () => !!(navigator.storage?.getDirectory) && window.isSecureContext;

/** "owner/name" or "owner/name@revision" -> { repo, revision }; throws on anything else. */
export function parseRepo(text) {
  const t = String(text || '').trim();
  const m = /^([A-Za-z0-9][\w.-]*\/[\w.-]+)(?:@([\w.\/-]+))?$/.exec(t);
  if (!m || m[1].includes('..') || (m[2] || '').includes('..')) {
    throw Object.assign(new Error(`"${t}" is not a Hub repo id (owner/name, optionally @revision)`), { kind: 'invalid_argument' });
  }
  return { repo: m[1], revision: m[2] || 'main' };
}

/** A model source for model.js's load(): the Hub repo, converted to `quant`. */
export function hubSource(repo, revision, quant) {
  if (!PACK_TYPES.includes(quant) && quant !== 'f32') throw new Error(`pack type ${quant} is not one of ${PACK_TYPES.join(', ')}`);
  return { kind: 'hub', repo, revision, quant, label: `${repo}@${revision} (${quant})` };
}

/** The ?hf=…&pack=… part of the page's URL for a Hub source (a reload loads it again, from OPFS). */
export function rememberInUrl(source) {
  const u = new URL(location.href);
  u.searchParams.delete('model');
  u.searchParams.set('hf', source.revision === 'main' ? source.repo : `${source.repo}@${source.revision}`);
  u.searchParams.set('pack', source.quant);
  history.replaceState(null, '', u.href);
}

/** The Hub source the page's URL asks for (?hf=repo[@rev]&pack=type), or null. */
export function sourceFromUrl() {
  const hf = params.get('hf');
  if (!hf) return null;
  const { repo, revision } = parseRepo(hf);
  return hubSource(repo, revision, params.get('pack') || 'q8_0');
}

// ---------------------------------------------------------------- OPFS

async function opfsDir() {
  if (!hasOpfs()) throw new Error('this browser has no Origin Private File System (navigator.storage.getDirectory): the converted pack cannot be kept');
  const root = await navigator.storage.getDirectory();
  return root.getDirectoryHandle(OPFS_DIR, { create: true });
}

const safe = (s) => String(s).replace(/\//g, '--').replace(/[^A-Za-z0-9._-]/g, '_');

/** The OPFS file name of an entry (without extension). */
function entryKey({ repo, revision, sha256, quant }) {
  return `${safe(repo)}~${safe(revision)}~${safe(sha256)}~${quant}`;
}

/** Every committed entry: its record plus the pack file's size, newest first. */
export async function listEntries() {
  if (!hasOpfs()) return [];
  const dir = await opfsDir();
  const files = new Map();
  for await (const [name, handle] of dir.entries()) if (handle.kind === 'file') files.set(name, handle);
  const out = [];
  for (const [name, handle] of files) {
    if (!name.endsWith('.json')) continue;
    const key = name.slice(0, -5);
    const pack = files.get(`${key}.gguf`);
    if (!pack) continue; // a record without its pack: not committed
    try {
      const rec = JSON.parse(await (await handle.getFile()).text());
      const size = (await pack.getFile()).size;
      out.push({ ...rec, key, size });
    } catch { /* an unreadable record is not an entry */ }
  }
  return out.sort((a, b) => (b.created || 0) - (a.created || 0));
}

/** Deletes an entry's pack and record (and a temporary file of it). */
export async function deleteEntry(key) {
  const dir = await opfsDir();
  for (const name of [`${key}.json`, `${key}.gguf`, `${key}.gguf${PARTIAL}`]) {
    await dir.removeEntry(name).catch(() => {});
  }
}

/**
 * Half-written packs left by a conversion that never finished (a closed tab): none runs at start.
 * (A kept download stays: the next load of that model resumes it.)
 */
export async function dropPartials() {
  if (!hasOpfs()) return;
  const dir = await opfsDir();
  const names = [];
  for await (const [name] of dir.entries()) if (name.endsWith(`.gguf${PARTIAL}`)) names.push(name);
  for (const n of names) await dir.removeEntry(n).catch(() => {});
}

/** The OPFS name of a download kept to resume (one per file of the Hub, whatever the pack type). */
function sourceName({ repo, revision }, sha256) {
  return `${safe(repo)}~${safe(revision)}~${safe(sha256)}${SOURCE_PARTIAL}`;
}

/** Downloads kept to resume: [{ name, label, size }]. */
export async function listUnfinished() {
  if (!hasOpfs()) return [];
  const dir = await opfsDir();
  const out = [];
  for await (const [name, handle] of dir.entries()) {
    if (handle.kind !== 'file' || !name.endsWith(SOURCE_PARTIAL)) continue;
    const [repo, revision] = name.slice(0, -SOURCE_PARTIAL.length).split('~');
    const size = await handle.getFile().then((f) => f.size, () => NaN);
    out.push({ name, label: `${repo.replace('--', '/')}@${revision}`, size });
  }
  return out;
}

/** Deletes a kept download. */
export async function deleteUnfinished(name) {
  if (!name.endsWith(SOURCE_PARTIAL)) throw new Error(`${name} is not a kept download`);
  await (await opfsDir()).removeEntry(name).catch(() => {});
}

/** The OPFS file `name`, or null. */
async function fileOrNull(dir, name) {
  try {
    return await (await dir.getFileHandle(name)).getFile();
  } catch {
    return null;
  }
}

async function findEntry({ repo, revision, quant, sha256 }) {
  const all = await listEntries();
  return all.find((e) => e.repo === repo && e.revision === revision && e.quant === quant && (sha256 == null || e.sha256 === sha256)) || null;
}

// ---------------------------------------------------------------- the Hub

async function hubFetch(url, what, signal) {
  let resp;
  try {
    resp = await fetch(url, { signal, credentials: 'omit', cache: 'no-cache' });
  } catch (err) {
    if (err?.name === 'AbortError') throw err;
    throw Object.assign(new Error(`could not reach the Hub for ${what} (${url}): ${err?.message || err}`), { offline: true });
  }
  if (!resp.ok) {
    const why = resp.status === 401 || resp.status === 403 ? ' (a gated or private repo needs a login this page does not do)' : resp.status === 404 ? ' (no such repo, revision or file)' : '';
    throw new Error(`the Hub answered HTTP ${resp.status} for ${what}${why}`);
  }
  return resp;
}

/**
 * What converting `source` takes, from the Hub's tree listing and the transformer's config.json:
 * { weightsUrl, file, size, sha256, configText, plan: { pack_bytes, tensor_bytes, params, arch, … } }.
 */
export async function inspect(engine, source, signal) {
  const { repo, revision, quant } = source;
  const rev = encodeURIComponent(revision);
  const treeUrl = `${HUB}/api/models/${repo}/tree/${rev}/transformer`;
  const tree = await (await hubFetch(treeUrl, `the file list of ${repo}@${revision}`, signal)).json().catch(() => null);
  if (!Array.isArray(tree)) throw new Error(`the Hub's file list of ${repo}@${revision}/transformer is not a list`);
  const files = new Map(tree.filter((e) => e && e.type === 'file').map((e) => [String(e.path).split('/').pop(), e]));
  const name = WEIGHTS.find((w) => files.has(w));
  if (!name || !files.has('config.json')) {
    throw new Error(`${repo}@${revision} has no transformer/config.json + transformer/${WEIGHTS[0]} (a diffusers DiTTransformer2DModel is needed)`);
  }
  const entry = files.get(name);
  const size = Number(entry.lfs?.size ?? entry.size);
  const oid = entry.lfs?.oid ?? entry.lfs?.sha256;
  const sha256 = typeof oid === 'string' && /^[0-9a-f]{64}$/i.test(oid) ? oid.toLowerCase() : null;
  if (!Number.isSafeInteger(size) || size <= 0) throw new Error(`the Hub's file list gives no size for transformer/${name}`);
  const configText = await (await hubFetch(`${HUB}/${repo}/resolve/${rev}/transformer/config.json`, `${repo}'s transformer/config.json`, signal)).text();
  const plan = await engine.plan_diffusers_pack(configText, quant, repo);
  return { weightsUrl: `${HUB}/${repo}/resolve/${rev}/transformer/${name}`, file: name, size, sha256, configText, plan };
}

/** navigator.storage.estimate() against `need` bytes: { ok, free, quota, usage }. */
async function storageCheck(need) {
  const est = await navigator.storage?.estimate?.().catch(() => null);
  if (!est || !Number.isFinite(est.quota)) return { ok: true, free: NaN, quota: NaN, usage: NaN };
  const usage = est.usage || 0;
  const free = Math.max(est.quota - usage, 0);
  return { ok: need * QUOTA_MARGIN <= free, free, quota: est.quota, usage };
}

/**
 * Whether a planned pack fits this device, before anything is downloaded: its largest weight
 * against the adapter's buffer limits (`limits` from engine.gpu_limits(), null on the CPU path),
 * all its weights against the memory the device reports (`deviceMemory`, GB, as
 * navigator.deviceMemory: rounded down, at most 8 in Chromium). Returns { problem?, warning? }:
 * a problem stops the download, a warning is said.
 */
export function deviceFit(plan, quant, limits, deviceMemory) {
  const out = {};
  if (limits) {
    const cap = Math.min(limits.max_buffer_size, limits.max_storage_buffer_binding_size);
    if (plan.largest_tensor_bytes > cap) {
      const smaller = quant === 'f32' || quant === 'f16' ? ' Choose q8_0 or q4_0: their weights are 2-4x smaller.' : '';
      out.problem = `this WebGPU adapter cannot hold the model: its largest weight takes ${formatBytes(plan.largest_tensor_bytes)} as ${quant}, ` +
        `the adapter's largest buffer is ${formatBytes(cap)}.${smaller} Nothing was downloaded.`;
      return out;
    }
  }
  if (Number.isFinite(deviceMemory) && deviceMemory > 0 && plan.tensor_bytes > 0.5 * deviceMemory * 2 ** 30) {
    out.warning = `this device reports ${deviceMemory} GB of memory and the weights alone take ${formatBytes(plan.tensor_bytes)} as ${quant}: ` +
      'it may not fit (a smaller pack type needs less)';
  }
  return out;
}

/** The plan as one line: what is downloaded, what is kept, what the GPU holds. */
export function describePlan(meta, source, backend) {
  const p = meta.plan;
  const where = backend === 'webgpu'
    ? `GPU memory for the weights ≈ ${formatBytes(p.tensor_bytes)}`
    : `CPU path: the weights take ≈ ${formatBytes(p.params * 4)} of wasm memory as f32`;
  return `${source.repo}@${source.revision}: download ${formatBytes(meta.size)} (transformer/${meta.file}` +
    `${meta.sha256 ? `, sha256 ${meta.sha256.slice(0, 12)}…` : ', no sha256 from the Hub'}) → ` +
    `keep a ${source.quant} pack of ${formatBytes(p.pack_bytes)} in this browser (OPFS) · ${where} · ` +
    `${p.arch}, ${(p.params / 1e6).toFixed(1)} M parameters, ${p.input_size}×${p.input_size} latent, ${p.num_classes} classes`;
}

// ---------------------------------------------------------------- loading

/** Tries to pick a broken-off download up again, and the pause before try k. */
const RESUME_TRIES = 5;
const resumePause = (k) => new Promise((r) => setTimeout(r, 250 * k));

/**
 * The bytes of `url` (`total` of them) from byte `start` on, as chunks, from the response `first`
 * (a whole-file GET, or a ranged one from `start`). A connection that
 * breaks off (a network error, or an end before `total` bytes) is picked up where it stopped with
 * a ranged GET (`Range: bytes=<received>-`, answered 206 from that byte), up to RESUME_TRIES
 * times: the converter in the engine holds its state, so it simply goes on.
 */
async function* resumableBody(first, url, total, signal, start = 0) {
  let resp = first, received = start;
  for (let tries = 0; ; ) {
    const reader = resp.body.getReader();
    let why = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        received += value.byteLength;
        yield value;
      }
    } catch (err) {
      if (err?.name === 'AbortError' || signal?.aborted) throw err;
      why = err;
    } finally {
      reader.releaseLock();
      if (why || received < total) resp.body.cancel().catch(() => {});
    }
    if (received >= total) return;
    tries += 1;
    const what = `the download of ${url} broke off at byte ${received} of ${total}${why ? ` (${why?.message || why})` : ''}`;
    if (tries > RESUME_TRIES) throw new Error(`${what}; ${RESUME_TRIES} tries to resume it failed`);
    await resumePause(tries);
    try {
      resp = await fetch(url, { signal, credentials: 'omit', cache: 'no-store', headers: { Range: `bytes=${received}-` } });
    } catch (err) {
      if (err?.name === 'AbortError') throw err;
      continue; // the next try
    }
    const range = resp.headers.get('content-range') || '';
    if (resp.status !== 206 || !range.startsWith(`bytes ${received}-`) || !resp.body) {
      throw new Error(`${what}, and the server cannot resume it (HTTP ${resp.status}${range ? `, ${range}` : ''})`);
    }
    console.info(`resumed ${url} at byte ${received} (try ${tries})`);
  }
}

/**
 * Loads a Hub source into `engine`: from OPFS when converted before, else downloaded, converted
 * and kept. `onPlan(text)` shows what will happen (before any download); `onProgress` as
 * loader.js. Resolves to { info, from: 'opfs' | 'hub' }.
 */
export async function loadHub(engine, source, { onProgress, onPlan, signal } = {}) {
  let meta = null;
  let offline = null;
  try {
    meta = await inspect(engine, source, signal);
  } catch (err) {
    // Offline (the Hub unreachable): a pack converted before still loads. Any other answer
    // (no such repo, not a DiT) is the error to show.
    if (err?.name === 'AbortError' || !err?.offline) throw err;
    offline = err;
  }
  const key = meta && entryKey({ ...source, sha256: meta.sha256 || `size${meta.size}` });
  const entry = hasOpfs()
    ? await findEntry({ ...source, sha256: meta ? (meta.sha256 || `size${meta.size}`) : null })
    : null;
  if (entry) {
    onPlan?.(`${source.repo}@${source.revision} (${source.quant}): loading the converted pack kept in this browser (OPFS, ${formatBytes(entry.size)})${offline ? ' — the Hub is unreachable, so the newest one is used' : ''}`);
    try {
      const dir = await opfsDir();
      const file = await (await dir.getFileHandle(`${entry.key}.gguf`)).getFile();
      const meter = new Meter(file.size, 'opfs', onProgress);
      const info = await streamInto(engine, file.stream(), { size: entry.pack_bytes, sha256: entry.pack_sha256, meter, signal });
      return { info, from: 'opfs' };
    } catch (err) {
      if (err?.name === 'AbortError') throw err;
      console.warn('the OPFS pack failed its check; it is deleted and converted again:', err);
      await deleteEntry(entry.key);
      if (!meta) throw err;
    }
  }
  if (!meta) throw offline;
  onPlan?.(describePlan(meta, source, engine.backend()));

  // The CPU path keeps every weight as f32 in wasm memory (4 GB at most, with copies while the
  // model is built): refuse before downloading what it could never hold.
  if (engine.backend() !== 'webgpu' && meta.plan.params * 4 > CPU_PATH_MAX_F32) {
    const msg = `the CPU engine cannot hold this model: its ${(meta.plan.params / 1e6).toFixed(0)} M weights take ${formatBytes(meta.plan.params * 4)} as f32 in wasm memory ` +
      `(at most ${formatBytes(CPU_PATH_MAX_F32)} here). Use a browser with WebGPU; nothing was downloaded.`;
    onPlan?.(`${describePlan(meta, source, engine.backend())} — ${msg}`, 'error');
    throw Object.assign(new Error(msg), { kind: 'invalid_argument' });
  }

  // Does it fit this device? (Nothing is downloaded when it cannot.)
  const fit = deviceFit(meta.plan, source.quant, engine.gpu_limits?.() ?? null, navigator.deviceMemory);
  if (fit.problem) {
    onPlan?.(`${describePlan(meta, source, engine.backend())} — ${fit.problem}`, 'error');
    throw Object.assign(new Error(fit.problem), { kind: 'invalid_argument' });
  }
  if (fit.warning) onPlan?.(`${describePlan(meta, source, engine.backend())} — ${fit.warning}`);

  // Room for the pack? (Nothing is downloaded when there is not.)
  const room = await storageCheck(meta.plan.pack_bytes);
  if (!room.ok) {
    const msg = `not enough storage for this pack: it needs ${formatBytes(meta.plan.pack_bytes)}, this browser grants the page ${formatBytes(room.free)} more ` +
      `(quota ${formatBytes(room.quota)}, ${formatBytes(room.usage)} used). Delete kept packs below or free disk space; nothing was downloaded.`;
    onPlan?.(`${describePlan(meta, source, engine.backend())} — ${msg}`, 'error');
    throw Object.assign(new Error(msg), { kind: 'quota' });
  }
  const persisted = await navigator.storage?.persist?.().catch(() => false);
  if (!persisted) console.info('persistent storage not granted: the browser may evict the kept pack under storage pressure');

  const dir = await opfsDir();
  const partialName = `${key}.gguf${PARTIAL}`;
  await deleteEntry(key);

  // A download of this very file (the Hub's sha256) that a reload or a closed tab cut off: its
  // bytes go through the converter again from OPFS, the rest comes with a ranged GET. Without a
  // sha256 from the Hub nothing ties kept bytes to the file: no keeping, no resuming.
  const keepName = meta.sha256 ? sourceName(source, meta.sha256) : null;
  const keptFile = keepName ? await fileOrNull(dir, keepName) : null;
  let resumeAt = keptFile ? Math.min(keptFile.size, meta.size) : 0;
  // Keep the download only where the storage holds it beside the pack.
  const keep = !!keepName && (await storageCheck(meta.plan.pack_bytes + meta.size - resumeAt)).ok;
  if (keepName && !keep) console.info('not enough storage to keep the download beside the pack: a reload would start it again');

  const handle = await dir.getFileHandle(partialName, { create: true });
  const writable = await handle.createWritable();
  const abort = new AbortController();
  const onAbort = () => abort.abort();
  signal?.addEventListener('abort', onAbort);
  let done = false;
  let sourceBad = false; // the converter refused the bytes: the kept download is not worth keeping
  try {
    let resp = null;
    if (resumeAt > 0 && resumeAt < meta.size) {
      resp = await fetch(meta.weightsUrl, { signal: abort.signal, credentials: 'omit', cache: 'no-store', headers: { Range: `bytes=${resumeAt}-` } })
        .catch((err) => { if (err?.name === 'AbortError') throw err; return null; });
      const range = resp?.headers.get('content-range') || '';
      if (!resp || resp.status !== 206 || !range.startsWith(`bytes ${resumeAt}-`) || !resp.body) {
        console.info(`the Hub did not answer a ranged GET from byte ${resumeAt} (HTTP ${resp?.status}): the download starts again`);
        resp?.body?.cancel().catch(() => {});
        resp = null;
        resumeAt = 0;
      }
    }
    if (!resp && resumeAt < meta.size) {
      try {
        resp = await fetch(meta.weightsUrl, { signal: abort.signal, credentials: 'omit' });
      } catch (err) {
        if (err?.name === 'AbortError') throw err;
        throw new Error(`could not download ${meta.weightsUrl}: ${err?.message || err}`);
      }
      if (!resp.ok || !resp.body) throw new Error(`could not download ${meta.weightsUrl}: HTTP ${resp.status}`);
    }
    await engine.begin_convert(meta.configText, source.quant, meta.size, meta.sha256 || undefined, source.repo);
    await engine.begin_load(undefined, undefined);
    const meter = new Meter(meta.size, 'hub', onProgress);
    let checkedRoom = false;
    const convert = async (value) => {
      const bytes = value.byteLength; // (the chunk is transferred to the worker)
      let r;
      try {
        r = await engine.push_convert_and_load(value);
      } catch (err) {
        sourceBad = true;
        throw err;
      }
      if (r.out.length) await writable.write(r.out);
      if (r.kept_error) console.warn(`the download is no longer kept to resume: ${r.kept_error}`);
      if (!checkedRoom && r.pack_size != null) {
        // the exact size, now the checkpoint's header is in
        checkedRoom = true;
        const exact = r.pack_size;
        if (exact > meta.plan.pack_bytes * QUOTA_MARGIN && !(await storageCheck(exact - meta.plan.pack_bytes)).ok) {
          throw Object.assign(new Error(`not enough storage: the pack takes ${formatBytes(exact)}`), { kind: 'quota' });
        }
      }
      meter.add(bytes);
    };
    if (resumeAt > 0) {
      // the kept bytes first, as they came from the network before
      onPlan?.(`${describePlan(meta, source, engine.backend())} — resuming: ${formatBytes(resumeAt)} already downloaded (kept in this browser)`);
      const reader = keptFile.slice(0, resumeAt).stream().getReader();
      for (;;) {
        if (signal?.aborted) throw new DOMException('load cancelled', 'AbortError');
        const { value, done: end } = await reader.read();
        if (end) break;
        await convert(value);
      }
      console.info(`resumed ${meta.weightsUrl}: ${resumeAt} bytes from OPFS, the rest from byte ${resumeAt}`);
    }
    if (keep) {
      await engine.keep_source(OPFS_DIR, keepName, resumeAt)
        .catch((err) => console.warn(`the download cannot be kept to resume (${err?.message || err})`));
    }
    if (resp) {
      for await (const value of resumableBody(resp, meta.weightsUrl, meta.size, abort.signal, resumeAt)) {
        if (signal?.aborted) throw new DOMException('load cancelled', 'AbortError');
        await convert(value);
      }
    }
    meter.emit();
    let conv;
    try {
      conv = await engine.finish_convert(); // the source's size and sha256
    } catch (err) {
      sourceBad = true;
      throw err;
    }
    const info = await engine.finish_load(); // the pack's tensors, the model
    info.source_sha256 = conv.source_sha256;
    info.resumed_from = resumeAt;
    // the download is converted: it is no longer worth keeping
    if (keepName) {
      await engine.release_source().catch(() => {});
      await dir.removeEntry(keepName).catch(() => {});
    }
    // Commit: the pack under its name, then its record (an entry exists once both do). The model
    // is loaded whatever happens here: a failure only means it is not kept.
    done = true;
    try {
      await writable.close();
      if (typeof handle.move === 'function') {
        await handle.move(`${key}.gguf`);
      } else {
        const w = await (await dir.getFileHandle(`${key}.gguf`, { create: true })).createWritable();
        await (await handle.getFile()).stream().pipeTo(w);
        await dir.removeEntry(partialName);
      }
      const record = {
        repo: source.repo, revision: source.revision, quant: source.quant, sha256: meta.sha256 || `size${meta.size}`,
        file: meta.file, source_bytes: conv.source_bytes, source_sha256: conv.source_sha256,
        pack_bytes: info.bytes, pack_sha256: info.sha256, arch: info.arch, created: Date.now(),
      };
      const rw = await (await dir.getFileHandle(`${key}.json`, { create: true })).createWritable();
      await rw.write(JSON.stringify(record));
      await rw.close();
    } catch (err) {
      info.cacheError = `${err?.name === 'QuotaExceededError' ? 'storage quota exceeded' : err?.message || err}`;
      await deleteEntry(key);
    }
    return { info, from: 'hub' };
  } catch (err) {
    abort.abort();
    if (!done) {
      await engine.abort_convert().catch(() => { /* engine gone */ });
      await writable.abort().catch(() => {});
    }
    // A download cut off (the network, a cancel) stays kept for the next try; bytes the
    // converter refused (a wrong sha256, a broken file) do not.
    if (keepName) {
      await engine.release_source().catch(() => {});
      if (sourceBad) await dir.removeEntry(keepName).catch(() => {});
    }
    await deleteEntry(key);
    throw err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

// ---------------------------------------------------------------- latent decoders from the Hub


async function sha256Hex(bytes) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** bytes [a, b] of `url` (a ranged GET; the Hub's resolve URL redirects to its CDN). */
async function fetchRange(url, a, b, what, signal) {
  const resp = await fetch(url, { signal, credentials: 'omit', cache: 'no-cache', headers: { Range: `bytes=${a}-${b}` } });
  if (resp.status !== 206) throw new Error(`the Hub answered HTTP ${resp.status} to a ranged request for ${what}: it must serve byte ranges`);
  const buf = new Uint8Array(await resp.arrayBuffer());
  if (buf.length !== b - a + 1) throw new Error(`${what}: ${buf.length} bytes came for a range of ${b - a + 1}`);
  return buf;
}

/**
 * Only the decoder's tensors of a diffusers AutoencoderKL's safetensors, fetched with HTTP ranges
 * from the header's offsets (the encoder, half the file, is never downloaded), re-assembled as a
 * safetensors file of those tensors. `size` is the file's size from the tree listing.
 */
async function fetchDecoderTensors(url, size, signal) {
  const head = await fetchRange(url, 0, 7, 'the safetensors header length', signal);
  const n = Number(new DataView(head.buffer).getBigUint64(0, true));
  if (!(n > 1 && n < 100 * 2 ** 20 && 8 + n <= size)) throw new Error(`the safetensors header length ${n} does not fit a file of ${size} bytes`);
  const header = JSON.parse(new TextDecoder().decode(await fetchRange(url, 8, 8 + n - 1, 'the safetensors header', signal)));
  const keep = Object.entries(header).filter(([k]) => k.startsWith('decoder.') || k.startsWith('post_quant_conv.'))
    .map(([k, v]) => ({ k, v, a: v.data_offsets[0], b: v.data_offsets[1] })).sort((x, y) => x.a - y.a);
  if (keep.length === 0) throw new Error('no decoder.* tensors in this autoencoder');
  // Adjacent tensors share one request.
  const spans = [];
  for (const t of keep) {
    const last = spans[spans.length - 1];
    if (last && last.b === t.a) last.b = t.b; else spans.push({ a: t.a, b: t.b });
  }
  const chunks = [];
  for (const s of spans) chunks.push({ ...s, bytes: await fetchRange(url, 8 + n + s.a, 8 + n + s.b - 1, 'decoder tensors', signal) });
  // The new file: the kept tensors, back to back.
  const out = {};
  let at = 0;
  for (const t of keep) {
    out[t.k] = { dtype: t.v.dtype, shape: t.v.shape, data_offsets: [at, at + (t.b - t.a)] };
    at += t.b - t.a;
  }
  let json = JSON.stringify(out);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const hj = new TextEncoder().encode(json);
  const file = new Uint8Array(8 + hj.length + at);
  new DataView(file.buffer).setBigUint64(0, BigInt(hj.length), true);
  file.set(hj, 8);
  let pos = 8 + hj.length;
  for (const t of keep) {
    const c = chunks.find((s) => s.a <= t.a && t.b <= s.b);
    file.set(c.bytes.subarray(t.a - c.a, t.b - c.a), pos);
    pos += t.b - t.a;
  }
  return { file, fetched: chunks.reduce((s, c) => s + c.bytes.length, 0) + 8 + n };
}

/**
 * A latent decoder straight from the Hub (diffusers `AutoencoderTiny` or `AutoencoderKL` at the
 * repo root), as a decoder pack (Uint8Array) for engine.load_decoder: TAESD is downloaded whole and
 * checked against the Hub's sha256; of an SD-VAE only the decoder's tensors are fetched (ranges),
 * so no whole-file hash applies there. Resolves to { pack, fetched, size, klass }.
 */
export async function fetchHubDecoder(engine, repo, revision = 'main', quant = 'f16', signal) {
  const rev = encodeURIComponent(revision);
  const configText = await (await hubFetch(`${HUB}/${repo}/resolve/${rev}/config.json`, `${repo}'s config.json`, signal)).text();
  let klass;
  try { klass = JSON.parse(configText)._class_name; } catch { klass = null; }
  if (klass !== 'AutoencoderTiny' && klass !== 'AutoencoderKL') {
    throw new Error(`${repo} is a ${klass || 'model without a class name'}, not a latent decoder (AutoencoderTiny or AutoencoderKL)`);
  }
  const tree = await (await hubFetch(`${HUB}/api/models/${repo}/tree/${rev}`, `the file list of ${repo}@${revision}`, signal)).json().catch(() => null);
  const entry = Array.isArray(tree) ? tree.find((e) => e && e.type === 'file' && e.path === WEIGHTS[0]) : null;
  if (!entry) throw new Error(`${repo}@${revision} has no ${WEIGHTS[0]} at its root`);
  const size = Number(entry.lfs?.size ?? entry.size);
  const url = `${HUB}/${repo}/resolve/${rev}/${WEIGHTS[0]}`;
  let file, fetched;
  if (klass === 'AutoencoderTiny') {
    file = new Uint8Array(await (await hubFetch(url, `${repo}/${WEIGHTS[0]}`, signal)).arrayBuffer());
    fetched = file.length;
    const want = entry.lfs?.oid;
    if (typeof want === 'string' && /^[0-9a-f]{64}$/i.test(want) && (await sha256Hex(file)) !== want.toLowerCase()) {
      throw new Error(`${repo}/${WEIGHTS[0]}: its sha256 differs from the Hub's: nothing was loaded`);
    }
  } else {
    ({ file, fetched } = await fetchDecoderTensors(url, size, signal));
  }
  const pack = await engine.decoder_pack_from_diffusers(file, configText, quant, repo);
  return { pack, fetched, size, klass };
}
