// DOM access shared by the page's modules: `$`, an element by its id, and writes that touch the
// DOM only when the value changes. The page updates its readouts at every denoising step, and
// even an unchanged write (a new text node, a re-set attribute) makes the browser recompute
// style and layout for the whole page: tens of ms on the main thread on a slow machine.

export const $ = (id) => document.getElementById(id);

/** Sets property `key` of `el` (textContent, or of `el.dataset`, ...) to `v` unless it already is. */
export function setIfChanged(el, key, v) {
  if (el[key] !== v) el[key] = v;
}

/** Sets attribute `name` of `el` to `v` unless it already is. */
export function setAttrIfChanged(el, name, v) {
  if (el.getAttribute(name) !== v) el.setAttribute(name, v);
}
