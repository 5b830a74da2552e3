// A tiny static file server for dist/ (the built page), used by scripts/serve.sh and the browser
// tests. Only binds to the address it is given (127.0.0.1 by default). No dependencies.
//
//   node scripts/static-server.mjs [root=dist] [port=8080] [host=127.0.0.1]
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.gguf': 'application/octet-stream',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
};

/**
 * Starts the server. `extra` maps URL paths to { body: Buffer|string, type } or { file } (used by
 * the tests to serve corrupted packs; ranged GETs are answered, unless `ranges: false`; `dropAfter: n` breaks the first whole GET off after n bytes), or { redirect: location, status = 302 } (a stand-in Hub's
 * resolve URLs, which redirect to a CDN); `onRequest(pathname, req)` sees every request (tests
 * count them). Resolves to { server, url, port }.
 */
export function startServer({ root = 'dist', port = 8080, host = '127.0.0.1', extra = {}, log = false, onRequest = null } = {}) {
  const absRoot = path.resolve(root);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    let pathname;
    try { pathname = decodeURIComponent(url.pathname); } catch { res.writeHead(400).end('bad path'); return; }
    if (log) console.log(req.method, pathname);
    onRequest?.(pathname, req);
    if (req.method !== 'GET' && req.method !== 'HEAD') { res.writeHead(405).end(); return; }
    const x = extra[pathname];
    if (x && x.redirect != null) {
      res.writeHead(x.status || 302, { location: x.redirect, 'cache-control': 'no-cache', 'content-length': 0 }).end();
      return;
    }
    if (x && x.body != null) {
      const body = Buffer.from(x.body);
      // `dropAfter: n` (tests): the first whole-file GET breaks off after n bytes, as a flaky
      // connection does.
      if (x.dropAfter != null && !req.headers.range) {
        const n = x.dropAfter;
        x.dropAfter = null;
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length, 'cache-control': 'no-cache' });
        res.write(body.subarray(0, n), () => setTimeout(() => res.destroy(), 50));
        return;
      }
      // `stallAfter: n` (tests): the first whole-file GET sends n bytes, then nothing more (the
      // connection stays open for a minute), as a download the visitor leaves by a reload.
      if (x.stallAfter != null && !req.headers.range) {
        const n = x.stallAfter;
        x.stallAfter = null;
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length, 'cache-control': 'no-cache' });
        res.write(body.subarray(0, n));
        setTimeout(() => res.destroy(), 60_000).unref();
        return;
      }
      // `Range: bytes=a-b` (as the Hub's CDN answers): 206 with that slice.
      const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range || '');
      if (range && x.ranges !== false) {
        const a = Number(range[1]), b = range[2] === '' ? body.length - 1 : Math.min(Number(range[2]), body.length - 1);
        if (a > b || a >= body.length) { res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end(); return; }
        res.writeHead(206, { 'content-type': 'application/octet-stream', 'content-length': b - a + 1,
          'content-range': `bytes ${a}-${b}/${body.length}`, 'cache-control': 'no-cache' });
        res.end(req.method === 'HEAD' ? undefined : body.subarray(a, b + 1));
        return;
      }
      res.writeHead(200, { 'content-type': x.type || TYPES[path.extname(pathname)] || 'application/octet-stream', 'content-length': body.length, 'cache-control': 'no-cache' });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    let file = x?.file ? path.resolve(x.file) : path.join(absRoot, path.normalize(pathname));
    if (!x?.file && !file.startsWith(absRoot)) { res.writeHead(403).end('forbidden'); return; }
    fs.stat(file, (err, st) => {
      if (!err && st.isDirectory()) { file = path.join(file, 'index.html'); st = fs.existsSync(file) ? fs.statSync(file) : null; }
      if (err || !st) { res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: ${pathname}`); return; }
      res.writeHead(200, {
        'content-type': TYPES[path.extname(file)] || 'application/octet-stream',
        'content-length': st.size,
        'cache-control': 'no-cache',
        'x-content-type-options': 'nosniff',
      });
      if (req.method === 'HEAD') { res.end(); return; }
      fs.createReadStream(file).pipe(res);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const p = server.address().port;
      resolve({ server, port: p, url: `http://${host}:${p}/` });
    });
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [root = 'dist', port = process.env.PORT || '8080', host = '127.0.0.1'] = process.argv.slice(2);
  const { url } = await startServer({ root, port: Number(port), host, log: !!process.env.VERBOSE });
  console.log(`serving ${root}/ at ${url}  (Ctrl-C to stop)`);
}
