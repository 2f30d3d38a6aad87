// @ts-check
/**
 * ingest.js: the browser client of the ingest server. One ES module, no dependencies, no build
 * step: `import { IngestClient } from "/ingest.js"` (the server serves this file; it is also
 * samples/ingest.js, to copy into your app). Types are JSDoc (checked by `tsc --checkJs`).
 *
 *   const client = new IngestClient({ server, apiKey, token });   // a user token
 *   const call = await client.join("livestream", "myshow");       // the call WebSocket
 *   call.addEventListener("participants", () => render(call.participants));
 *   call.addEventListener("stream", (e) => show(e.detail.userSessionId, e.detail.stream));
 *   await call.subscribe(userSessionId);                          // WebRTC, server offers
 *   const pub = await client.publish("livestream", "myshow", mediaStream);  // WHIP
 *   await client.goLive("livestream", "myshow", { start_hls: true });
 *   await client.sendReaction("livestream", "myshow", { type: "like", emoji_code: ":+1:" });
 *   const player = await playHls(video, playlistUrl, window.Hls);  // hls.js given by the page
 *
 * Every failure is an IngestError carrying the server's `code` and `message` (REST: the API's
 * ErrorResponse `{code, message, StatusCode, duration, retryable}`; WebSocket: `{code, message}`).
 * Tokens never go into URLs: REST and WHIP/WHEP send them in `Authorization`, the WebSocket in
 * its first message.
 */

/** How long ICE gathering may take before the offer/answer is sent with what we have. */
export const ICE_GATHERING_TIMEOUT_MS = 3000;
/** WebSocket keep-alive interval. */
export const PING_INTERVAL_MS = 20000;
/** How long playHls waits for the playlist to exist (the server answers 404 until then). */
export const HLS_WAIT_MS = 30000;
/** Holes in the buffered media (seconds) hls.js jumps over instead of stalling. */
export const HLS_MAX_BUFFER_HOLE_S = 0.5;
/** Fatal hls.js errors playHls recovers from (then it gives up and reports them). */
export const HLS_MAX_RECOVERIES = 5;

/**
 * The API's error shape, or the call WebSocket's `{type: "error", code, message}`.
 * `code` is a number for REST/WHIP/WHEP (e.g. 17 permission denied) and a string on the
 * WebSocket (e.g. "not_allowed"); `status` is the HTTP status (0: the server was not reached;
 * for a WebSocket close, its close code).
 */
export class IngestError extends Error {
  /**
   * @param {string} message
   * @param {{code?: number|string, status?: number, retryable?: boolean, duration?: string}} [info]
   */
  constructor(message, info = {}) {
    super(message);
    this.name = "IngestError";
    /** @type {number|string} */
    this.code = info.code ?? -1;
    /** @type {number} */
    this.status = info.status ?? 0;
    /** @type {boolean} */
    this.retryable = info.retryable ?? false;
    /** @type {string} */
    this.duration = info.duration ?? "";
  }
}

/**
 * The error of a non-2xx response, from its ErrorResponse body when it has one.
 * @param {Response} resp
 * @returns {Promise<IngestError>}
 */
export async function errorOf(resp) {
  const text = await resp.text();
  /** @type {any} */
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (e) {
    /* not JSON */
  }
  if (body && typeof body.message === "string") {
    return new IngestError(body.message, {
      code: body.code,
      status: body.StatusCode ?? resp.status,
      retryable: body.retryable,
      duration: body.duration,
    });
  }
  return new IngestError(text || resp.statusText || `HTTP ${resp.status}`, { status: resp.status });
}

/**
 * `fetch` that turns network failures into IngestError (status 0) and non-2xx into the server's.
 * @param {string} url
 * @param {RequestInit} init
 * @returns {Promise<Response>}
 */
async function request(url, init) {
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (e) {
    throw new IngestError(`cannot reach ${new URL(url).origin}: ${e}`, { status: 0, retryable: true });
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp;
}

/**
 * @param {RTCPeerConnection} pc
 * @returns {Promise<void>}
 */
function iceGathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ICE_GATHERING_TIMEOUT_MS); // send what we have
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

/**
 * The WHIP/WHEP exchange (RFC 9725, no trickle): offer with every candidate, POST it, apply the
 * answer. Closes ``pc`` if anything fails.
 * @param {RTCPeerConnection} pc
 * @param {string} url
 * @param {string} token
 * @returns {Promise<string>} the session's URL (``Location``), for DELETE
 */
async function offerTo(pc, url, token) {
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    const resp = await request(url, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
      body: /** @type {RTCSessionDescription} */ (pc.localDescription).sdp,
    });
    const location = new URL(resp.headers.get("Location") || "", url).toString();
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
    return location;
  } catch (e) {
    pc.close();
    throw e;
  }
}

/**
 * A token shown without its secret part: `eyJhbGci…a1b2c3`.
 * @param {string} token
 * @returns {string}
 */
export function maskToken(token) {
  if (!token) return "";
  return token.length <= 16 ? "…" : `${token.slice(0, 8)}…${token.slice(-6)}`;
}

/**
 * @typedef {{id: string, name?: string, role?: string, image?: string, custom?: object}} User
 * @typedef {{user: User, user_session_id: string, role: string, joined_at: string,
 *            source?: string, tracks?: string[], health?: Health|null}} Participant
 * @typedef {{transport: string, peer?: string, bitrate_kbps: number, av_skew_ms?: number|null,
 *            encoder?: string|null, hints: string[], packet_loss?: number|null, rtt_ms?: number|null,
 *            video?: {codec?: string, resolution?: string, fps?: number|null, bitrate_kbps: number,
 *                     keyframe_interval_s?: number|null, b_frames: boolean}|null,
 *            audio?: {codec?: string, sample_rate?: number, channels?: number,
 *                     bitrate_kbps: number}|null,
 *            webrtc?: {video_transcoded: boolean}|null}} Health
 * @typedef {{address: string}} Address
 * @typedef {{cid: string, id: string, type: string, backstage: boolean, recording: boolean,
 *            ingress: {rtmp: Address, whip: Address},
 *            egress: {broadcasting: boolean, hls: {playlist_url: string, status: string}},
 *            [key: string]: any}} Call
 * @typedef {{call: Call, members: any[], own_capabilities: string[]}} CallState
 * @typedef {{urls: string|string[], username?: string, credential?: string}} IceServer
 * @typedef {{start_hls?: boolean, start_recording?: boolean}} GoLiveOptions
 * @typedef {{continue_hls?: boolean, continue_recording?: boolean}} StopLiveOptions
 * @typedef {{type: string, emoji_code?: string, custom?: object}} Reaction
 */

/** The REST API (/api/v2), WHIP and WHEP for one user, plus joining calls. */
export class IngestClient {
  /**
   * @param {{server: string, apiKey: string, token: string}} options  server: e.g.
   *   "http://127.0.0.1:8080"; apiKey: the server's API key; token: a user token (JWT).
   */
  constructor({ server, apiKey, token }) {
    /** @type {string} */
    this.server = server.replace(/\/+$/, "");
    /** @type {string} */
    this.apiKey = apiKey;
    /** @type {string} */
    this.token = token;
  }

  /**
   * Development mode only: a token (and the API key) for a user name, from the server itself.
   * With role "host" and a call, the server also makes the user a host of that call (creating
   * it). A server with configured credentials refuses with 403 (IngestError code 17).
   * @param {string} server
   * @param {string} userId
   * @param {{callType?: string, callId?: string, role?: "host"|"user"}} [options]
   * @returns {Promise<IngestClient>}
   */
  static async development(server, userId, options = {}) {
    const base = server.replace(/\/+$/, "");
    const resp = await request(`${base}/api/v2/dev/token`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        user_id: userId,
        call_type: options.callType ?? null,
        call_id: options.callId ?? null,
        role: options.role ?? "host",
      }),
    });
    const body = await resp.json();
    return new IngestClient({ server: base, apiKey: body.api_key, token: body.token });
  }

  /**
   * Is the server in development mode (the dev token endpoint works)?
   * @param {string} server
   * @returns {Promise<boolean>}
   */
  static async isDevelopment(server) {
    const resp = await request(`${server.replace(/\/+$/, "")}/api/v2/dev`, { method: "GET" });
    return Boolean((await resp.json()).development);
  }

  /** The user id in the token (not verified here: the server does that). */
  get userId() {
    try {
      const part = this.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return String(JSON.parse(atob(part)).user_id ?? "");
    } catch (e) {
      return "";
    }
  }

  /**
   * One REST call: `/api/v2{path}` with the API key and the user's token.
   * @param {string} method
   * @param {string} path
   * @param {object} [body]
   * @returns {Promise<any>}
   */
  async api(method, path, body) {
    const url = new URL(`${this.server}/api/v2${path}`);
    url.searchParams.set("api_key", this.apiKey);
    /** @type {Record<string, string>} */
    const headers = { Authorization: this.token };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await request(url.toString(), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return resp.json();
  }

  /**
   * @param {string} type
   * @param {string} id
   */
  callPath(type, id) {
    return `/video/call/${encodeURIComponent(type)}/${encodeURIComponent(id)}`;
  }

  /**
   * @param {string} type
   * @param {string} id
   * @returns {Promise<CallState>}
   */
  getCall(type, id) {
    return this.api("GET", this.callPath(type, id));
  }

  /**
   * Leave backstage (viewers may watch); optionally start HLS and recording.
   * @param {string} type
   * @param {string} id
   * @param {GoLiveOptions} [options]
   * @returns {Promise<{call: Call}>}
   */
  goLive(type, id, options = {}) {
    return this.api("POST", `${this.callPath(type, id)}/go_live`, options);
  }

  /**
   * Back to backstage; HLS and recording stop unless asked to continue.
   * @param {string} type
   * @param {string} id
   * @param {StopLiveOptions} [options]
   * @returns {Promise<{call: Call}>}
   */
  stopLive(type, id, options = {}) {
    return this.api("POST", `${this.callPath(type, id)}/stop_live`, options);
  }

  /**
   * The call's live participants with each publisher's health (bitrate, fps, hints, ...).
   * @param {string} type
   * @param {string} id
   * @returns {Promise<Participant[]>}
   */
  async participants(type, id) {
    return (await this.api("GET", `${this.callPath(type, id)}/participants`)).participants;
  }

  /**
   * @param {string} type
   * @param {string} id
   * @param {Reaction} reaction e.g. {type: "like", emoji_code: ":thumbsup:"}
   */
  sendReaction(type, id, reaction) {
    return this.api("POST", `${this.callPath(type, id)}/reaction`, reaction);
  }

  /**
   * A custom event to everyone in the call (arrives as a "custom" event).
   * @param {string} type
   * @param {string} id
   * @param {object} custom any JSON object, e.g. {type: "message", text: "hello"}
   */
  sendEvent(type, id, custom) {
    return this.api("POST", `${this.callPath(type, id)}/event`, { custom });
  }

  /**
   * Join a call over the call WebSocket: participants, events, subscriptions.
   * @param {string} type
   * @param {string} id
   * @returns {Promise<CallConnection>} once the server said "joined"
   */
  async join(type, id) {
    const conn = new CallConnection(this, type, id);
    await conn.opened;
    return conn;
  }

  /**
   * Publish a MediaStream (camera + microphone) into the call over WHIP.
   * @param {string} type
   * @param {string} id
   * @param {MediaStream} stream
   * @param {{iceServers?: IceServer[], url?: string}} [options] url: the call's
   *   `ingress.whip.address` (default: {server}/whip/{type}/{id})
   * @returns {Promise<WhipPublication>}
   */
  async publish(type, id, stream, options = {}) {
    const url =
      options.url || `${this.server}/whip/${encodeURIComponent(type)}/${encodeURIComponent(id)}`;
    const pc = new RTCPeerConnection({ iceServers: options.iceServers ?? [] });
    for (const track of stream.getTracks()) {
      pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
    }
    return new WhipPublication(pc, await offerTo(pc, url, this.token), stream);
  }

  /**
   * Watch one publisher over WHEP (a single stream, no WebSocket).
   * @param {string} type
   * @param {string} id
   * @param {string} userId the publisher's user id
   * @param {{iceServers?: IceServer[]}} [options]
   * @returns {Promise<WhepPlayback>}
   */
  async watch(type, id, userId, options = {}) {
    const path = [type, id, userId].map(encodeURIComponent).join("/");
    const url = `${this.server}/whep/${path}`;
    const pc = new RTCPeerConnection({ iceServers: options.iceServers ?? [] });
    const stream = new MediaStream();
    pc.ontrack = (e) => stream.addTrack(e.track);
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    return new WhepPlayback(pc, await offerTo(pc, url, this.token), stream);
  }
}

/** A WHIP publish in progress: `stop()` ends it (DELETE on the session). */
export class WhipPublication {
  /**
   * @param {RTCPeerConnection} pc
   * @param {string} location
   * @param {MediaStream} stream
   */
  constructor(pc, location, stream) {
    this.pc = pc;
    this.location = location;
    this.stream = stream;
  }

  /** "new" | "connecting" | "connected" | "disconnected" | "failed" | "closed" */
  get state() {
    return this.pc.connectionState;
  }

  async stop() {
    this.pc.close();
    await fetch(this.location, { method: "DELETE" }).catch(() => {}); // the server times out
  }
}

/** A WHEP playback: `stream` gets the tracks; `stop()` ends it. */
export class WhepPlayback extends WhipPublication {}

/**
 * The call WebSocket (`/video/connect`): the participant list kept up to date, every call event
 * re-dispatched, one RTCPeerConnection per subscribed participant (the server offers).
 *
 * Events (CustomEvent, `detail` shown):
 * - "joined" (the server's joined message), "participants" (the Map changed),
 * - "stream" {userSessionId, stream, participant}: a subscribed participant's media (once per
 *   track: the same MediaStream gains its audio and video),
 * - "streamended" {userSessionId, reason},
 * - "live" {backstage: boolean}: call.live_started / call.live_ended / back to backstage,
 * - every server event by its type ("call.reaction_new", "custom", "call.session_participant_joined",
 *   "call.hls_broadcasting_started", ...), and "event" for all of them,
 * - "error" {error: IngestError}, "close" {code, reason}.
 */
export class CallConnection extends EventTarget {
  /**
   * @param {IngestClient} client
   * @param {string} type
   * @param {string} id
   */
  constructor(client, type, id) {
    super();
    this.client = client;
    this.type = type;
    this.id = id;
    /** @type {Map<string, Participant>} by user_session_id */
    this.participants = new Map();
    /** @type {Map<string, RTCPeerConnection>} */
    this.peers = new Map();
    /** @type {Map<string, MediaStream>} */
    this.streams = new Map();
    /** @type {IceServer[]} */
    this.iceServers = [];
    /** @type {string[]} */
    this.capabilities = [];
    this.backstage = true;
    this.userId = "";
    this.closed = false;
    /** @type {Array<{usid: string, resolve: () => void, reject: (e: Error) => void}>} */
    this._pending = [];
    const url = new URL(`${client.server.replace(/^http/, "ws")}/video/connect`);
    url.searchParams.set("api_key", client.apiKey);
    url.searchParams.set("call_type", type);
    url.searchParams.set("call_id", id);
    this.ws = new WebSocket(url.toString()); // the token goes in the first message, not the URL
    /** @type {() => void} */
    this._joined = () => {};
    /** @type {(e: Error) => void} */
    this._refused = () => {};
    /** @type {Promise<void>} */
    this.opened = new Promise((resolve, reject) => {
      this._joined = resolve;
      this._refused = reject;
    });
    /** @type {ReturnType<typeof setInterval>|undefined} */
    this._ping = undefined;
    this.ws.onopen = () => {
      this._send({ type: "auth", token: client.token });
      this._ping = setInterval(() => this._send({ type: "ping" }), PING_INTERVAL_MS);
    };
    this.ws.onmessage = (e) => this._onMessage(JSON.parse(e.data));
    this.ws.onclose = (e) => this._onClose(e.code, e.reason);
  }

  /** @param {object} msg */
  _send(msg) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  /**
   * @param {string} type
   * @param {any} detail
   */
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * Receive a participant's media; resolves once the server accepted ("subscribed"). The
   * "stream" event follows when media is negotiated. In backstage, viewers without
   * join-backstage are refused (IngestError code "not_allowed"): wait for the "live" event.
   * @param {string} userSessionId
   * @returns {Promise<void>}
   */
  subscribe(userSessionId) {
    return new Promise((resolve, reject) => {
      this._pending.push({ usid: userSessionId, resolve, reject });
      this._send({ type: "subscribe", user_session_id: userSessionId });
    });
  }

  /** @param {string} userSessionId */
  unsubscribe(userSessionId) {
    this._send({ type: "unsubscribe", user_session_id: userSessionId });
    this._closePeer(userSessionId, "unsubscribed");
  }

  /** Leave: closes the WebSocket and every peer connection. */
  close() {
    this.ws.close(1000, "bye");
    this._onClose(1000, "closed by the client");
  }

  /** @param {string} usid @param {string} reason */
  _closePeer(usid, reason) {
    const pc = this.peers.get(usid);
    if (!pc) return;
    pc.close();
    this.peers.delete(usid);
    this.streams.delete(usid);
    this._emit("streamended", { userSessionId: usid, reason });
  }

  /** @param {number} code @param {string} reason */
  _onClose(code, reason) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this._ping);
    for (const usid of [...this.peers.keys()]) this._closePeer(usid, "closed");
    const error = new IngestError(reason || `the call WebSocket closed (${code})`, {
      code: "closed",
      status: code,
    });
    this._refused(error);
    for (const p of this._pending.splice(0)) p.reject(error);
    this._emit("close", { code, reason });
  }

  /** @param {any} msg */
  async _onOffer(msg) {
    const usid = msg.user_session_id;
    const old = this.peers.get(usid);
    if (old) old.close(); // a new offer replaces the previous connection
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.peers.set(usid, pc);
    const stream = new MediaStream();
    this.streams.set(usid, stream);
    pc.ontrack = (e) => {
      stream.addTrack(e.track);
      this._emit("stream", { userSessionId: usid, stream, participant: this.participants.get(usid) });
    };
    await pc.setRemoteDescription({ type: "offer", sdp: decodableOffer(msg.sdp) });
    await pc.setLocalDescription(await pc.createAnswer());
    await iceGathered(pc);
    this._send({
      type: "answer",
      user_session_id: usid,
      offer_id: msg.offer_id,
      sdp: /** @type {RTCSessionDescription} */ (pc.localDescription).sdp,
    });
  }

  /** @param {any} msg */
  _onMessage(msg) {
    switch (msg.type) {
      case "joined":
        this.userId = msg.user_id;
        this.backstage = Boolean(msg.backstage);
        this.capabilities = msg.own_capabilities || [];
        this.iceServers = msg.ice_servers || [];
        this.participants.clear();
        for (const p of msg.participants || []) this.participants.set(p.user_session_id, p);
        this._joined();
        this._emit("joined", msg);
        this._emit("participants", this.participants);
        return;
      case "call.session_participant_joined":
        this.participants.set(msg.participant.user_session_id, msg.participant);
        this._emit("participants", this.participants);
        break;
      case "call.session_participant_left":
        this.participants.delete(msg.participant.user_session_id);
        this._closePeer(msg.participant.user_session_id, "left");
        this._emit("participants", this.participants);
        break;
      case "call.live_started":
        this.backstage = false;
        this._emit("live", { backstage: false });
        break;
      case "call.live_ended":
        this.backstage = true;
        this._emit("live", { backstage: true });
        break;
      case "call.updated": {
        // stop_live sends call.updated with backstage: true (there is no call.live_ended)
        const backstage = msg.call && "backstage" in msg.call ? msg.call.backstage : msg.backstage;
        if (typeof backstage === "boolean" && backstage !== this.backstage) {
          this.backstage = backstage;
          this._emit("live", { backstage });
        }
        break;
      }
      case "subscribed": {
        const i = this._pending.findIndex((p) => p.usid === msg.user_session_id);
        if (i >= 0) this._pending.splice(i, 1)[0].resolve();
        return;
      }
      case "offer":
        this._onOffer(msg).catch((e) =>
          this._emit("error", { error: new IngestError(`answer failed: ${e}`, { code: "bad_answer" }) }),
        );
        return;
      case "unsubscribed":
        this._closePeer(msg.user_session_id, msg.reason || "unsubscribed");
        return;
      case "error": {
        const error = new IngestError(msg.message, { code: msg.code });
        const pending = this._pending.shift(); // errors are answers in order
        if (pending) pending.reject(error);
        this._emit("error", { error });
        return;
      }
      case "pong":
        return;
      default:
        break;
    }
    this._emit(msg.type, msg);
    this._emit("event", msg);
  }
}

/**
 * The server's offer names an RTMP stream's real H.264 profile (e.g. High, 64001f). Browsers
 * whose receiver capabilities list only Baseline/Main (headless Chromium without a GPU) reject
 * such a section, although their software decoder plays High: the profile is then rewritten to
 * Constrained Baseline (42e01f), the entry the server maps back to the stream (as WHEP does).
 * @param {string} sdp
 * @returns {string}
 */
export function decodableOffer(sdp) {
  const caps = RTCRtpReceiver.getCapabilities("video");
  const known = new Set(
    (caps ? caps.codecs : [])
      .filter((c) => c.mimeType.toLowerCase() === "video/h264")
      .map((c) => (/profile-level-id=([0-9a-f]{6})/i.exec(c.sdpFmtpLine || "") || [])[1])
      .filter(Boolean)
      .map((p) => p.toLowerCase()),
  );
  if (!known.has("42e01f")) return sdp;
  return sdp.replace(/profile-level-id=([0-9a-fA-F]{6})/g, (all, plid) =>
    known.has(plid.toLowerCase()) ? all : "profile-level-id=42e01f",
  );
}

/**
 * Play an HLS playlist in a <video>: hls.js when the page gives it (`window.Hls` from
 * /vendor/hls.min.js) and the browser has MSE, else the browser's own HLS (Safari). Waits for
 * the playlist to exist first (the server answers 404 until its first segment is cut).
 * @param {HTMLVideoElement} video
 * @param {string} url call.egress.hls.playlist_url
 * @param {any} [Hls] the hls.js constructor
 * @param {{onFatal?: (error: IngestError) => void}} [options] onFatal: hls.js gave up after
 *   HLS_MAX_RECOVERIES recoveries (code "hls_fatal", the message names hls.js's error)
 * @returns {Promise<{hls: any, errors: string[], destroy: () => void}>} errors: hls.js's
 *   (non-fatal ones are retried by hls.js itself)
 */
export async function playHls(video, url, Hls, options = {}) {
  if (!url) throw new IngestError("HLS is not running for this call: go live with HLS on first");
  const deadline = Date.now() + HLS_WAIT_MS;
  for (;;) {
    const resp = await fetch(url, { cache: "no-store" }).catch(() => null);
    if (resp && resp.ok) break;
    if (Date.now() > deadline) {
      throw resp ? await errorOf(resp) : new IngestError(`cannot reach ${url}`);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  if (Hls && Hls.isSupported()) {
    // maxBufferHole: a live composite may leave short holes (an audio frame missing);
    // hls.js jumps over holes up to this size instead of stalling on them.
    const hls = new Hls({ lowLatencyMode: true, maxBufferHole: HLS_MAX_BUFFER_HOLE_S });
    /** @type {string[]} */
    const errors = [];
    let recoveries = 0;
    hls.on(Hls.Events.ERROR, (/** @type {any} */ _e, /** @type {any} */ d) => {
      if (errors.length < 100) errors.push(`${d.details}${d.fatal ? " (fatal)" : ""}`);
      if (!d.fatal) return;
      if (recoveries >= HLS_MAX_RECOVERIES) {
        if (recoveries++ === HLS_MAX_RECOVERIES && options.onFatal) {
          options.onFatal(new IngestError(`HLS playback failed: ${d.details}`, { code: "hls_fatal" }));
        }
        return;
      }
      recoveries += 1; // hls.js's documented recovery: media errors recover, network reloads
      if (d.type === Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
      else if (d.type === Hls.ErrorTypes.NETWORK_ERROR) hls.startLoad();
    });
    hls.loadSource(url);
    hls.attachMedia(video);
    video.play().catch(() => {});
    return { hls, errors, destroy: () => hls.destroy() };
  }
  if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = url;
    video.play().catch(() => {});
    return { hls: null, errors: [], destroy: () => video.removeAttribute("src") };
  }
  throw new IngestError("this browser cannot play HLS without hls.js: load /vendor/hls.min.js");
}
