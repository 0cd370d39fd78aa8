// Plays a meshcast player page in headless Chromium (Debian's package,
// driven by playwright-core) and prints one JSON line: whether the video
// reached `ended`, the player's events and errors, the protocol each
// resource came over (`nextHopProtocol`, e.g. "h3"), and where each
// SourceBuffer's media starts (`sourceBuffers`: the A/V alignment as the
// player and the browser present it). A play that stalls also reports each
// SourceBuffer's ranges, the MediaSource state and a timeline of element,
// MediaSource and SourceBuffer events (the first 120).
//   node tests/browser/play.mjs URL [timeout_seconds]
// Environment:
//   CHROMIUM_ARGS  extra Chromium flags (space-separated), e.g. to force QUIC
//   PLAYBACK_RATE  play faster once playing (long test clips)
//   CHECK_TYPES    '|'-separated MIME types with codecs: reported in
//                  `typeSupported` as MediaSource.isTypeSupported answers
//   PLAYS          play the page this many times in one browser; prints
//                  { plays, ended, failures } instead
import { chromium } from 'playwright-core';

const [url, timeoutArg] = process.argv.slice(2);
const timeout = Number(timeoutArg || 60) * 1000;
const rate = Number(process.env.PLAYBACK_RATE || 1);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required',
         ...(process.env.CHROMIUM_ARGS || '').split(' ').filter(Boolean)],
});

// Keeps every SourceBuffer a player makes, to report where its media starts.
function recordSourceBuffers() {
  window.__sourceBuffers = [];
  const add = MediaSource.prototype.addSourceBuffer;
  MediaSource.prototype.addSourceBuffer = function (type) {
    const sb = add.call(this, type);
    window.__sourceBuffers.push([type, sb]);
    const kind = type.split('/')[0];
    sb.addEventListener('updateend', () => {
      try { trace('updateend ' + kind, sb.buffered.length ? sb.buffered.end(sb.buffered.length - 1).toFixed(4) : '-'); } catch (e) {}
    });
    return sb;
  };
  // A timeline of what the player and the browser did, for a stall report.
  window.__trace = [];
  const trace = (what, detail) => {
    if (window.__trace.length >= 120) return;
    const v = document.querySelector('video');
    window.__trace.push([Math.round(performance.now()), what, detail === undefined ? '' : String(detail),
      v ? v.currentTime.toFixed(4) : '-', window.__ms ? window.__ms.readyState : '-']);
  };
  const eos = MediaSource.prototype.endOfStream;
  MediaSource.prototype.endOfStream = function (e) { trace('endOfStream()', e); return eos.apply(this, arguments); };
  const Native = window.MediaSource;
  window.MediaSource = class extends Native {
    constructor() {
      super();
      window.__ms = this;
      for (const ev of ['sourceopen', 'sourceended', 'sourceclose']) this.addEventListener(ev, () => trace(ev));
    }
  };
  const dur = Object.getOwnPropertyDescriptor(Native.prototype, 'duration');
  Object.defineProperty(Native.prototype, 'duration', {
    get() { return dur.get.call(this); },
    set(x) { trace('duration =', x); dur.set.call(this, x); },
  });
  document.addEventListener('DOMContentLoaded', () => {
    const v = document.querySelector('video');
    for (const ev of ['waiting', 'playing', 'ended', 'pause', 'seeking', 'seeked', 'stalled', 'durationchange', 'emptied']) {
      v.addEventListener(ev, () => trace(ev, ev === 'durationchange' ? v.duration : undefined));
    }
  });
}

async function playOnce(target) {
  const page = await browser.newPage();
  await page.addInitScript(recordSourceBuffers);
  await page.addInitScript((r) => {
    if (r === 1) return;
    document.addEventListener('playing', (e) => { e.target.playbackRate = r; }, true);
  }, rate);
  const consoleErrors = [];
  const consoleWarnings = [];
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
    else if (m.type() === 'warning' && consoleWarnings.length < 50) consoleWarnings.push(m.text().slice(0, 300));
  });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  // Failed and refused requests, to say why a player stalled.
  const badRequests = [];
  page.on('requestfailed', (r) => badRequests.push(r.url().slice(-80) + ' ' + (r.failure() && r.failure().errorText)));
  page.on('response', (r) => { if (r.status() >= 400) badRequests.push(r.url().slice(-80) + ' ' + r.status()); });
  let result;
  try {
    await page.goto(target, { waitUntil: 'load' });
    await page.waitForFunction(() => window.meshcast && (window.meshcast.events.includes('ended') || window.meshcast.errors.length > 0), null, { timeout, polling: 200 });
    // With the proof-of-delivery plugin, wait for the last acks to be answered.
    await page.waitForFunction(() => !window.meshcast.acks || window.meshcast.events.includes('acks flushed') || window.meshcast.errors.length > 0,
      null, { timeout: 15000, polling: 100 }).catch(() => {});
    result = await page.evaluate((types) => ({
      acks: window.meshcast.acks || null,
      rtc: window.meshcast.rtc || null,
      ended: window.meshcast.events.includes('ended'),
      engine: window.meshcast.engine,
      events: window.meshcast.events,
      errors: window.meshcast.errors,
      protocols: performance.getEntriesByType('resource').map((e) => [e.name, e.nextHopProtocol]),
      currentTime: document.getElementById('v').currentTime,
      duration: document.getElementById('v').duration,
      sourceBuffers: window.__sourceBuffers.map(([type, sb]) => {
        try { return { type, start: sb.buffered.length ? sb.buffered.start(0) : null }; } catch (e) { return { type, start: null }; }
      }),
      typeSupported: Object.fromEntries(types.map((t) => [t, MediaSource.isTypeSupported(t)])),
    }), (process.env.CHECK_TYPES || '').split('|').filter(Boolean));
  } catch (e) {
    // Where the player stood when it stalled: position, duration, and what
    // each SourceBuffer range holds.
    const where = await page.evaluate(() => {
      const v = document.getElementById('v');
      const ranges = (r) => Array.from({ length: r.length }, (_, i) => [r.start(i), r.end(i)]);
      return {
        events: window.meshcast && window.meshcast.events,
        currentTime: v.currentTime, duration: v.duration, readyState: v.readyState,
        buffered: ranges(v.buffered),
        elementEnded: v.ended, paused: v.paused,
        mediaSource: window.__ms && window.__ms.readyState,
        sourceBufferRanges: (window.__sourceBuffers || []).map(([type, sb]) => {
          try { return [type, ranges(sb.buffered)]; } catch (e) { return [type, String(e)]; }
        }),
        trace: window.__trace,
      };
    }).catch(() => ({}));
    result = { ended: false, errors: [String(e)], ...where };
  }
  result.consoleErrors = consoleErrors;
  if (!result.ended) result.consoleWarnings = consoleWarnings;
  result.badRequests = badRequests;
  await page.close();
  return result;
}

const plays = Number(process.env.PLAYS || 1);
let ok;
if (plays === 1) {
  const result = await playOnce(url);
  console.log(JSON.stringify(result));
  ok = result.ended && result.errors.length === 0;
} else {
  const failures = [];
  let ended = 0;
  for (let i = 0; i < plays; i++) {
    const r = await playOnce(url);
    if (r.ended && r.errors.length === 0) ended += 1;
    else failures.push({ play: i, currentTime: r.currentTime, duration: r.duration, buffered: r.buffered, errors: r.errors,
      mediaSource: r.mediaSource, sourceBufferRanges: r.sourceBufferRanges, warnings: r.consoleWarnings, trace: r.trace });
  }
  console.log(JSON.stringify({ plays, ended, failures }));
  ok = ended === plays;
}
await browser.close();
process.exit(ok ? 0 : 1);
