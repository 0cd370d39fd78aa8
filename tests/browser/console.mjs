// Drives the hub's console in headless Chromium as an owner would: signs
// in, uploads a video through the page (cut off by a reload halfway and
// resumed by choosing the same file again), waits for it to be ready,
// drops a file that is not a video (shown failed), plays the video to the
// end in the page's player, waits for its delivery cost,
// and opens the network page. Writes a screenshot of each page to OUT and
// prints one JSON line with what it saw.
//   node tests/browser/console.mjs HUB_URL API_KEY VIDEO_FILE OUT_DIR
import { chromium } from 'playwright-core';
import path from 'node:path';

const [hub, apiKey, file, out] = process.argv.slice(2);
const name = path.basename(file);
const result = { steps: [], errors: [] };
const step = (s) => { result.steps.push(s); console.error('console test: ' + s); };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
page.on('pageerror', (e) => result.errors.push('page: ' + e));
// Every tus exchange, so a failed resume shows what the hub answered.
result.tus = [];
page.on('response', (r) => {
  const q = r.request();
  if (!/\/v1\/(uploads\/|videos$)/.test(new URL(r.url()).pathname) || q.method() === 'GET') return;
  result.tus.push(`${q.method()} ${new URL(r.url()).pathname} offset=${q.headers()['upload-offset'] ?? '-'} -> ${r.status()} offset=${r.headers()['upload-offset'] ?? '-'}`);
});
page.on('requestfailed', (q) => {
  if (/\/v1\/(uploads\/|videos$)/.test(new URL(q.url()).pathname)) result.tus.push(`${q.method()} ${new URL(q.url()).pathname} failed: ${q.failure()?.errorText}`);
});
const shot = (n) => page.screenshot({ path: path.join(out, n + '.png'), fullPage: true });
const state = () => page.evaluate(() => window.consoleState);
const until = (what, fn, seconds, arg = null) => page.waitForFunction(fn, arg, { timeout: seconds * 1000, polling: 250 })
  .catch((e) => { throw new Error(what + ': ' + e.message); });

try {
  await page.goto(hub + '/console');
  await page.waitForSelector('#signin:not([hidden])');
  await shot('1-sign-in');
  await page.fill('#key', 'mck_wrong_key');
  await page.click('#signin button');
  await page.waitForSelector('#signin-error:not(:empty)');
  result.refused = await page.textContent('#signin-error');
  await page.fill('#key', apiKey);
  await page.click('#signin button');
  await page.waitForSelector('#library:not([hidden])');
  step('signed in');

  // Hold the second PATCH until the reload: removing the route lets it go,
  // and the reload cuts it off mid-body (on a busy machine, sometimes just
  // after its last byte, which once left the video stuck in `uploading`).
  let patches = 0;
  let firstChunk;
  const cut = new Promise((ok) => { firstChunk = ok; });
  await page.route('**/v1/uploads/**', (route) => {
    if (route.request().method() !== 'PATCH') return route.continue();
    patches += 1;
    if (patches === 1) { firstChunk(); return route.continue(); }
    return new Promise(() => {});
  });
  await page.setInputFiles('#file', file);
  await cut;
  await until('first chunk stored', () => Object.values(window.consoleState.uploads).some((u) => u.percent > 0), 60);
  result.beforeReload = (await state()).uploads[name].percent;
  await shot('2-uploading');
  await page.unroute('**/v1/uploads/**');
  await page.reload();
  await page.waitForSelector('#library:not([hidden])');
  await until('the unfinished upload is listed', () => document.querySelector('#resumable').textContent.includes('Unfinished'), 10);
  result.unfinished = await page.textContent('#resumable');
  await page.setInputFiles('#file', file);
  await until('upload finished', (n) => window.consoleState.uploads[n] && window.consoleState.uploads[n].done, 120, name);
  result.resumed = (await state()).uploads[name].resumed;
  step('uploaded (resumed after a reload: ' + result.resumed + ')');

  const seen = new Set();
  const deadline = Date.now() + 240000;
  let video;
  for (;;) {
    const s = await state();
    video = (s.videos || []).find((v) => v.name === name);
    if (video) seen.add(video.status + (video.status === 'transcoding' ? ' ' + Math.round(video.percent / 25) * 25 : ''));
    if (video && (video.status === 'ready' || video.status === 'failed')) break;
    if (Date.now() > deadline) throw new Error('not ready: ' + JSON.stringify(video));
    await page.waitForTimeout(250);
  }
  result.statuses = [...seen];
  // A resume that fell back to a new upload would leave the first behind.
  result.sameName = (await state()).videos.filter((v) => v.name === name).map((v) => v.id + ' ' + v.status);
  result.video = video;
  await shot('3-library');
  step('video ' + video.status);

  // Drag and drop: a file that is not a video, dropped on the zone, is
  // uploaded and shows as failed, with the hub's reason.
  const dropped = await page.evaluateHandle(() => {
    const d = new DataTransfer();
    d.items.add(new File(['meeting notes: not a video\n'], 'notes.txt', { type: 'text/plain' }));
    return d;
  });
  await page.dispatchEvent('#drop', 'drop', { dataTransfer: dropped });
  await until('the dropped file failed', () => (window.consoleState.videos || [])
    .some((v) => v.name === 'notes.txt' && v.status === 'failed'), 60);
  result.dropped = (await state()).videos.find((v) => v.name === 'notes.txt');
  result.droppedRow = await page.textContent('#videos tr[data-status="failed"]');
  step('dropped file failed: ' + result.dropped.reason);

  await page.click(`#videos tr[data-id="${video.id}"] a`);
  await page.waitForSelector('#video:not([hidden]) #player');
  const frame = await (await page.$('#player')).contentFrame();
  await frame.waitForFunction(() => window.meshcast && window.meshcast.events.includes('playing'), null, { timeout: 60000 });
  await frame.evaluate(() => { document.querySelector('video').playbackRate = 4; });
  await frame.waitForFunction(() => window.meshcast.events.includes('acks flushed'), null, { timeout: 90000 });
  const played = await frame.evaluate(() => window.meshcast);
  result.played = { events: played.events, errors: played.errors, acks: played.acks };
  result.urls = await page.$$eval('#video-urls code', (els) => els.map((e) => e.textContent));
  await shot('4-video');
  step('played to the end');

  await page.goto(hub + '/console#/money');
  await until('delivery cost shown', (id) => {
    const c = window.consoleState.costs;
    return c && c.videos.some((v) => v.video === id && v.delivery > 0);
  }, 120, video.id);
  result.costs = (await state()).costs;
  await shot('5-money');
  step('cost appeared');

  await page.goto(hub + '/console#/network');
  await until('two edges listed', () => document.querySelectorAll('#nodes tr[data-roles~="edge"]').length >= 2, 30);
  result.nodes = (await state()).nodes.map((n) => ({ id: n.id, roles: n.roles, state: n.state, admitted: n.admitted }));
  result.chain = (await state()).chain;
  result.blocks = await page.$$eval('#blocks tbody tr', (r) => r.length);
  result.consoleErrors = (await state()).errors;
  await shot('6-network');
  step('network listed');

  await page.goto(hub + '/docs/api');
  await page.waitForSelector('.opblock');
  await shot('7-api-reference');
} catch (e) {
  result.failure = String(e);
  await shot('failure').catch(() => {});
}
result.pageErrors = result.errors;
await browser.close();
console.log(JSON.stringify(result));
