// The page's handle on an engine: `Engine` mirrors the wasm Engine of src/wasm.rs, but the engine
// itself lives in a module Web Worker (worker.js) and every call is a message, answered as a
// Promise. What the page needs synchronously (backend, adapter, buffer limits) is kept from
// start-up. Latents and images come back as transfers; generate's steps arrive as messages, and
// on the CPU path the worker starts the next step only after the page took the last one (so a
// cancel from a step callback lands before the next step, and steps never pile up).
//
// A worker that fails (an uncaught error, a message that cannot be read) or an engine that
// crashes (a Rust panic) rejects every call in flight with an error of kind 'engine_crashed'
// and is reported through `onCrash`: the page restarts the engine, as after a lost GPU device.

/** The hashed URLs of the wasm-bindgen JS and the .wasm (Trunk.toml's pattern_script puts them on app.js's tag). */
function wasmUrls() {
  const tag = document.querySelector('script[data-bindings][data-wasm]');
  if (!tag) throw new Error('the page has no data-bindings / data-wasm script tag (not built by Trunk?)');
  return {
    bindingsUrl: new URL(tag.dataset.bindings, location.href).href,
    wasmUrl: new URL(tag.dataset.wasm, location.href).href,
  };
}

/** An Error from the worker's record of one, with the engine's `kind` (the page switches on it). */
function toError(rec) {
  const err = new Error(rec?.message ?? 'unknown engine error');
  if (rec?.name && rec.name !== 'Error') err.name = rec.name;
  if (rec?.kind) err.kind = rec.kind;
  if (rec?.stack) err.workerStack = rec.stack;
  return err;
}

/** The buffer of a typed array that spans all of it, to transfer; none for a view into a larger one (copied). */
function wholeBuffer(view) {
  return view.byteOffset === 0 && view.byteLength === view.buffer.byteLength ? [view.buffer] : [];
}

function crashError(message) {
  return Object.assign(new Error(message), { kind: 'engine_crashed' });
}

export class Engine {
  /**
   * Starts a worker and its engine: WebGPU when `preferGpu` and the worker has it, else the CPU
   * path. `onCrash(err)` hears of a worker that failed while nothing waited on it.
   */
  static async create(preferGpu, { onCrash } = {}) {
    const engine = new Engine(onCrash);
    try {
      Object.assign(engine.#started, await engine.#call('init', [{ ...wasmUrls(), preferGpu }]));
    } catch (err) {
      engine.free();
      throw err;
    }
    return engine;
  }

  #worker;
  #nextId = 1;
  #pending = new Map(); // call id -> { resolve, reject, onStep? }
  #started = { backend: 'cpu', adapter: '', gpu_limits: null };
  #onCrash;
  #dead = null; // the error that ended the worker

  constructor(onCrash) {
    this.#onCrash = onCrash ?? null;
    this.#worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'sparsedit-engine' });
    this.#worker.onmessage = (ev) => this.#receive(ev.data);
    this.#worker.onerror = (ev) => {
      ev.preventDefault(); // reported here, once
      this.#fail(crashError(`the engine's worker failed: ${ev.message || 'an error it could not report'}`));
    };
    this.#worker.onmessageerror = () => this.#fail(crashError('the engine\'s worker sent a message the page could not read'));
  }

  #receive(msg) {
    const p = this.#pending.get(msg.id);
    if (msg.type === 'step') {
      // The page's callback first, then the go-ahead (a cancel it sent is already on its way).
      try { p?.onStep?.(msg.step); } catch (err) { console.error('on_step', err); }
      this.#worker.postMessage({ type: 'step-taken', id: msg.id });
      return;
    }
    if (msg.type !== 'reply' || !p) return;
    this.#pending.delete(msg.id);
    if (msg.ok) p.resolve(msg.value);
    else {
      const err = toError(msg.error);
      p.reject(err);
      if (err.kind === 'engine_crashed') this.#fail(err, { reported: true });
    }
  }

  /**
   * The worker is gone or its engine unusable: it ends, every waiting call fails (their callers
   * report it), later calls too; a failure no call reports goes to `onCrash`.
   */
  #fail(err, { reported = false } = {}) {
    if (this.#dead) return;
    this.#dead = err;
    const waiting = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of waiting) p.reject(err);
    this.#worker.terminate();
    if (!reported && waiting.length === 0) this.#onCrash?.(err);
  }

  #call(op, args = [], { transfer = [], onStep } = {}) {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, onStep });
      this.#worker.postMessage({ type: 'call', id, op, args }, transfer);
    });
  }

  // ---- known from start-up (synchronous, as on the wasm Engine)
  backend() { return this.#started.backend; }
  adapter() { return this.#started.adapter; }
  gpu_limits() { return this.#started.gpu_limits; }

  // ---- streamed loads (await every push: the worker's pace bounds the memory in flight)
  begin_load(size, sha256) { return this.#call('begin_load', [size ?? undefined, sha256 || undefined]); }
  /** `chunk` is copied (a tee'd stream may share it with the cache's branch). */
  push(chunk) { return this.#call('push', [chunk]); }
  bytes_received() { return this.#call('bytes_received'); }
  finish_load() { return this.#call('finish_load'); }

  // ---- a checkpoint converted to a pack while it downloads (hub.js)
  begin_convert(configJson, quant, size, sha256, name) {
    return this.#call('begin_convert', [configJson ?? undefined, quant, size ?? undefined, sha256 || undefined, name ?? undefined]);
  }
  /**
   * Converts `chunk` (transferred: the caller gives it up) and pushes the pack bytes it yields
   * into the load begun beside it; resolves to { out: those bytes (to keep), pack_size: the pack's
   * size once known, else null, kept_bytes: the download's bytes kept in OPFS (keep_source), else
   * null, kept_error: why keeping it stopped, else null }.
   */
  push_convert_and_load(chunk) { return this.#call('push_convert_and_load', [chunk], { transfer: wholeBuffer(chunk) }); }
  /** The worker keeps the converted download in OPFS file `dirName/name` from byte `from` on (a reload resumes it). */
  keep_source(dirName, name, from) { return this.#call('keep_source', [dirName, name, from]); }
  /** The worker stops keeping it (the file closed); resolves to the bytes kept, or null. */
  release_source() { return this.#call('release_source'); }
  finish_convert() { return this.#call('finish_convert'); }
  abort_convert() { return this.#call('abort_convert'); }

  // ---- the model
  model_info() { return this.#call('model_info'); }
  layout(grid) { return this.#call('layout', [grid]); }
  run_plan(opts) { return this.#call('run_plan', [opts]); }
  set_pooled_middle(spec) { return this.#call('set_pooled_middle', [spec ?? undefined]); }
  block_times(grid) { return this.#call('block_times', [grid]); }

  /** Samples; `onStep(step)` for every step (its pred_x0 and attention maps are the page's to keep). */
  generate(opts, onStep) { return this.#call('generate', [opts], { onStep }); }
  /** The running generate stops (a cancel sent from a step callback: right after that step). */
  cancel() { if (!this.#dead) this.#worker.postMessage({ type: 'cancel' }); }

  // ---- latent decoders
  /** `bytes` is copied (the page keeps them to reload the decoder into a new engine). */
  load_decoder(bytes, sha256) { return this.#call('load_decoder', [bytes, sha256 || undefined]); }
  unload_decoder() { return this.#call('unload_decoder'); }
  /** `latent` is copied (the page keeps the steps it previews). */
  decode(latent, num) { return this.#call('decode', [latent, num]); }

  // ---- wasm work without engine state
  plan_diffusers_pack(configJson, quant, name) { return this.#call('plan_diffusers_pack', [configJson, quant, name ?? undefined]); }
  decoder_pack_from_diffusers(safetensors, configJson, quant, name) {
    return this.#call('decoder_pack_from_diffusers', [safetensors, configJson, quant, name ?? undefined], { transfer: wholeBuffer(safetensors) });
  }

  /** Bytes of the worker's wasm heap. */
  heap_bytes() { return this.#call('heap_bytes'); }

  /** Ends the worker (and the engine, its GPU device and buffers with it); calls still waiting fail with kind 'engine_closed'. */
  free() {
    if (!this.#dead) this.#dead = Object.assign(new Error('the engine was closed'), { kind: 'engine_closed' });
    for (const p of this.#pending.values()) p.reject(this.#dead);
    this.#pending.clear();
    this.#worker.terminate();
  }
}
