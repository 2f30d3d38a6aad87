/**
 * The error of a non-2xx response, from its ErrorResponse body when it has one.
 * @param {Response} resp
 * @returns {Promise<IngestError>}
 */
export function errorOf(resp: Response): Promise<IngestError>;
/**
 * A token shown without its secret part: `eyJhbGci…a1b2c3`.
 * @param {string} token
 * @returns {string}
 */
export function maskToken(token: string): string;
/**
 * The server's offer names an RTMP stream's real H.264 profile (e.g. High, 64001f). Browsers
 * whose receiver capabilities list only Baseline/Main (headless Chromium without a GPU) reject
 * such a section, although their software decoder plays High: the profile is then rewritten to
 * Constrained Baseline (42e01f), the entry the server maps back to the stream (as WHEP does).
 * @param {string} sdp
 * @returns {string}
 */
export function decodableOffer(sdp: string): string;
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
export function playHls(video: HTMLVideoElement, url: string, Hls?: any, options?: {
    onFatal?: (error: IngestError) => void;
}): Promise<{
    hls: any;
    errors: string[];
    destroy: () => void;
}>;
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
export const ICE_GATHERING_TIMEOUT_MS: 3000;
/** WebSocket keep-alive interval. */
export const PING_INTERVAL_MS: 20000;
/** How long playHls waits for the playlist to exist (the server answers 404 until then). */
export const HLS_WAIT_MS: 30000;
/** Holes in the buffered media (seconds) hls.js jumps over instead of stalling. */
export const HLS_MAX_BUFFER_HOLE_S: 0.5;
/** Fatal hls.js errors playHls recovers from (then it gives up and reports them). */
export const HLS_MAX_RECOVERIES: 5;
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
    constructor(message: string, info?: {
        code?: number | string;
        status?: number;
        retryable?: boolean;
        duration?: string;
    });
    /** @type {number|string} */
    code: number | string;
    /** @type {number} */
    status: number;
    /** @type {boolean} */
    retryable: boolean;
    /** @type {string} */
    duration: string;
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
     * Development mode only: a token (and the API key) for a user name, from the server itself.
     * With role "host" and a call, the server also makes the user a host of that call (creating
     * it). A server with configured credentials refuses with 403 (IngestError code 17).
     * @param {string} server
     * @param {string} userId
     * @param {{callType?: string, callId?: string, role?: "host"|"user"}} [options]
     * @returns {Promise<IngestClient>}
     */
    static development(server: string, userId: string, options?: {
        callType?: string;
        callId?: string;
        role?: "host" | "user";
    }): Promise<IngestClient>;
    /**
     * Is the server in development mode (the dev token endpoint works)?
     * @param {string} server
     * @returns {Promise<boolean>}
     */
    static isDevelopment(server: string): Promise<boolean>;
    /**
     * @param {{server: string, apiKey: string, token: string}} options  server: e.g.
     *   "http://127.0.0.1:8080"; apiKey: the server's API key; token: a user token (JWT).
     */
    constructor({ server, apiKey, token }: {
        server: string;
        apiKey: string;
        token: string;
    });
    /** @type {string} */
    server: string;
    /** @type {string} */
    apiKey: string;
    /** @type {string} */
    token: string;
    /** The user id in the token (not verified here: the server does that). */
    get userId(): string;
    /**
     * One REST call: `/api/v2{path}` with the API key and the user's token.
     * @param {string} method
     * @param {string} path
     * @param {object} [body]
     * @returns {Promise<any>}
     */
    api(method: string, path: string, body?: object): Promise<any>;
    /**
     * @param {string} type
     * @param {string} id
     */
    callPath(type: string, id: string): string;
    /**
     * @param {string} type
     * @param {string} id
     * @returns {Promise<CallState>}
     */
    getCall(type: string, id: string): Promise<CallState>;
    /**
     * Leave backstage (viewers may watch); optionally start HLS and recording.
     * @param {string} type
     * @param {string} id
     * @param {GoLiveOptions} [options]
     * @returns {Promise<{call: Call}>}
     */
    goLive(type: string, id: string, options?: GoLiveOptions): Promise<{
        call: Call;
    }>;
    /**
     * Back to backstage; HLS and recording stop unless asked to continue.
     * @param {string} type
     * @param {string} id
     * @param {StopLiveOptions} [options]
     * @returns {Promise<{call: Call}>}
     */
    stopLive(type: string, id: string, options?: StopLiveOptions): Promise<{
        call: Call;
    }>;
    /**
     * The call's live participants with each publisher's health (bitrate, fps, hints, ...).
     * @param {string} type
     * @param {string} id
     * @returns {Promise<Participant[]>}
     */
    participants(type: string, id: string): Promise<Participant[]>;
    /**
     * @param {string} type
     * @param {string} id
     * @param {Reaction} reaction e.g. {type: "like", emoji_code: ":thumbsup:"}
     */
    sendReaction(type: string, id: string, reaction: Reaction): Promise<any>;
    /**
     * A custom event to everyone in the call (arrives as a "custom" event).
     * @param {string} type
     * @param {string} id
     * @param {object} custom any JSON object, e.g. {type: "message", text: "hello"}
     */
    sendEvent(type: string, id: string, custom: object): Promise<any>;
    /**
     * Join a call over the call WebSocket: participants, events, subscriptions.
     * @param {string} type
     * @param {string} id
     * @returns {Promise<CallConnection>} once the server said "joined"
     */
    join(type: string, id: string): Promise<CallConnection>;
    /**
     * Publish a MediaStream (camera + microphone) into the call over WHIP.
     * @param {string} type
     * @param {string} id
     * @param {MediaStream} stream
     * @param {{iceServers?: IceServer[], url?: string}} [options] url: the call's
     *   `ingress.whip.address` (default: {server}/whip/{type}/{id})
     * @returns {Promise<WhipPublication>}
     */
    publish(type: string, id: string, stream: MediaStream, options?: {
        iceServers?: IceServer[];
        url?: string;
    }): Promise<WhipPublication>;
    /**
     * Watch one publisher over WHEP (a single stream, no WebSocket).
     * @param {string} type
     * @param {string} id
     * @param {string} userId the publisher's user id
     * @param {{iceServers?: IceServer[]}} [options]
     * @returns {Promise<WhepPlayback>}
     */
    watch(type: string, id: string, userId: string, options?: {
        iceServers?: IceServer[];
    }): Promise<WhepPlayback>;
}
/** A WHIP publish in progress: `stop()` ends it (DELETE on the session). */
export class WhipPublication {
    /**
     * @param {RTCPeerConnection} pc
     * @param {string} location
     * @param {MediaStream} stream
     */
    constructor(pc: RTCPeerConnection, location: string, stream: MediaStream);
    pc: RTCPeerConnection;
    location: string;
    stream: MediaStream;
    /** "new" | "connecting" | "connected" | "disconnected" | "failed" | "closed" */
    get state(): RTCPeerConnectionState;
    stop(): Promise<void>;
}
/** A WHEP playback: `stream` gets the tracks; `stop()` ends it. */
export class WhepPlayback extends WhipPublication {
}
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
    constructor(client: IngestClient, type: string, id: string);
    client: IngestClient;
    type: string;
    id: string;
    /** @type {Map<string, Participant>} by user_session_id */
    participants: Map<string, Participant>;
    /** @type {Map<string, RTCPeerConnection>} */
    peers: Map<string, RTCPeerConnection>;
    /** @type {Map<string, MediaStream>} */
    streams: Map<string, MediaStream>;
    /** @type {IceServer[]} */
    iceServers: IceServer[];
    /** @type {string[]} */
    capabilities: string[];
    backstage: boolean;
    userId: string;
    closed: boolean;
    /** @type {Array<{usid: string, resolve: () => void, reject: (e: Error) => void}>} */
    _pending: Array<{
        usid: string;
        resolve: () => void;
        reject: (e: Error) => void;
    }>;
    ws: WebSocket;
    /** @type {() => void} */
    _joined: () => void;
    /** @type {(e: Error) => void} */
    _refused: (e: Error) => void;
    /** @type {Promise<void>} */
    opened: Promise<void>;
    /** @type {ReturnType<typeof setInterval>|undefined} */
    _ping: ReturnType<typeof setInterval> | undefined;
    /** @param {object} msg */
    _send(msg: object): void;
    /**
     * @param {string} type
     * @param {any} detail
     */
    _emit(type: string, detail: any): void;
    /**
     * Receive a participant's media; resolves once the server accepted ("subscribed"). The
     * "stream" event follows when media is negotiated. In backstage, viewers without
     * join-backstage are refused (IngestError code "not_allowed"): wait for the "live" event.
     * @param {string} userSessionId
     * @returns {Promise<void>}
     */
    subscribe(userSessionId: string): Promise<void>;
    /** @param {string} userSessionId */
    unsubscribe(userSessionId: string): void;
    /** Leave: closes the WebSocket and every peer connection. */
    close(): void;
    /** @param {string} usid @param {string} reason */
    _closePeer(usid: string, reason: string): void;
    /** @param {number} code @param {string} reason */
    _onClose(code: number, reason: string): void;
    /** @param {any} msg */
    _onOffer(msg: any): Promise<void>;
    /** @param {any} msg */
    _onMessage(msg: any): void;
}
export type User = {
    id: string;
    name?: string;
    role?: string;
    image?: string;
    custom?: object;
};
export type Participant = {
    user: User;
    user_session_id: string;
    role: string;
    joined_at: string;
    source?: string;
    tracks?: string[];
    health?: Health | null;
};
export type Health = {
    transport: string;
    peer?: string;
    bitrate_kbps: number;
    av_skew_ms?: number | null;
    encoder?: string | null;
    hints: string[];
    packet_loss?: number | null;
    rtt_ms?: number | null;
    video?: {
        codec?: string;
        resolution?: string;
        fps?: number | null;
        bitrate_kbps: number;
        keyframe_interval_s?: number | null;
        b_frames: boolean;
    } | null;
    audio?: {
        codec?: string;
        sample_rate?: number;
        channels?: number;
        bitrate_kbps: number;
    } | null;
    webrtc?: {
        video_transcoded: boolean;
    } | null;
};
export type Address = {
    address: string;
};
export type Call = {
    cid: string;
    id: string;
    type: string;
    backstage: boolean;
    recording: boolean;
    ingress: {
        rtmp: Address;
        whip: Address;
    };
    egress: {
        broadcasting: boolean;
        hls: {
            playlist_url: string;
            status: string;
        };
    };
    [key: string]: any;
};
export type CallState = {
    call: Call;
    members: any[];
    own_capabilities: string[];
};
export type IceServer = {
    urls: string | string[];
    username?: string;
    credential?: string;
};
export type GoLiveOptions = {
    start_hls?: boolean;
    start_recording?: boolean;
};
export type StopLiveOptions = {
    continue_hls?: boolean;
    continue_recording?: boolean;
};
export type Reaction = {
    type: string;
    emoji_code?: string;
    custom?: object;
};
