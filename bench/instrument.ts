/**
 * Instrumentation for the benchmarks: it times what the lifecycle does without changing it.
 *
 * - {@link StreamProbe} timestamps each request written to a channel and the replies that follow it. The
 *   agent session keeps one request in flight per channel, so a reply belongs to the last request written; so
 *   does a single window's use of the host daemon's control channel.
 * - {@link TimedPool} is an {@link SshPool} that records every channel it opens (how long the open took,
 *   and a probe on the stream).
 */
import type { Duplex } from "node:stream";
import { SshPool } from "../provider/transport/ssh";
import type { AgentChannel } from "../provider/transport/types";
import { clock } from "./stats";

/** One request on a channel and the replies to it. Times are {@link clock} milliseconds. */
export interface Exchange {
  /** `guest-sync-delimited` (for a 0xFF-prefixed sync), the agent command, or `daemon:<op>` for a host daemon request. */
  readonly command: string;
  readonly sentAt: number;
  /** When the first reply bytes arrived. */
  firstReplyAt?: number;
  /** When the last bytes before the next request (or the close) arrived. */
  lastReplyAt?: number;
}

/** Names the request in a written chunk. */
function requestName(chunk: unknown): string {
  const buffer = Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk));
  if (buffer[0] === 0xff) return "guest-sync-delimited";
  const text = buffer.toString("utf8").trim();
  if (text.startsWith("{")) {
    try {
      const parsed = JSON.parse(text.split("\n")[0]) as { execute?: unknown; op?: unknown };
      if (typeof parsed.execute === "string") return parsed.execute;
      if (typeof parsed.op === "string") return `daemon:${parsed.op}`;
    } catch (err) {
      return `unparsed (${(err as Error).message})`;
    }
  }
  return text.split(/\s+/)[0] ?? "";
}

/** Records the request/reply exchanges of one stream. */
export class StreamProbe {
  readonly exchanges: Exchange[] = [];
  private listening = false;

  constructor(readonly stream: Duplex) {
    const original = stream.write as (...args: unknown[]) => boolean;
    const patched = (...args: unknown[]): boolean => {
      this.exchanges.push({ command: requestName(args[0]), sentAt: clock() });
      // Listen only once the owner wrote: by then its own 'data' listener is attached, so ours changes nothing.
      if (!this.listening) {
        this.listening = true;
        stream.on("data", () => this.onData());
      }
      return original.apply(stream, args);
    };
    stream.write = patched as Duplex["write"];
  }

  private onData(): void {
    const last = this.exchanges[this.exchanges.length - 1];
    if (!last) return;
    const now = clock();
    last.firstReplyAt ??= now;
    last.lastReplyAt = now;
  }

  /** Milliseconds from each request to its last reply bytes, summed (requests without a reply count 0). */
  busyMs(): number {
    return this.exchanges.reduce((sum, e) => sum + (e.lastReplyAt !== undefined ? e.lastReplyAt - e.sentAt : 0), 0);
  }

  /** The first exchange whose command is `command`. */
  find(command: string): Exchange | undefined {
    return this.exchanges.find((e) => e.command === command);
  }
}

/** A channel a {@link TimedPool} opened. */
export interface ChannelRecord {
  readonly socketPath: string;
  /** Milliseconds the open took (including the SSH connect when the pool had no connection yet). */
  readonly openMs: number;
  readonly probe: StreamProbe;
}

/** An SshPool that records its channels. */
export class TimedPool extends SshPool {
  private records: ChannelRecord[] = [];

  override async openAgentChannel(...args: Parameters<SshPool["openAgentChannel"]>): Promise<AgentChannel> {
    const started = clock();
    const channel = await super.openAgentChannel(...args);
    this.records.push({ socketPath: args[1], openMs: clock() - started, probe: new StreamProbe(channel.stream) });
    return channel;
  }

  /** The channels recorded since the last call, and forgets them. */
  take(): ChannelRecord[] {
    const taken = this.records;
    this.records = [];
    return taken;
  }
}
