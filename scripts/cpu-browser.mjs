// The built page (dist/) served on a free local port, and a headless Chromium without WebGPU to
// open it in: the page's CPU path, as the benchmark and trace scripts drive it.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer } from './static-server.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Resolves to { browser, url, close() }: CHROMIUM overrides /usr/bin/chromium. */
export async function cpuBrowser() {
  const { server, url } = await startServer({ root: path.join(ROOT, 'dist'), port: 0 });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
  return { browser, url, close: async () => { await browser.close(); server.close(); } };
}
