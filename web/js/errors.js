// Errors and status: the status line, the error list, and `engineError`, the one handler for
// anything the engine throws (a lost GPU device or a crashed engine worker, known by the error's
// `kind`, restarts it).

import { $, setIfChanged } from './dom.js';

export function setStatus(text, kind = '') {
  const el = $('status');
  setIfChanged(el, 'textContent', text);
  setIfChanged(el, 'className', kind);
}

export function errorMessage(err) {
  if (err == null) return 'unknown error';
  if (err instanceof Error) return err.message || String(err);
  if (typeof err === 'string') return err;
  if (err.message) return String(err.message);
  try { return JSON.stringify(err); } catch { return String(err); }
}

/**
 * An error after which the engine is gone: a lost GPU device (the engine's errors carry the Rust
 * error's kind) or a crashed engine worker (engine.js: 'engine_crashed').
 */
export function isEngineLost(err) {
  return err?.kind === 'device_lost' || err?.kind === 'engine_crashed';
}

/** A page-side error of the same kind the engine gives bad options. */
export function invalidArgument(message) {
  return Object.assign(new Error(message), { kind: 'invalid_argument' });
}

/** Shows an error in the error list and the status line (and the console). */
export function showError(err, context) {
  const msg = errorMessage(err);
  console.error(context ? `${context}:` : '', err);
  const li = document.createElement('li');
  li.textContent = context ? `${context}: ${msg}` : msg;
  $('error-list').append(li);
  $('errors').hidden = false;
  setStatus(`error: ${context ? `${context}: ` : ''}${msg}`, 'error');
}

// What a lost engine triggers: set once by the page's wiring (app.js).
const hooks = { engineLost: null };

/** Registers what to run after a lost GPU device or engine worker (restart the engine, reload the model). */
export function onEngineLost(fn) {
  hooks.engineLost = fn;
}

/**
 * The one handler for engine errors: shows `err` under `context`; when the engine is gone (a
 * lost GPU device, a crashed worker), then restarts it through the registered hook. Resolves
 * once that is done.
 */
export async function engineError(err, context) {
  showError(err, context);
  if (isEngineLost(err) && hooks.engineLost) await hooks.engineLost(err);
}

/** Uncaught errors and rejections go to the error list too; Dismiss clears it. */
export function installErrorHandlers() {
  window.onerror = (message, source, line, col, error) => {
    showError(error || message, 'uncaught error');
  };
  window.addEventListener('unhandledrejection', (ev) => {
    showError(ev.reason, 'unhandled promise rejection');
  });
  $('errors-clear').addEventListener('click', () => {
    $('error-list').replaceChildren();
    $('errors').hidden = true;
  });
}
