// Types for pollgate.js (the browser client pollgate serves at /pollgate/v1/client.js).

export type State = "push" | "polling" | "offline";

export interface Notice {
  key: string;
  /** The version the key has reached (from the app's poll route: X-Pollgate-Version or a numeric ETag). */
  version: number;
}

export interface Info {
  role: "starting" | "leader" | "follower" | "solo";
  /** The id of the tab holding the connection. */
  leader: string | null;
  state: State | null;
  transport: "sse" | "ws" | "wait" | "poll" | null;
  /** Push connections this browser holds (0 or 1 with Web Locks). */
  connections: number;
}

export interface Options {
  /** Base URL of pollgate's push endpoints; default: where the module was served from, else `${origin}/pollgate/v1/`. */
  url?: string;
  /** Returns a token for pollgate's authorization; called before every connection. */
  token?: () => string | Promise<string>;
  /** The app's own poll route, polled when push is refused or off. */
  pollUrl?: (key: string, version: number) => string;
  /** Name of the lock and BroadcastChannel shared by the tabs (default "pollgate"). */
  channel?: string;
  /** false: this tab connects on its own (default true). */
  shareTabs?: boolean;
  /** Transports to try in order (default ["sse", "ws", "wait"]). */
  transports?: Array<"sse" | "ws" | "wait">;
  /** The server's heartbeat interval; no byte for twice this reconnects (default 25000). */
  heartbeatMs?: number;
  /** The first retry waits uniformly 0..firstRetryMs (default 1000), doubling to maxRetryMs (default 30000). */
  firstRetryMs?: number;
  maxRetryMs?: number;
  /** Long-poll timeout in seconds (default 25). */
  waitSeconds?: number;
  /** Poll interval without an X-Poll-Interval hint (default 5000). */
  pollMs?: number;
  /** Poll interval floor while every tab is hidden (default 300000). */
  hiddenPollMs?: number;
  /** While polling, how often push is tried again (default 60000, jittered). */
  pushProbeMs?: number;
}

export interface Watch {
  /** The app now holds this version: no callback until the key passes it. */
  seen(version: number): void;
  close(): void;
}

export interface Client {
  watch(key: string, version: number, cb: (n: Notice) => void): Watch;
  on(event: "state", fn: (s: State) => void): () => void;
  on(event: "info", fn: (i: Info) => void): () => void;
  close(): void;
  readonly info: Info;
}

export function connect(options?: Options): Client;

export const TRANSPORTS: ReadonlyArray<"sse" | "ws" | "wait">;

export class Backoff {
  constructor(o?: { firstMs?: number; maxMs?: number; random?: () => number });
  cap(): number;
  next(atLeastMs?: number): number;
  reset(): void;
}
