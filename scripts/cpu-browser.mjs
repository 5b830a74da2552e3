// The built page (dist/) served on a free local port, and a headless Chromium to open it in:
// without WebGPU (the page's CPU path, as the benchmark and trace scripts drive it) or with it
// (Debian's Chromium serves WebGPU through SwiftShader here; a machine's real GPU may need more
// Chromium flags, not tried yet).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer } from './static-server.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Resolves to { browser, url, close() }; CHROMIUM overrides /usr/bin/chromium. */
export async function pageBrowser({ webgpu = false } = {}) {
  const { server, url } = await startServer({ root: path.join(ROOT, 'dist'), port: 0 });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [webgpu ? '--enable-unsafe-webgpu' : '--disable-gpu', '--headless', '--no-sandbox', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  return { browser, url, close: async () => { await browser.close(); server.close(); } };
}

/** The page's CPU path: a Chromium without WebGPU. */
export const cpuBrowser = () => pageBrowser({ webgpu: false });

/** The page's status line ([data-testid="status"]). */
export const statusOf = (page) => page.evaluate(() => document.querySelector('[data-testid="status"]')?.textContent || '');

/** Waits until the status line matches `re` (polled every `polling` ms); resolves to it. */
export async function waitStatus(page, re, timeout = 60_000, polling = 50) {
  await page.waitForFunction((src) => new RegExp(src).test(document.querySelector('[data-testid="status"]')?.textContent || ''),
    re.source, { timeout, polling });
  return statusOf(page);
}
