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
}

/** Opens an agent channel to `socketPath` (absolute path on the host that holds the socket). */
export type AgentDialer = (socketPath: string, options?: OpenOptions) => Promise<AgentChannel>;
