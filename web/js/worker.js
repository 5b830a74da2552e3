// The engine's worker: owns one wasm `Engine` (src/wasm.rs) and answers the page's requests
// (engine.js sends them), so sampling, decoding and converting never block the page.
//
// Messages from the page:
//   { type: 'call', id, op, args }   run `op`; answered { type: 'reply', id, ok, value | error }
//   { type: 'step-taken', id }       the page has handled generate `id`'s latest step
//   { type: 'cancel' }               the running generate stops (at the latest after its current step)
// Messages to the page: replies, and { type: 'step', id, step } for every step of a generate.
// Float32Array / Uint8Array results travel as transfers: each is a fresh copy out of the wasm heap.

let bindings = null; // the wasm-bindgen module
let memory = null; // the wasm heap (its size is reported to the page)
let engine = null; // the Engine
/**
 * The Hub download being kept in OPFS beside its conversion (hub.js), so that a reload or a closed
 * tab picks it up where it stopped: { handle, at, flushed }, null when none. A sync access handle
 * (workers only) writes in place: what was written stays in the file when the worker ends.
 */
let kept = null;
/** Bytes between two flushes of the kept download. */
const KEEP_FLUSH = 32 << 20;
const stepTaken = new Map(); // generate id -> resolves when the page handled its latest step

/** Engine methods the page may call as they are (arguments and results as src/wasm.rs says). */
const ENGINE_METHODS = new Set([
  'begin_load', 'push', 'bytes_received', 'finish_load', 'begin_convert', 'finish_convert', 'abort_convert',
  'model_info', 'layout', 'run_plan', 'set_pooled_middle', 'load_decoder', 'unload_decoder', 'decode', 'block_times',
]);
/** Free functions of the wasm module (no engine state, but wasm work all the same). */
const MODULE_FUNCTIONS = new Set(['plan_diffusers_pack', 'decoder_pack_from_diffusers']);

const ops = {
  /** Loads the wasm module (its URLs come from the page: Trunk hashes the names) and opens the engine. */
  async init({ bindingsUrl, wasmUrl, preferGpu }) {
    bindings = await import(bindingsUrl);
    const wasm = await bindings.default({ module_or_path: wasmUrl });
    memory = wasm.memory;
    engine = await bindings.Engine.create(preferGpu);
    return { backend: engine.backend(), adapter: engine.adapter(), gpu_limits: engine.gpu_limits() };
  },

  /**
   * A safetensors chunk through the converter; the pack bytes it gives go straight into the
   * streamed load begun beside it, and back to the page (which keeps them in OPFS).
   */
  push_convert_and_load(chunk) {
    const out = engine.push_convert(chunk);
    if (out.length) engine.push(out);
    const keptError = kept ? keepChunk(chunk) : null;
    return { out, pack_size: engine.convert_pack_size() ?? null, kept_bytes: kept?.at ?? null, kept_error: keptError };
  },

  /**
   * From now on, the chunks of push_convert_and_load are also written to OPFS file `name` (in
   * folder `dirName`), from byte `from` on (what is past it is cut).
   */
  async keep_source(dirName, name, from) {
    ops.release_source();
    const root = await navigator.storage.getDirectory();
    const dir = await root.getDirectoryHandle(dirName, { create: true });
    const handle = await (await dir.getFileHandle(name, { create: true })).createSyncAccessHandle();
    try {
      handle.truncate(from);
    } catch (err) {
      handle.close();
      throw err;
    }
    kept = { handle, at: from, flushed: from };
    return from;
  },

  /** Stops keeping the download (flushed and closed: the page may then delete or read it). */
  release_source() {
    if (!kept) return null;
    const { handle, at } = kept;
    kept = null;
    try { handle.flush(); } finally { handle.close(); }
    return at;
  },

  /** Samples; every step goes to the page, and on the CPU path the next waits until the page took it. */
  generate(opts, id) {
    return engine.generate(opts, (step) => {
      post({ type: 'step', id, step }, transfersOf(step));
      return new Promise((resolve) => stepTaken.set(id, resolve));
    }).finally(() => stepTaken.delete(id));
  },

  heap_bytes() {
    return memory ? memory.buffer.byteLength : 0;
  },
};

/**
 * Appends `chunk` to the kept download. A failure (the storage quota) only stops the keeping: the
 * download goes on; the error's message is returned for the page to say.
 */
function keepChunk(chunk) {
  try {
    const n = kept.handle.write(chunk, { at: kept.at });
    if (n !== chunk.byteLength) throw new Error(`wrote ${n} of ${chunk.byteLength} bytes`);
    kept.at += n;
    if (kept.at - kept.flushed >= KEEP_FLUSH) {
      kept.handle.flush();
      kept.flushed = kept.at;
    }
    return null;
  } catch (err) {
    try { kept.handle.close(); } catch { /* closed */ }
    kept = null;
    return `${err?.name === 'QuotaExceededError' ? 'the storage quota is full' : err?.message || err}`;
  }
}

function call(op, args, id) {
  if (op === 'init') return ops.init(...args);
  if (!engine) throw Object.assign(new Error(`${op}: the engine has not started`), { kind: 'invalid_argument' });
  if (op === 'generate') return ops.generate(args[0], id);
  if (Object.hasOwn(ops, op)) return ops[op](...args);
  if (ENGINE_METHODS.has(op)) return engine[op](...args);
  if (MODULE_FUNCTIONS.has(op)) return bindings[op](...args);
  throw Object.assign(new Error(`the engine worker has no request "${op}"`), { kind: 'invalid_argument' });
}

self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.type === 'cancel') {
    engine?.cancel();
  } else if (msg.type === 'step-taken') {
    stepTaken.get(msg.id)?.();
  } else if (msg.type === 'call') {
    // Requests are not queued: async ones (generate, decode) interleave as on the page before.
    Promise.resolve()
      .then(() => call(msg.op, msg.args ?? [], msg.id))
      .then(
        (value) => post({ type: 'reply', id: msg.id, ok: true, value }, transfersOf(value)),
        (err) => post({ type: 'reply', id: msg.id, ok: false, error: errorRecord(err) }),
      );
  }
};

function post(msg, transfer = []) {
  self.postMessage(msg, transfer);
}

/** What crosses to the page of an error: its message and the engine's `kind`. */
function errorRecord(err) {
  // A wasm trap (a Rust panic; console_error_panic_hook logged it here) may leave the engine
  // half-updated: the page restarts it.
  const crashed = err instanceof WebAssembly.RuntimeError;
  return {
    name: err?.name || 'Error',
    message: crashed ? `the engine crashed (${err.message}; the worker's console has the panic)` : String(err?.message ?? err),
    kind: crashed ? 'engine_crashed' : err?.kind,
    stack: err?.stack,
  };
}

/** The ArrayBuffers of the typed arrays in a result (a few levels deep), each once. */
function transfersOf(value, out = new Set(), depth = 0) {
  if (value == null || typeof value !== 'object' || depth > 4) return [...out];
  if (ArrayBuffer.isView(value)) {
    // never the wasm heap itself (a view into it would detach the engine's memory)
    if (value.buffer !== memory?.buffer && value.buffer instanceof ArrayBuffer) out.add(value.buffer);
  } else {
    for (const v of Array.isArray(value) ? value : Object.values(value)) transfersOf(v, out, depth + 1);
  }
  return [...out];
}
