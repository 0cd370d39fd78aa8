// The meshcast console: plain JavaScript over the hub's documented API
// (/v1/openapi.json). The API key lives in this browser's localStorage;
// uploads go through tus-js-client, which keeps each upload's URL there
// too, so an upload cut off by a reload resumes when the same file is
// dropped again.
'use strict';

const KEY = 'meshcast.key';
const $ = (sel) => document.querySelector(sel);
const key = () => localStorage.getItem(KEY);
const api = async (path, opts = {}) => {
  const headers = Object.assign({ Authorization: 'Bearer ' + key() }, opts.headers || {});
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  if (r.status === 401) { signOut(); throw new Error('the API key was refused'); }
  return r;
};
const json = async (path) => {
  const r = await api(path);
  if (!r.ok) throw new Error(path + ': ' + r.status + ' ' + (await r.text()));
  return r.json();
};
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const bytes = (n) => {
  if (!n) return '0 B';
  const u = ['B', 'kB', 'MB', 'GB', 'TB'];
  const i = Math.min(u.length - 1, Math.floor(Math.log10(n) / 3));
  return (n / 10 ** (3 * i)).toFixed(i ? 1 : 0) + ' ' + u[i];
};
const secs = (s) => (s == null ? '–' : Math.floor(s / 60) + ':' + String(Math.round(s % 60)).padStart(2, '0'));
const micro = (x) => (x || 0).toLocaleString('en', { maximumFractionDigits: 3 });
const short = (hex) => (hex ? hex.slice(0, 10) + '…' : '–');
// What the test (and anyone curious) can read: the page's own record.
window.consoleState = { page: null, uploads: {}, errors: [] };
window.addEventListener('error', (e) => window.consoleState.errors.push(String(e.message)));

// ---- pages -----------------------------------------------------------
let timer = null;
const pages = { library, video, money, network };

async function route() {
  clearTimeout(timer);
  for (const s of document.querySelectorAll('main > section')) s.hidden = true;
  const signedIn = !!key();
  $('#signout').hidden = !signedIn;
  if (!signedIn) { show('signin'); return; }
  const [name, arg] = (location.hash.replace(/^#\//, '') || 'library').split('/');
  const page = pages[name] ? name : 'library';
  for (const a of document.querySelectorAll('nav a[data-page]')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  show(page);
  try { await pages[page](decodeURIComponent(arg || '')); } catch (e) { note(e); }
}

function show(id) {
  $('#' + id).hidden = false;
  window.consoleState.page = id;
}

function note(e) {
  window.consoleState.errors.push(String(e));
  console.error(e);
}

// ---- sign in ---------------------------------------------------------
$('#signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const k = $('#key').value.trim();
  const r = await fetch('/v1/account', { headers: { Authorization: 'Bearer ' + k } });
  if (!r.ok) {
    $('#signin-error').textContent = r.status === 401 ? 'That key is not valid (or was revoked).' : 'Sign-in failed: ' + (await r.text());
    return;
  }
  localStorage.setItem(KEY, k);
  $('#key').value = '';
  $('#signin-error').textContent = '';
  await whoami();
  route();
});

function signOut() {
  localStorage.removeItem(KEY);
  $('#who').textContent = '';
  route();
}
$('#signout').addEventListener('click', signOut);

async function whoami() {
  if (!key()) return;
  try {
    const me = await json('/v1/account');
    $('#who').textContent = me.account.name + ' · ' + bytes(me.stored_bytes) + ' of ' + bytes(me.account.max_stored_bytes);
  } catch (e) { note(e); }
}

// ---- library and uploads ------------------------------------------------
const dropZone = $('#drop');
dropZone.addEventListener('dragover', (e) => { e.preventDefault(); dropZone.classList.add('over'); });
dropZone.addEventListener('dragleave', () => dropZone.classList.remove('over'));
dropZone.addEventListener('drop', (e) => {
  e.preventDefault();
  dropZone.classList.remove('over');
  for (const f of e.dataTransfer.files) startUpload(f);
});
dropZone.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); $('#file').click(); } });
$('#file').addEventListener('change', (e) => { for (const f of e.target.files) startUpload(f); e.target.value = ''; });

async function startUpload(file) {
  const policy = document.querySelector('input[name=policy]:checked').value;
  const metadata = { filename: file.name, policy };
  if (policy === 'signed') metadata.owner = $('#owner').value.trim();
  const row = document.createElement('li');
  row.innerHTML = `<span class="name">${esc(file.name)}</span> <progress max="100" value="0"></progress> <span class="pct">0%</span> <button type="button">Pause</button>`;
  $('#uploads').appendChild(row);
  const rec = (window.consoleState.uploads[file.name] = { percent: 0, done: false, resumed: false, error: null });
  const upload = new tus.Upload(file, {
    endpoint: '/v1/videos',
    headers: { Authorization: 'Bearer ' + key() },
    metadata,
    chunkSize: 8 << 20,
    retryDelays: [0, 1000, 3000, 5000, 10000],
    removeFingerprintOnSuccess: true,
    onProgress(sent, total) {
      const p = total ? (100 * sent) / total : 0;
      rec.percent = p;
      row.querySelector('progress').value = p;
      row.querySelector('.pct').textContent = p.toFixed(0) + '%';
    },
    onError(err) {
      rec.error = String(err);
      row.querySelector('.pct').textContent = 'failed: ' + (err.originalResponse ? err.originalResponse.getBody() : err);
    },
    onSuccess() {
      rec.done = true;
      row.querySelector('.pct').textContent = 'uploaded; transcoding';
      row.querySelector('button').remove();
      library();
    },
  });
  const button = row.querySelector('button');
  let paused = false;
  button.addEventListener('click', () => {
    paused = !paused;
    if (paused) upload.abort(); else upload.start();
    button.textContent = paused ? 'Resume' : 'Pause';
  });
  const previous = await upload.findPreviousUploads();
  if (previous.length) {
    rec.resumed = true;
    upload.resumeFromPreviousUpload(previous[0]);
  }
  upload.start();
  showResumable();
}

async function showResumable() {
  const all = await tus.defaultOptions.urlStorage.findAllUploads().catch(() => []);
  const active = Object.keys(window.consoleState.uploads);
  const left = all.filter((u) => !active.includes(u.metadata && u.metadata.filename));
  $('#resumable').textContent = left.length
    ? 'Unfinished: ' + left.map((u) => u.metadata.filename).join(', ') + ' — drop the same file to go on from where it stopped.'
    : '';
}

function stateCell(v) {
  if (v.status === 'transcoding' || v.status === 'queued') {
    return `<progress max="100" value="${v.percent}" aria-label="transcoded"></progress> ${esc(v.status)} ${v.percent.toFixed(0)}%`;
  }
  if (v.status === 'uploading') return 'uploading';
  if (v.status === 'failed') return `<span class="bad">failed</span>: ${esc(v.reason)}`;
  return `<span class="good">${esc(v.status)}</span>`;
}

async function library() {
  if ($('#library').hidden) return;
  const list = [];
  let after = null;
  do {
    const page = await json('/v1/videos?limit=100' + (after ? '&after=' + encodeURIComponent(after) : ''));
    list.push(...page.videos);
    after = page.next;
  } while (after);
  window.consoleState.videos = list;
  $('#videos tbody').innerHTML = list.length
    ? list.map((v) => `<tr data-id="${esc(v.id)}" data-status="${esc(v.status)}">
        <td><a href="#/video/${encodeURIComponent(v.id)}">${esc(v.name || v.id)}</a></td>
        <td>${stateCell(v)}</td><td>${esc((v.renditions || []).join(', '))}</td>
        <td>${secs(v.duration)}</td><td>${bytes(v.upload && v.upload.length)}</td><td>${esc(v.policy)}</td></tr>`).join('')
    : '<tr><td colspan="6">No videos yet: drop one above.</td></tr>';
  showResumable();
  const busy = list.some((v) => ['uploading', 'queued', 'transcoding'].includes(v.status));
  timer = setTimeout(library, busy ? 1000 : 5000);
}

// ---- one video ---------------------------------------------------------
async function video(id) {
  const v = await json('/v1/videos/' + encodeURIComponent(id));
  $('#video-title').textContent = v.name || v.id;
  $('#video-state').innerHTML = stateCell(v);
  $('#video-error').textContent = '';
  const box = $('#player-box');
  const player = (v.player || [])[0];
  if (v.status === 'ready' && player && box.dataset.src !== player) {
    // The edge's player page: hls.js with the proof-of-delivery plugin.
    box.dataset.src = player;
    box.innerHTML = `<iframe id="player" title="Player: ${esc(v.name)}" src="${esc(player)}" allow="autoplay; fullscreen"></iframe>`;
  } else if (v.status !== 'ready') {
    delete box.dataset.src;
    box.innerHTML = '';
  }
  const urls = [['HLS', v.hls], ['DASH', v.dash], ['Player', v.player]]
    .flatMap(([label, list]) => (list || []).map((u) => [label, u]));
  $('#video-urls').innerHTML = urls.map(([label, u], i) =>
    `<dt>${label}</dt><dd><code id="url-${i}">${esc(u)}</code> <button type="button" data-copy="url-${i}">Copy</button></dd>`).join('');
  $('#video-facts').innerHTML = [
    ['Id', v.id], ['Duration', secs(v.duration)], ['Ladder', (v.renditions || []).join(', ')],
    ['Size', bytes(v.upload && v.upload.length)], ['Tokens', v.policy + (v.owner ? ' by ' + short(v.owner) : '')],
  ].map(([k, x]) => `<dt>${k}</dt><dd>${esc(x)}</dd>`).join('');
  $('#delete').onclick = () => remove(v);
  if (v.status !== 'ready' && v.status !== 'failed') timer = setTimeout(() => video(id), 1000);
}

document.addEventListener('click', async (e) => {
  const target = e.target.closest('[data-copy]');
  if (!target) return;
  const text = document.getElementById(target.dataset.copy).textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) {
    // Without a secure context there is no clipboard API: select it.
    const range = document.createRange();
    range.selectNodeContents(document.getElementById(target.dataset.copy));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand('copy');
  }
  target.textContent = 'Copied';
  setTimeout(() => { target.textContent = 'Copy'; }, 1500);
});

async function remove(v) {
  if (!confirm(`Delete "${v.name || v.id}"? Its playback URLs stop working.`)) return;
  const r = await api('/v1/videos/' + encodeURIComponent(v.id), { method: 'DELETE' });
  if (r.status === 204) { location.hash = '#/library'; return; }
  $('#video-error').textContent = 'Not deleted: ' + (await r.text());
}

// ---- money -------------------------------------------------------------
const KINDS = [['delivery', 'Delivery'], ['storage', 'Storage'], ['transcode', 'Transcoding']];

async function money() {
  const c = await json('/v1/account/costs');
  window.consoleState.costs = c;
  $('#payers tbody').innerHTML = c.payers.map((p) =>
    `<tr><td><code title="${esc(p.address)}">${short(p.address)}</code></td><td>${esc(p.whose)}</td><td>${micro(p.escrow)}</td><td>${micro(p.balance)}</td></tr>`).join('')
    || '<tr><td colspan="4">No videos yet.</td></tr>';
  $('#days tbody').innerHTML = c.days.map((d) =>
    `<tr><td>${esc(d.day)}</td>${KINDS.map(([k]) => `<td>${micro(d[k])}</td>`).join('')}<td>${micro(d.total)}</td></tr>`).join('')
    || '<tr><td colspan="5">Nothing yet: costs appear once deliveries settle and work is paid.</td></tr>';
  const name = (id) => (c.videos.find((v) => v.video === id) || {}).name || id;
  $('#costs tbody').innerHTML = c.videos.map((v) => `<tr data-video="${esc(v.video)}">
      <td><a href="#/video/${encodeURIComponent(v.video)}">${esc(name(v.video))}</a></td>
      <td>${bytes(v.delivery_bytes)}</td><td>${micro(v.delivery)}</td>
      <td>${bytes(v.storage_byte_hours)}·h</td><td>${micro(v.storage)}</td>
      <td>${v.transcode_seconds} s</td><td>${micro(v.transcode)}</td><td>${micro(v.total)}</td></tr>`).join('');
  $('#chart').innerHTML = bars(c.days.map((d) => ({ label: d.day, parts: KINDS.map(([k]) => d[k]) })), KINDS.map(([, l]) => l));
  timer = setTimeout(money, 5000);
}

// A stacked bar per row, as SVG (no chart library needed for this).
function bars(rows, legend, fmt = (p) => micro(p) + ' µMESH') {
  if (!rows.length) return '<p class="note">No costs yet.</p>';
  const colors = ['#2b6cb0', '#2f855a', '#b7791f'];
  const max = Math.max(...rows.map((r) => r.parts.reduce((a, b) => a + b, 0)), 1e-9);
  const w = 60, gap = 20, h = 160, top = 10;
  const svgW = rows.length * (w + gap) + gap;
  let out = `<svg width="${svgW}" height="${h + 50}" viewBox="0 0 ${svgW} ${h + 50}" xmlns="http://www.w3.org/2000/svg">`;
  rows.forEach((r, i) => {
    let y = top + h;
    const x = gap + i * (w + gap);
    r.parts.forEach((p, k) => {
      const ph = (p / max) * h;
      y -= ph;
      if (ph > 0) out += `<rect x="${x}" y="${y}" width="${w}" height="${ph}" fill="${colors[k]}"><title>${esc(legend[k])}: ${esc(fmt(p))}</title></rect>`;
    });
    out += `<text x="${x + w / 2}" y="${top + h + 16}" text-anchor="middle" font-size="11">${esc(r.label)}</text>`;
  });
  out += '</svg><p class="legend">' + legend.map((l, k) => `<span style="--c:${colors[k]}">${esc(l)}</span>`).join(' ') + '</p>';
  return out;
}

// ---- network -------------------------------------------------------------
async function network() {
  const [nodes, chain] = await Promise.all([fetch('/v1/nodes').then((r) => r.json()), fetch('/v1/ledger/status').then((r) => r.json())]);
  window.consoleState.nodes = nodes.nodes;
  window.consoleState.chain = chain;
  $('#nodes tbody').innerHTML = nodes.nodes.map((n) => `<tr data-node="${esc(n.id)}" data-roles="${esc(n.roles.join(' '))}">
      <td><code title="${esc(n.key)}">${esc(n.id)}</code><br><small>${esc(n.addr)}</small></td>
      <td>${esc(n.roles.join(', '))}</td>
      <td>${n.state === 'up' ? '<span class="good">up</span>' : '<span class="bad">down</span>'}${n.admitted ? ', admitted' : ', not admitted'}</td>
      <td>${micro(n.stake)} / ${micro(n.stake_needed)}</td><td>${bytes(n.credited_bytes)}</td><td>${bytes(n.bytes_out)}</td>
      <td>${n.claims_accepted} ok, ${n.claims_rejected} refused</td>
      <td>${n.audits.passed} passed, ${n.audits.failed + n.audits.late} missed</td>
      <td>${n.probes.ok} ok, ${n.probes.failed} failed</td></tr>`).join('');
  const edges = nodes.nodes.filter((n) => n.roles.includes('edge'));
  $('#traffic').innerHTML = bars(
    edges.map((n) => ({ label: n.id.slice(0, 8), parts: [n.credited_bytes, Math.max(0, n.bytes_out - n.credited_bytes)] })),
    ['Credited (acknowledged by viewers)', 'Served, not credited'], bytes);
  $('#chain').innerHTML = [
    ['Chain', chain.chain_id], ['Height', chain.height], ['App hash', short(chain.app_hash)], ['Waiting transactions', chain.mempool],
    ['Validators', (chain.validators || []).map((v) => short(v.address) + ' (power ' + v.power + ')').join(', ') || '–'],
  ].map(([k, x]) => `<dt>${k}</dt><dd>${esc(x)}</dd>`).join('');
  const heights = [];
  for (let h = chain.height; h > 0 && heights.length < 8; h--) heights.push(h);
  // Each is `{block, …}` (the block with its commit facts).
  const blocks = await Promise.all(heights.map((h) => fetch('/v1/ledger/blocks/' + h).then((r) => (r.ok ? r.json() : null))));
  $('#blocks tbody').innerHTML = blocks.filter(Boolean).map(({ block: b }) =>
    `<tr><td>${b.height}</td><td><code>${short(b.proposer)}</code></td><td>${b.txs.length}</td><td>${new Date(b.time_ms).toLocaleTimeString()}</td></tr>`).join('');
  timer = setTimeout(network, 5000);
}

window.addEventListener('hashchange', route);
whoami();
route();
