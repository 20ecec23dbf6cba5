import type { Duplex } from "node:stream";

/**
 * The transport seam: everything above this layer reaches the guest agent through one function
 * that opens a byte channel (a Duplex) to the agent's chardev socket. The agent session runs
 * unchanged over any implementation.
 */
export interface AgentChannel {
  /** The byte stream to the agent socket. Destroy or end it to close the channel. */
  readonly stream: Duplex;
  /** Human label of the endpoint for error messages, e.g. `root@hv1:22:/run/qga/vm1.sock`. */
  readonly target: string;
}

/** Options common to every open. */
export interface OpenOptions {
  /** Aborts the open (and fails it with code ABORTED). */
  readonly signal?: AbortSignal;
  /**
   * How long to keep retrying, in milliseconds, while the socket refuses connections because its accept
   * queue is full: QEMU's chardev serves one client and queues very few, so concurrent clients of one guest
   * are turned away rather than queued. Default {@link DEFAULT_BUSY_TIMEOUT_MS}.
   */
  readonly busyTimeoutMs?: number;
}

/** Default of {@link OpenOptions.busyTimeoutMs}: 10 s. */
export const DEFAULT_BUSY_TIMEOUT_MS = 10_000;

/**
 * Waits before the next attempt at a busy socket: 20 ms doubling to at most 200 ms, with jitter, bounded by
 * `deadline`. The cap stays low so that clients that have waited long keep an even chance against newcomers.
 */
export function busyBackoff(attempt: number, deadline: number, signal?: AbortSignal): Promise<boolean> {
  const wait = Math.min(200, 20 * 2 ** attempt) * (0.5 + Math.random() / 2);
  if (Date.now() + wait > deadline || signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve(true);
    }, wait);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Opens an agent channel to `socketPath` (absolute path on the host that holds the socket). */
export type AgentDialer = (socketPath: string, options?: OpenOptions) => Promise<AgentChannel>;
