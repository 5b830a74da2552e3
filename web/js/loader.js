// Model loading: manifest, streamed download into the engine, progress, Cache API. (Models from
// the Hugging Face Hub, converted in the page and kept in OPFS: hub.js, through streamInto here.)
//
// The weights are never held as one ArrayBuffer: every chunk of the response body goes straight
// into engine.push(), which parses and hashes as it goes (in the engine's worker; each push is
// awaited, so no more than one chunk is in flight and memory stays bounded). The engine checks size and SHA-256 in
// finish_load(). A second branch of the body (tee) is written into a *pending* cache and promoted
// to the real cache only after finish_load() succeeded, so a corrupt, truncated or mismatched file
// is never served from the cache.

export const CACHE_NAME = 'sparsedit-models-v1';
export const PENDING_CACHE = 'sparsedit-models-pending-v1';
const SHA_HEADER = 'x-sparsedit-sha256';
const SIZE_HEADER = 'x-sparsedit-size';

const hasCaches = () => typeof caches !== 'undefined' && window.isSecureContext;

/** Reads the manifest; every model gets an absolute `url` resolved against the manifest's URL. */
export async function loadManifest(manifestUrl) {
  const resp = await fetch(manifestUrl, { cache: 'no-cache' });
  if (!resp.ok) throw new Error(`manifest ${manifestUrl}: HTTP ${resp.status}`);
  const json = await resp.json();
  if (!json || !Array.isArray(json.models)) throw new Error(`manifest ${manifestUrl}: no "models" list`);
  const base = new URL(manifestUrl, location.href);
  return json.models.map((m) => ({ ...m, url: new URL(m.file, base).href }));
}

/** The cache key: the model URL plus the expected hash, so a changed pack misses the cache. */
export function cacheKey(url, sha256) {
  const u = new URL(url, location.href);
  u.searchParams.set('sparsedit-sha256', sha256 || 'unknown');
  return u.href;
}

export async function isCached(source) {
  if (!hasCaches() || source.kind !== 'url') return false;
  const cache = await caches.open(CACHE_NAME);
  return !!(await cache.match(cacheKey(source.url, source.sha256)));
}

export async function clearCache() {
  if (!hasCaches()) return;
  await caches.delete(CACHE_NAME);
  await caches.delete(PENDING_CACHE);
}

/** Progress bookkeeping: bytes, MB/s and ETA, throttled by the caller's onProgress. */
export class Meter {
  constructor(total, phase, onProgress) {
    this.total = total || 0;
    this.phase = phase;
    this.onProgress = onProgress;
    this.t0 = performance.now();
    this.received = 0;
    this.lastEmit = 0;
  }
  add(n) {
    this.received += n;
    const now = performance.now();
    if (now - this.lastEmit > 80) this.emit(now, false);
  }
  emit(now = performance.now(), done = true) {
    this.lastEmit = now;
    const secs = Math.max((now - this.t0) / 1000, 1e-3);
    const bps = this.received / secs;
    const eta = this.total && bps > 0 ? Math.max(this.total - this.received, 0) / bps : NaN;
    this.onProgress?.({ phase: this.phase, received: this.received, total: this.total, bps, eta, done });
  }
}

/**
 * Pushes a byte stream into the engine chunk by chunk. Returns the engine's ModelInfo. (Also the
 * loader of packs kept in OPFS, hub.js: one loader, two stores.)
 */
export async function streamInto(engine, stream, { size, sha256, meter, signal }) {
  // wasm-bindgen maps Option<f64>/Option<String> to undefined.
  await engine.begin_load(size ?? undefined, sha256 || undefined);
  const reader = stream.getReader();
  try {
    for (;;) {
      if (signal?.aborted) throw new DOMException('load cancelled', 'AbortError');
      const { value, done } = await reader.read();
      if (done) break;
      await engine.push(value);
      meter.add(value.byteLength);
    }
  } catch (err) {
    reader.cancel(err).catch(() => {});
    throw err;
  } finally {
    reader.releaseLock?.();
  }
  meter.emit();
  return await engine.finish_load();
}

/**
 * Loads a model into `engine`.
 * source: { kind: 'url', url, size?, sha256?, label? } or { kind: 'file', file }
 * Returns { info, fromCache }.
 */
export async function loadModel(engine, source, { onProgress, signal } = {}) {
  if (source.kind === 'file') {
    const meter = new Meter(source.file.size, 'file', onProgress);
    const info = await streamInto(engine, source.file.stream(), { size: source.file.size, meter, signal });
    return { info, fromCache: false };
  }

  const key = cacheKey(source.url, source.sha256);
  if (hasCaches()) {
    const cache = await caches.open(CACHE_NAME);
    const hit = await cache.match(key);
    if (hit) {
      try {
        const size = source.size ?? numberOrUndefined(hit.headers.get(SIZE_HEADER));
        const sha256 = source.sha256 || hit.headers.get(SHA_HEADER) || undefined;
        const meter = new Meter(size, 'cache', onProgress);
        const info = await streamInto(engine, hit.body, { size, sha256, meter, signal });
        return { info, fromCache: true };
      } catch (err) {
        if (err?.name === 'AbortError') throw err;
        // A damaged cache entry: drop it and fetch again.
        await cache.delete(key);
        console.warn('cached model failed its check, fetching again:', err);
      }
    }
  }
  return { info: await fetchIntoEngine(engine, source, key, { onProgress, signal }), fromCache: false };
}

async function fetchIntoEngine(engine, source, key, { onProgress, signal }) {
  const abort = new AbortController();
  const onAbort = () => abort.abort();
  signal?.addEventListener('abort', onAbort);
  let resp;
  try {
    resp = await fetch(source.url, { signal: abort.signal, credentials: 'same-origin' });
  } catch (err) {
    signal?.removeEventListener('abort', onAbort);
    if (err?.name === 'AbortError') throw err;
    throw new Error(`could not fetch ${source.url}: ${err?.message || err} (offline, blocked by the page's security policy, or the server does not allow cross-origin requests)`);
  }
  if (!resp.ok || !resp.body) {
    signal?.removeEventListener('abort', onAbort);
    throw new Error(`could not fetch ${source.url}: HTTP ${resp.status} ${resp.statusText}`);
  }
  const encoded = resp.headers.get('content-encoding');
  const lengthHeader = encoded ? undefined : numberOrUndefined(resp.headers.get('content-length'));
  const total = source.size ?? lengthHeader;

  let engineBody = resp.body;
  let pendingPut = null;
  let pending = null;
  if (hasCaches()) {
    const [a, b] = resp.body.tee();
    engineBody = a;
    pending = await caches.open(PENDING_CACHE);
    const headers = { 'content-type': 'application/octet-stream' };
    pendingPut = pending.put(key, new Response(b, { headers }));
    pendingPut.catch(() => {}); // awaited below; avoid an unhandled rejection on abort
  }

  const meter = new Meter(total, 'network', onProgress);
  try {
    const info = await streamInto(engine, engineBody, { size: source.size, sha256: source.sha256, meter, signal });
    if (pending) {
      // Verified: promote the pending copy into the real cache. A full quota (or any cache
      // failure) does not fail the load: the weights are already on the engine, so the page
      // keeps them for this session and says they were not cached.
      try {
        await pendingPut;
        const copy = await pending.match(key);
        if (copy) {
          const headers = new Headers(copy.headers);
          headers.set(SHA_HEADER, info.sha256 || source.sha256 || '');
          headers.set(SIZE_HEADER, String(info.bytes ?? meter.received));
          const cache = await caches.open(CACHE_NAME);
          await cache.put(key, new Response(copy.body, { headers }));
        }
      } catch (err) {
        info.cacheError = `${err?.name === 'QuotaExceededError' ? 'storage quota exceeded' : err?.message || err}`;
      } finally {
        await pending.delete(key).catch(() => {});
      }
    }
    return info;
  } catch (err) {
    abort.abort();
    if (pending) {
      await pendingPut?.catch(() => {});
      await pending.delete(key);
      // Belt and braces: a failed load never leaves a real cache entry either.
      await (await caches.open(CACHE_NAME)).delete(key);
    }
    throw err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

function numberOrUndefined(s) {
  if (s == null || s === '') return undefined;
  const n = Number(s);
  return Number.isFinite(n) && n >= 0 ? n : undefined;
}

/** "12.3 MB" style formatting shared by the page. */
export function formatBytes(n) {
  if (!Number.isFinite(n)) return '?';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(2)} MB`;
}
