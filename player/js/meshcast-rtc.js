// meshcast-rtc.js — fetch playlists and segments over a WebRTC data channel
// from a node the HUB picks (it may sit behind NAT and open no port), for
// hls.js, falling back to HTTPS per request when the channel fails. No
// build step: load it with a <script> tag after meshcast-acks.js.
//
//   const acks = await MeshcastAcks.start({ video: 'ID' });
//   const rtc = await MeshcastRtc.connect({ token: acks.token });
//   acks.post = rtc.poster();                    // acks ride the channel too
//   new Hls({ loader: rtc.loader(Hls, acks) }).loadSource(acks.url('master.m3u8'))
//   rtc.stats.paths                               // [[url, 'webrtc' | 'http'], …]
//
// Framing (docs/webrtc.md, control/src/rtc.rs): one data-channel message
// per frame: kind byte, request id (u32 big-endian), payload. Kinds:
// 1 request head (JSON), 2 response head (JSON), 3 body bytes, 4 end,
// 5 cancel, 6 error (text).
(function (global) {
  'use strict';
  const REQUEST = 1, RESPONSE = 2, BODY = 3, END = 4, CANCEL = 5, ERROR = 6;
  const MAX_CHUNK = 16 * 1024;
  const LABEL = 'meshcast';

  function frame(kind, id, payload) {
    const p = payload || new Uint8Array(0);
    const out = new Uint8Array(5 + p.length);
    out[0] = kind;
    new DataView(out.buffer).setUint32(1, id, false);
    out.set(p, 5);
    return out;
  }

  class Channel {
    constructor(pc, dc, node, hubBase) {
      this.pc = pc;
      this.dc = dc;
      this.node = node;
      this.hubBase = hubBase;
      this.nextId = 1;
      this.waiting = new Map();
      this.closed = false;
      this.stats = { node, paths: [], rtc: 0, http: 0, errors: [] };
      dc.binaryType = 'arraybuffer';
      dc.onmessage = (e) => this.onMessage(new Uint8Array(e.data));
      const down = (why) => {
        if (this.closed) return;
        this.closed = true;
        for (const w of this.waiting.values()) w.reject(new Error(why));
        this.waiting.clear();
      };
      dc.onclose = () => down('the data channel closed');
      dc.onerror = () => down('the data channel failed');
      pc.onconnectionstatechange = () => {
        if (['failed', 'disconnected', 'closed'].includes(pc.connectionState)) down('WebRTC ' + pc.connectionState);
      };
    }

    onMessage(msg) {
      if (msg.length < 5) return;
      const id = new DataView(msg.buffer, msg.byteOffset, msg.byteLength).getUint32(1, false);
      const w = this.waiting.get(id);
      if (!w) return;
      const payload = msg.subarray(5);
      if (msg[0] === RESPONSE) {
        w.head = JSON.parse(new TextDecoder().decode(payload));
      } else if (msg[0] === BODY) {
        w.parts.push(payload.slice());
        w.length += payload.length;
      } else if (msg[0] === END || msg[0] === ERROR) {
        this.waiting.delete(id);
        clearTimeout(w.timer);
        if (msg[0] === ERROR || !w.head) return w.reject(new Error('node: ' + new TextDecoder().decode(payload)));
        const body = new Uint8Array(w.length);
        let at = 0;
        for (const p of w.parts) { body.set(p, at); at += p.length; }
        const headers = {};
        for (const [k, v] of w.head.headers) headers[k.toLowerCase()] = v;
        w.resolve({ status: w.head.status, headers, body: body.buffer });
      }
    }

    // Waits while the channel holds more than `limit` unsent bytes.
    async drain(limit) {
      while (this.dc.bufferedAmount > limit && !this.closed) {
        await new Promise((ok) => { this.dc.bufferedAmountLowThreshold = limit / 2; this.dc.onbufferedamountlow = ok; });
      }
    }

    // One request: { status, headers (lower-case), body: ArrayBuffer }.
    async request(method, url, headers, body, timeoutMs) {
      if (this.closed || this.dc.readyState !== 'open') throw new Error('the data channel is not open');
      const u = new URL(url, global.location.href);
      const id = this.nextId++;
      const hs = Object.entries(Object.assign({ host: u.host }, headers || {}));
      const head = { method, path: u.pathname + u.search, headers: hs, body: !!body };
      const done = new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          this.waiting.delete(id);
          try { this.dc.send(frame(CANCEL, id)); } catch (e) {}
          reject(new Error('no response over WebRTC within ' + (timeoutMs || 10000) + ' ms'));
        }, timeoutMs || 10000);
        this.waiting.set(id, { resolve, reject, timer, head: null, parts: [], length: 0 });
      });
      this.dc.send(frame(REQUEST, id, new TextEncoder().encode(JSON.stringify(head))));
      if (body) {
        const bytes = typeof body === 'string' ? new TextEncoder().encode(body) : new Uint8Array(body);
        for (let at = 0; at < bytes.length; at += MAX_CHUNK) {
          await this.drain(1 << 20);
          this.dc.send(frame(BODY, id, bytes.subarray(at, at + MAX_CHUNK)));
        }
        this.dc.send(frame(END, id));
      }
      return done;
    }

    // For MeshcastAcks: `acks.post = rtc.poster()` sends ack batches over
    // the channel (HTTP when it fails).
    poster() {
      return async (url, body) => {
        try {
          const r = await this.request('POST', url, { 'content-type': 'application/json', 'content-length': String(body.length) }, body);
          return { ok: r.status < 300, status: r.status, json: JSON.parse(new TextDecoder().decode(r.body)) };
        } catch (e) {
          this.stats.errors.push('acks: ' + e);
          const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
          return { ok: r.ok, status: r.status, json: await r.json() };
        }
      };
    }

    // An hls.js loader: over the channel, or over HTTP (hls.js's own
    // loader) when the channel fails; every response's receipt goes to
    // `acks` (a MeshcastAcks session) when given.
    loader(Hls, acks) {
      const channel = this;
      const Base = acks ? acks.loader(Hls) : Hls.DefaultConfig.loader;
      return class MeshcastRtcLoader extends Base {
        load(context, config, callbacks) {
          const started = performance.now();
          const stats = this.stats || { loading: {}, parsing: {}, buffering: {} };
          this.stats = stats;
          const headers = {};
          if (context.rangeEnd) headers.range = 'bytes=' + context.rangeStart + '-' + (context.rangeEnd - 1);
          channel.request('GET', context.url, headers, null, config.timeout || 10000).then((r) => {
            if (r.status >= 400) throw new Error('HTTP ' + r.status + ' over WebRTC');
            channel.stats.rtc += 1;
            channel.stats.paths.push([context.url, 'webrtc']);
            const receipt = r.headers['meshcast-receipt'];
            if (receipt && acks) acks.receipt(receipt, r.body.byteLength, context.url).catch((e) => acks.stats.errors.push(String(e)));
            const data = context.responseType === 'arraybuffer' ? r.body : new TextDecoder().decode(r.body);
            const now = performance.now();
            stats.loading = { start: started, first: now, end: now };
            stats.loaded = stats.total = r.body.byteLength;
            callbacks.onSuccess({ url: context.url, data, code: r.status }, stats, context, null);
          }).catch((e) => {
            channel.stats.errors.push(context.url + ': ' + e);
            channel.stats.http += 1;
            channel.stats.paths.push([context.url, 'http']);
            super.load(context, config, callbacks);
          });
        }
      };
    }
  }

  // Opens a data channel to a node the HUB picks for `token`.
  async function connect(opts) {
    const hubBase = opts.hub || '';
    const pc = new RTCPeerConnection({ iceServers: opts.iceServers || [] });
    const dc = pc.createDataChannel(LABEL, { ordered: true });
    await pc.setLocalDescription(await pc.createOffer());
    // One round trip: wait for every candidate, then send the whole offer.
    await new Promise((ok) => {
      if (pc.iceGatheringState === 'complete') return ok();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && ok());
      setTimeout(ok, opts.gatherMs || 3000);
    });
    const resp = await fetch(hubBase + '/v1/rtc/sessions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token: opts.token, offer: { type: 'offer', sdp: pc.localDescription.sdp } }),
    });
    const v = await resp.json();
    if (!resp.ok) throw new Error('no WebRTC session: ' + (v.error || resp.status));
    await pc.setRemoteDescription(v.answer);
    await new Promise((ok, fail) => {
      if (dc.readyState === 'open') return ok();
      dc.addEventListener('open', ok);
      setTimeout(() => fail(new Error('the data channel did not open')), opts.openMs || 10000);
    });
    const channel = new Channel(pc, dc, v.node && v.node.id, hubBase);
    // The node's ICE candidates, to see how it offered itself.
    channel.stats.candidates = v.answer.sdp.split(/\r?\n/).filter((l) => l.startsWith('a=candidate'));
    return channel;
  }

  global.MeshcastRtc = { connect };
})(typeof window !== 'undefined' ? window : globalThis);
