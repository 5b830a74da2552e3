// Where the page's main thread spends a Generate click on the CPU path: records a Chromium trace
// from the click to a few steps in, then prints every main-thread task of 15 ms or more with what
// it ran (script by function and URL, style, layout, paint, GC). Needs a built dist/.
//
//   node scripts/trace-generate.mjs [steps-before-cancel=5] [runs=3]
//   TRACE_QUIET=1           only the summary line of each run
//   TRACE_LOCATOR_CLICK=1   click with Playwright's locator (its actionability checks) instead of the mouse
//   TRACE_CSS='...'         CSS added to the page first (an experiment: what hiding a part saves)
//   TRACE_LOG=1             the page's console
import { cpuBrowser, waitStatus as waitStatusEvery } from './cpu-browser.mjs';

const until = Number(process.argv[2] || 5);
const runs = Number(process.argv[3] || 3);

const { browser, url, close } = await cpuBrowser();
// polled every 20 ms: the trace's window starts and ends on the status line
const waitStatus = (page, re, timeout = 60_000) => waitStatusEvery(page, re, timeout, 20);

/** A mouse click (press and release) at the middle of the element with `testid`, as a user's. */
async function clickAt(page, testid) {
  await page.getByTestId(testid).scrollIntoViewIfNeeded();
  const box = await page.getByTestId(testid).boundingBox();
  await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
}

try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, bypassCSP: !!process.env.TRACE_CSS });
  if (process.env.TRACE_LOG) page.on('console', (m) => console.log('page:', m.text()));
  await page.goto(url);
  await waitStatus(page, /^ready/);
  // an experiment's CSS (e.g. TRACE_CSS='#blocks{display:none}' to see what the block cards cost)
  if (process.env.TRACE_CSS) await page.addStyleTag({ content: process.env.TRACE_CSS });
  for (let r = 0; r < runs; r++) {
    // as the browser test does: the steps field set, then the click 200 ms later (tracing from
    // the fill on: what the field's change sets off is part of what the click waits behind)
    await browser.startTracing(page, {
      categories: ['devtools.timeline', 'disabled-by-default-devtools.timeline', 'v8', 'v8.execute', 'blink', 'blink.user_timing', 'toplevel'],
    });
    await page.getByTestId('steps').fill(String(60 + r));
    await page.waitForTimeout(200);
    // a plain mouse click at the button (TRACE_LOCATOR_CLICK=1: Playwright's locator click, whose
    // hit-target checks run listeners and force layouts on the page's thread)
    if (process.env.TRACE_LOCATOR_CLICK) await page.getByTestId('generate').click();
    else await clickAt(page, 'generate');
    await waitStatus(page, new RegExp(`^(generating: step (${until}|[${until + 1}-9]|\\d\\d)|done|error)`));
    await page.getByTestId('cancel').click();
    await waitStatus(page, /^(done|error)/);
    await page.waitForTimeout(100);
    const trace = JSON.parse((await browser.stopTracing()).toString());
    report(r, trace.traceEvents);
  }
} finally {
  await close();
}

function report(run, events) {
  // the renderer's main thread: the thread named CrRendererMain in the page's renderer
  const names = events.filter((e) => e.ph === 'M' && e.name === 'thread_name' && e.args?.name === 'CrRendererMain');
  const click = events.find((e) => e.name === 'EventDispatch' && e.args?.data?.type === 'click');
  for (const n of names) {
    const onThread = events.filter((e) => e.pid === n.pid && e.tid === n.tid && e.ph === 'X');
    const all = onThread.filter((e) => e.name === 'ThreadControllerImpl::RunTask' && e.dur >= 5_000).map((e) => e.dur / 1000).sort((a, b) => b - a);
    const tasks = onThread.filter((e) => e.name === 'ThreadControllerImpl::RunTask' && e.dur >= 15_000);
    console.log(`run ${run + 1}: ${all.length} main-thread tasks of >= 5 ms, longest ${all.slice(0, 8).map((d) => d.toFixed(1)).join(', ')} ms; sum ${all.reduce((a, b) => a + b, 0).toFixed(0)} ms`);
    const clickTask = click && onThread.find((e) => e.name === 'ThreadControllerImpl::RunTask' && e.ts <= click.ts && click.ts <= e.ts + e.dur);
    if (clickTask) console.log(`  the click's task: ${(clickTask.dur / 1000).toFixed(1)} ms`);
    if (process.env.TRACE_QUIET) continue;
    for (const t of tasks) {
      const inside = onThread.filter((e) => e !== t && e.ts >= t.ts && e.ts + (e.dur || 0) <= t.ts + t.dur && (e.dur || 0) >= 1_000);
      const at = click ? ((t.ts - click.ts) / 1000).toFixed(0) : '?';
      console.log(`  task ${(t.dur / 1000).toFixed(1)} ms at ${at} ms after the click`);
      for (const e of inside.sort((a, b) => a.ts - b.ts)) {
        const d = e.args?.data || e.args?.beginData || {};
        const what = d.functionName || d.type || d.url?.split('/').pop() || '';
        console.log(`    +${((e.ts - t.ts) / 1000).toFixed(1).padStart(6)} ${(e.dur / 1000).toFixed(1).padStart(6)} ms  ${e.name} ${what}${d.lineNumber != null ? `:${d.lineNumber}` : ''}`);
      }
    }
  }
}
