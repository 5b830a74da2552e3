// Loads the wasm-bindgen module that Trunk built. Trunk.toml's pattern_script puts this file in
// the page (instead of Trunk's default inline loader, which a strict CSP would block) with the
// hashed file names in data attributes. Same contract as Trunk's loader: window.wasmBindings and
// the "TrunkApplicationStarted" event.
const me = document.querySelector('script[data-bindings][data-wasm]');
try {
  if (!me) throw new Error('boot.js: missing data-bindings / data-wasm (page not built by Trunk?)');
  const bindings = await import(me.dataset.bindings);
  const wasm = await bindings.default({ module_or_path: me.dataset.wasm });
  window.wasmBindings = bindings;
  window.sparseditWasmMemory = wasm.memory; // the wasm heap (tests read its size)
  dispatchEvent(new CustomEvent('TrunkApplicationStarted', { detail: { wasm } }));
} catch (err) {
  window.sparseditBootError = err;
  dispatchEvent(new CustomEvent('sparsedit-boot-error', { detail: err }));
}
