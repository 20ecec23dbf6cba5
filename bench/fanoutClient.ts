/**
 * The measured side of the fan-out benchmark, run as a child process under plain `node` (see jsTree.ts), so
 * its RSS is that of the product's code, not of a TypeScript compiler. Imports only the product and the
 * benchmark's own instrumentation.
 *
 * Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.
 * - first line: {@link ClientInit};
 * - then {@link RoundRequest}s, each answered with a {@link RoundMeasure} (or `{"error": message}`);
 * - stdin closing ends the process (pools closed).
 */
import * as readline from "node:readline";
import { createWindow, releaseWindow, type AgentTarget } from "../provider/quiesce/lifecycle";
import type { SshConnectionConfig } from "../provider/transport/ssh";
import { TimedPool } from "./instrument";
import { PeakRss } from "./memory";
import { clock, wallClock } from "./stats";

/** What the client serves. */
export interface ClientInit {
  readonly config: SshConnectionConfig;
  readonly sockets: readonly string[];
  readonly leaseDir: string;
}

/**
 * One round on the first `n` guests. `pool`: `new` = a new shared pool (closing the previous one), `same` =
 * the shared pool of the previous round (connected), `perGuest` = a new pool per guest, closed after.
 */
export interface RoundRequest {
  readonly n: number;
  readonly pool: "new" | "same" | "perGuest";
}

/** The measures of one round. Times in ms, memory in MB (10^6 bytes). */
export interface RoundMeasure {
  totalMs: number;
  freezePhaseMs: number;
  thawPhaseMs: number;
  /** Spread of the moments the freeze replies arrived. */
  freezeSkewMs: number;
  /** Spread of the moments the freeze commands were sent. */
  freezeIssueSkewMs: number;
  clientConnections: number;
  peakRssMB: number;
  startRssMB: number;
  /** Windows whose create or release failed; the other figures cover the windows that worked. */
  failedWindows: number;
  failures: string[];
  /**
   * When the last window got past each step of its create, in ms since the round started: its agent sync,
   * fsinfo and freeze replies (on the relays onto the agent connections the host daemon holds). Shows where a
   * round's time and skew come from.
   */
  lastStepMs: Record<CreateStep, number>;
}

/** Steps of a create, in order, by the request whose reply ends them. */
export const CREATE_STEPS = ["guest-sync-delimited", "guest-get-fsinfo", "guest-fsfreeze-freeze-list"] as const;
/** A step of {@link CREATE_STEPS}. */
export type CreateStep = (typeof CREATE_STEPS)[number];

const MB = 1e6;

/** Largest minus smallest; NaN when empty. */
function spread(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  return values.reduce((a, b) => Math.max(a, b), -Infinity) - values.reduce((a, b) => Math.min(a, b), Infinity);
}

/** The largest value; NaN when empty. */
function spreadEnd(values: readonly number[]): number {
  return values.length ? values.reduce((a, b) => Math.max(a, b), -Infinity) : Number.NaN;
}

/** "CODE: message" with temp paths shortened, so equal failures group together. */
function describeFailure(reason: unknown): string {
  const code = (reason as { code?: unknown } | undefined)?.code;
  const message = reason instanceof Error ? reason.message : String(reason);
  return `${typeof code === "string" ? `${code}: ` : ""}${message.replace(/\/tmp\/qbench-[^/\s]+/g, "$TMP")}`;
}

/** Freeze all, then thaw all, concurrently. `pools` holds one pool, or one per target. */
export async function round(targets: readonly AgentTarget[], pools: readonly TimedPool[]): Promise<RoundMeasure> {
  const poolFor = (i: number): TimedPool => (pools.length === 1 ? pools[0] : pools[i]);
  for (const pool of pools) pool.take();
  const connectionsBefore = pools.reduce((sum, p) => sum + p.connectionsMade, 0);
  const rss = new PeakRss();
  rss.start();
  const started = clock();
  const created = await Promise.allSettled(
    targets.map((target, i) =>
      createWindow(
        { target, mountpoints: ["/data"], maxDurationSeconds: 300, thawOnDisconnect: true, owner: `bench/fanout/${i}` },
        { pool: poolFor(i), now: wallClock },
      ),
    ),
  );
  const frozenAt = clock();
  const released = await Promise.allSettled(
    created.map((c, i) =>
      c.status === "fulfilled" ? releaseWindow({ target: targets[i], windowId: c.value.windowId }, { pool: poolFor(i), now: wallClock }) : undefined,
    ),
  );
  const ended = clock();
  const peak = rss.stop();
  const failures: string[] = [];
  created.forEach((c, i) => {
    if (c.status === "rejected") failures.push(describeFailure(c.reason));
    else if (c.value.frozenCount !== 1) failures.push(`guest ${i}: froze ${c.value.frozenCount}`);
  });
  released.forEach((r, i) => {
    if (r.status === "rejected") failures.push(describeFailure(r.reason));
    else if (r.value && r.value.outcome !== "released") failures.push(`guest ${i}: release outcome ${r.value.outcome}`);
  });
  const frozenWindows = created.filter((c) => c.status === "fulfilled").length;
  // When each freeze command was sent and when its reply arrived, from the agent channels' probes.
  const channels = pools.flatMap((p) => p.take());
  const freezes = channels.map((c) => c.probe.find("guest-fsfreeze-freeze-list")).filter((e) => e !== undefined);
  const createExchanges = channels.flatMap((c) => c.probe.exchanges).filter((e) => e.sentAt < frozenAt && e.lastReplyAt !== undefined);
  const lastStepMs = Object.fromEntries(
    CREATE_STEPS.map((step) => [
      step,
      spreadEnd(createExchanges.filter((e) => e.command === step).map((e) => (e.lastReplyAt as number) - started)),
    ]),
  ) as Record<CreateStep, number>;
  if (freezes.length < frozenWindows) throw new Error(`saw ${freezes.length} freeze commands for ${frozenWindows} frozen windows`);
  return {
    totalMs: ended - started,
    freezePhaseMs: frozenAt - started,
    thawPhaseMs: ended - frozenAt,
    freezeSkewMs: spread(freezes.map((e) => e.firstReplyAt ?? Number.NaN)),
    freezeIssueSkewMs: spread(freezes.map((e) => e.sentAt)),
    clientConnections: pools.reduce((sum, p) => sum + p.connectionsMade, 0) - connectionsBefore,
    peakRssMB: peak / MB,
    startRssMB: rss.startRss / MB,
    failedWindows: created.length - frozenWindows + released.filter((r) => r.status === "rejected").length,
    failures,
    lastStepMs,
  };
}

async function serve(): Promise<void> {
  const lines = readline.createInterface({ input: process.stdin });
  let init: ClientInit | undefined;
  let shared: TimedPool | undefined;
  const reply = (value: unknown): void => {
    process.stdout.write(JSON.stringify(value) + "\n");
  };
  for await (const line of lines) {
    if (!init) {
      init = JSON.parse(line) as ClientInit;
      reply({ ready: true });
      continue;
    }
    const request = JSON.parse(line) as RoundRequest;
    const targets: AgentTarget[] = init.sockets.slice(0, request.n).map((socketPath) => ({ connection: init?.config, socketPath, leaseDir: init?.leaseDir }));
    try {
      if (request.pool === "perGuest") {
        const pools = targets.map(() => new TimedPool({ idleTimeoutMs: 600_000 }));
        try {
          reply(await round(targets, pools));
        } finally {
          for (const pool of pools) pool.closeAll();
        }
      } else {
        if (request.pool === "new" || !shared) {
          shared?.closeAll();
          shared = new TimedPool({ idleTimeoutMs: 600_000 });
        }
        reply(await round(targets, [shared]));
      }
    } catch (err) {
      reply({ error: describeFailure(err) });
    }
  }
  shared?.closeAll();
}

if (require.main === module) {
  serve().catch((err: unknown) => {
    process.stderr.write(`fanout client: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
