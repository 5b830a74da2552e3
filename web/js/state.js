// The page's state: the one `state` object (every field declared here, sealed so no module adds
// one) and `newRun`, the shape of one generation's record.

export const state = Object.seal({
  // ---- engine and model
  engine: null, // the live Engine (engine.js: src/wasm.rs's Engine in a worker), null while one starts
  info: null, // ModelInfo of the loaded model, null while none is loaded
  source: null, // what that model was loaded from ({ kind: 'url', … } | { kind: 'file', file }), for reloads
  manifest: [], // the manifest's models, each with an absolute `url`
  recovering: false, // a lost GPU device is being recovered from (its own failures recover no further)

  // ---- what the page is busy with (buttons follow these)
  loading: false, // a model is streaming into the engine
  generating: false, // generate() runs
  comparing: false, // the dense-vs-sparse compare runs

  // ---- controls
  label: 0, // the picked class
  imagenet: null, // Promise of the ImageNet-1k names ({ names, synonyms }), fetched once, when first needed
  pooledSpec: undefined, // plain DiT: the pooled-middle spec last given to the engine ('default' | null); undefined: none given yet
  pooledRange: null, // plain DiT: [start, end) of the blocks on the pooled grid, null when off
  plan: null, // the engine's run plan for the form's settings: { plan, error } (controls.js refreshPlan)
  planSeq: 0, // refreshPlan's latest request: an older answer is dropped

  // ---- the run and its view
  run: null, // the current or last generation (newRun below), null before any on this model
  lastResult: null, // the last generate() result (test hook)
  shown: -1, // index into run.steps shown by the scrubber (-1: follow the newest)
  drawPending: false, // a redraw of the shown step is queued for the next animation frame

  // ---- clip player (video models: ModelInfo.frames set)
  frame: 0, // the frame shown by the preview and drawn under the token view (0..F-1)
  playing: false, // the player loops through the frames
  playTimer: null, // its setInterval id while playing

  // ---- token view
  selected: null, // selected block index, null for none
  query: 0, // selected query token of the attention view
  layouts: new Map(), // grid side -> the engine's BlockInfo[] at that grid, or the Promise of it while asked
  gpuTimes: new Map(), // grid side -> [{ name, ms }] measured by block_times

  // ---- compare
  compareEngine: null, // the second Engine (a second worker), holding the compare counterpart
  compareInfo: null, // ModelInfo of the pack in compareEngine

  // ---- latent decoder
  decoder: null, // { bytes, info: DecoderInfo, label } of the loaded decoder (kept to reload it into a new engine)
});

/** One generation: what the page records while it runs and after. */
export function newRun(opts, info) {
  return Object.seal({
    opts, // the generate options it ran with
    steps: [], // one record per finished step, in run order (see run.js onStep)
    result: null, // generate()'s result once it resolved ({ image, cancelled, decoded?, … })
    channels: info.in_channels, // of the model's output (the latent)
    size: info.input_size, // side of the model's output
    num: opts.num, // images in the batch (clips, for a video model)
    frames: info.frames ?? 1, // frames per clip (1 for an image model)
    video: info.frames != null, // a video model: every image is a clip of `frames` frames
    t0: performance.now(), // when it started (ms)
    wall: null, // wall-clock ms, once done
    previews: 0, // steps decoded by the live TAESD preview
    previewBusy: false, // a preview decode is running
    previewNext: null, // the newest step waiting for a preview decode
  });
}
