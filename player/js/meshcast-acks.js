// meshcast-acks.js — proof-of-delivery plugin for hls.js, dash.js and
// Shaka Player. No build step: load it with a <script> tag.
//
//   const s = await MeshcastAcks.start({ video: 'ID' });   // session key + token
//   // hls.js:   new Hls({ loader: s.loader(Hls) }).loadSource(s.url('master.m3u8'))
//   // dash.js:  player.addResponseInterceptor(s.dashInterceptor())
//   // Shaka:    player.getNetworkingEngine().registerResponseFilter(s.shakaFilter())
//   video.addEventListener('ended', () => s.flush());
//
// The session key is a WebCrypto Ed25519 key that never leaves the page.
// Each response's Meshcast-Receipt is checked (an edge the HUB steered this
// viewer to, byte count) and acknowledged in batches with POST /v1/acks,
// each ack signed with the session key. Receipt layout:
// control/src/receipt.rs (the edge's seal is its own to check; the edge
// signs for its receipts when it claims them).
(function (global) {
  'use strict';
  const ACK_CONTEXT = new TextEncoder().encode('meshcast-ack-v1\n');
  const HEAD = 3 + 32 + 16 + 16; // "MR4" node token content
  const FIXED_V3 = 3 + 32 + 16 + 32 + 8 + 8 + 8 + 8 + 2;
  const SEAL = 16;
  const MAX_PATH = 1024;

  function b64uDecode(s) {
    const b64 = s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4);
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function b64uEncode(bytes) {
    let bin = '';
    for (const b of new Uint8Array(bytes)) bin += String.fromCharCode(b);
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function hex(bytes) {
    return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, '0')).join('');
  }
  function u64(view, at) {
    return Number(view.getBigUint64(at, false));
  }

  // An unsigned LEB128 varint at wire[at] in its shortest form, as
  // [value, next offset], or null. Values stay exact up to 2^53, past any
  // length or time a receipt carries.
  function varint(wire, at) {
    let value = 0;
    for (let i = 0; i < 10 && at + i < wire.length; i++) {
      const b = wire[at + i];
      value += (b & 0x7f) * 2 ** (7 * i);
      if ((b & 0x80) === 0) return b === 0 && i > 0 ? null : [value, at + i + 1];
    }
    return null;
  }

  // Fields of a receipt's wire bytes, or null if they are not one. "MR4":
  // node, token, content, five varints (time, serial, start, len, path
  // length), path, and the edge's seal (its own MAC, which the player just
  // passes back). "MR3", the fixed layout before it, is still read.
  function parseReceipt(wire) {
    const magic = String.fromCharCode(wire[0], wire[1], wire[2]);
    if (magic === 'MR3') return parseReceiptV3(wire);
    if (magic !== 'MR4' || wire.length < HEAD + 5 + SEAL) return null;
    const numbers = [];
    let at = HEAD;
    for (let i = 0; i < 5; i++) {
      const v = varint(wire, at);
      if (v === null) return null;
      numbers.push(v[0]);
      at = v[1];
    }
    const pathLen = numbers[4];
    if (pathLen > MAX_PATH || wire.length !== at + pathLen + SEAL) return null;
    return {
      node: wire.slice(3, 35),
      len: numbers[3],
      path: new TextDecoder().decode(wire.slice(at, at + pathLen)),
    };
  }

  function parseReceiptV3(wire) {
    if (wire.length < FIXED_V3 + SEAL) return null;
    const view = new DataView(wire.buffer, wire.byteOffset, wire.byteLength);
    const pathLen = view.getUint16(FIXED_V3 - 2, false);
    if (wire.length !== FIXED_V3 + pathLen + SEAL) return null;
    return {
      node: wire.slice(3, 35),
      len: u64(view, 107),
      path: new TextDecoder().decode(wire.slice(FIXED_V3, FIXED_V3 + pathLen)),
    };
  }

  // The edge to play from: this page's own if the token names it (or
  // names none), else the first edge the HUB steered this viewer to — no
  // other edge will serve the token.
  function edgeBase(edges) {
    if (!edges || edges.length === 0) return '';
    const here = global.location && global.location.origin;
    if (edges.some((e) => new URL(e.url).origin === here)) return '';
    return new URL(edges[0].url).origin;
  }

  class Session {
    constructor(opts, keys, token, edges) {
      this.video = opts.video;
      this.base = edgeBase(edges);
      this.ackUrl = opts.ackUrl || this.base + '/v1/acks';
      this.batchSize = opts.batchSize || 8;
      this.keys = keys;
      this.token = token;
      this.pending = [];
      this.post = null;
      // The edges the HUB steered this viewer to (empty: any edge).
      this.edgeKeys = new Set((edges || []).map((e) => e.key).filter(Boolean));
      this.stats = { receipts: 0, bytes: 0, acked: 0, ackedBytes: 0, refused: [], errors: [] };
      this.timer = setInterval(() => this.flush(), opts.flushMs || 2000);
      global.addEventListener('pagehide', () => this.flush(true));
    }

    // A URL under the token: url('master.m3u8') → [edge]/t/{token}/v/{id}/master.m3u8
    url(rest) {
      return this.base + '/t/' + this.token + '/v/' + this.video + '/' + rest;
    }

    // Checks a receipt against what arrived, then queues its ack.
    async receipt(header, receivedBytes, url) {
      const wire = b64uDecode(header);
      const r = parseReceipt(wire);
      if (!r) throw new Error('malformed Meshcast-Receipt on ' + url);
      if (this.edgeKeys.size > 0 && !this.edgeKeys.has(hex(r.node))) {
        throw new Error('Meshcast-Receipt names an edge the HUB did not steer this viewer to: ' + url);
      }
      if (r.len !== receivedBytes) throw new Error('receipt says ' + r.len + ' bytes, ' + receivedBytes + ' arrived: ' + url);
      this.stats.receipts += 1;
      this.stats.bytes += receivedBytes;
      const message = new Uint8Array(ACK_CONTEXT.length + wire.length);
      message.set(ACK_CONTEXT, 0);
      message.set(wire, ACK_CONTEXT.length);
      const sig = await crypto.subtle.sign({ name: 'Ed25519' }, this.keys.privateKey, message);
      this.pending.push({ receipt: header, sig: b64uEncode(sig) });
      if (this.pending.length >= this.batchSize) this.flush();
    }

    // Sends queued acks; resolves when the edge has answered.
    async flush(unloading) {
      if (this.pending.length === 0) return this.stats;
      const acks = this.pending.splice(0);
      const body = JSON.stringify({ token: this.token, acks });
      try {
        // `post` (e.g. MeshcastRtc's poster) sends them another way.
        const { ok, status, json: v } = this.post && !unloading
          ? await this.post(this.ackUrl, body)
          : await fetch(this.ackUrl, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body,
            keepalive: !!unloading,
          }).then(async (r) => ({ ok: r.ok, status: r.status, json: await r.json() }));
        if (!ok) throw new Error('acks refused: ' + (v.error || status));
        this.stats.acked += v.accepted;
        this.stats.ackedBytes += v.bytes;
        for (const r of v.refused || []) this.stats.refused.push(r.reason);
      } catch (e) {
        this.stats.errors.push(String(e));
      }
      return this.stats;
    }

    // A response's receipt, if it has one, checked and queued for an ack.
    // `headers` is a plain object (dash.js, Shaka) with any key case.
    onResponse(headers, data, url) {
      let header = null;
      for (const k of Object.keys(headers || {})) {
        if (k.toLowerCase() === 'meshcast-receipt') header = headers[k];
      }
      if (!header) return;
      const n = typeof data === 'string' ? new TextEncoder().encode(data).length : data.byteLength;
      this.receipt(header, n, url).catch((e) => this.stats.errors.push(String(e)));
    }

    // For dash.js 5: player.addResponseInterceptor(session.dashInterceptor()).
    dashInterceptor() {
      return (response) => {
        this.onResponse(response.headers, response.data, response.request && response.request.url);
        return Promise.resolve(response);
      };
    }

    // For Shaka Player: networkingEngine.registerResponseFilter(session.shakaFilter()).
    shakaFilter() {
      return (type, response) => this.onResponse(response.headers, response.data, response.uri);
    }

    // An hls.js loader class that hands every response to receipt().
    loader(Hls) {
      const session = this;
      const Base = Hls.DefaultConfig.loader;
      return class MeshcastLoader extends Base {
        load(context, config, callbacks) {
          const onSuccess = callbacks.onSuccess;
          const wrapped = Object.assign({}, callbacks, {
            onSuccess(response, stats, ctx, details) {
              const xhr = details && details.getResponseHeader ? details : null;
              const header = xhr && xhr.getResponseHeader('Meshcast-Receipt');
              if (header) {
                const data = response.data;
                const n = typeof data === 'string' ? new TextEncoder().encode(data).length : data.byteLength;
                session.receipt(header, n, ctx.url).catch((e) => session.stats.errors.push(String(e)));
              }
              onSuccess(response, stats, ctx, details);
            },
          });
          super.load(context, config, wrapped);
        }
      };
    }
  }

  // Makes a session key and gets a playback token for it from the hub
  // (through the edge, which forwards /v1/videos/… to its origin).
  async function start(opts) {
    if (!global.crypto || !crypto.subtle) throw new Error('WebCrypto needs a secure context (https or localhost)');
    const keys = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    const pub = await crypto.subtle.exportKey('raw', keys.publicKey);
    const tokenUrl = opts.tokenUrl || '/v1/videos/' + opts.video + '/tokens';
    const resp = await fetch(tokenUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ session: hex(pub) }),
    });
    const v = await resp.json();
    if (!resp.ok || !v.token) throw new Error('no playback token: ' + (v.error || resp.status));
    return new Session(opts, keys, v.token, v.edges);
  }

  global.MeshcastAcks = { start, parseReceipt };
})(typeof window !== 'undefined' ? window : globalThis);
