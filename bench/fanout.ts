/**
 * Part 2: fan-out. N fake agents (each freeze takes `freezeDelayMs`) on UNIX sockets behind one lab sshd;
 * freeze all concurrently, then thaw all concurrently, through the lifecycle API (createWindow and
 * releaseWindow), in two ways:
 * - ours: one SshPool for all guests, so one SSH connection. Measured with a new pool (the connect is
 *   counted, as in a fresh `pulumi up`), then again on the same, now connected, pool (warm).
 * - perGuest: a new SshPool per guest, so one SSH connection per guest.
 *
 * Every window does the full work: claim (the host daemon connects to its agent), relay, sync, ping, status,
 * info, fsinfo, arm, freeze-list, status; the release is one daemon request (status, thaw, status, record).
 *
 * The agents run in a child process (bench/fleet.ts): they stand for QEMU processes, so they must not share
 * the measured process's event loop, nor count in its RSS. The measured side runs in a child process of its
 * own too (bench/fanoutClient.ts), under plain `node` on a transpiled copy of the code (bench/jsTree.ts), so
 * its RSS is the product's and not ts-node's (the TypeScript compiler alone is ~80 MB).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as readline from "node:readline";
import type { SshConnectionConfig } from "../provider/transport/ssh";
import { spawnTracked, startSshd, stopProcess, type LabSshd } from "../test/lab/lab";
import { startFleet, type Fleet } from "./fleet";
import { CREATE_STEPS, type ClientInit, type CreateStep, type RoundMeasure, type RoundRequest } from "./fanoutClient";
import { buildJsTree, type JsTree } from "./jsTree";
import { Samples, type Figure } from "./stats";
import { connectionFor, removeLeaseDir, stderrLog, tempDir, type Log } from "./common";

/** Options of {@link benchFanout}. */
export interface FanoutOptions {
  /** Numbers of guests, e.g. [10, 200, 500]. */
  readonly sizes: readonly number[];
  /** Repetitions of `ours` per size. */
  readonly reps: number;
  /** Repetitions of `perGuest` per size (each costs N SSH connections). */
  readonly perGuestReps: number;
  /** Measure `perGuest` only up to this N. */
  readonly perGuestMaxN: number;
  /** Latency of each fake freeze, in ms. Default 30. */
  readonly freezeDelayMs?: number;
  readonly log?: Log;
}

/** The figures of one mode at one N (each a median over the repetitions). */
export interface FanoutFigures {
  /** Repetitions measured. */
  readonly runs: number;
  /** Freeze all + thaw all, in ms. */
  readonly totalMs: Figure;
  readonly freezePhaseMs: Figure;
  readonly thawPhaseMs: Figure;
  /** Spread of the moments the freeze commands' replies arrived (first to last), in ms. */
  readonly freezeSkewMs: Figure;
  /** Spread of the moments the freeze commands were sent, in ms. */
  readonly freezeIssueSkewMs: Figure;
  /** SSH connections the client made per run (the most seen in any run). */
  readonly clientConnections: number;
  /** Connections sshd accepted per run (the most seen in any run). */
  readonly sshdConnections: number;
  /** Peak RSS of the client process during the run, in MB (10^6 bytes). */
  readonly peakRssMB: Figure;
  /** RSS at the start of the run, in MB. */
  readonly startRssMB: Figure;
  /** Windows of the N whose create or release failed, per run. Other figures cover the windows that worked. */
  readonly failedWindows: Figure;
  /** Distinct failures over all runs, with how often each occurred. */
  readonly failures: readonly { readonly message: string; readonly count: number }[];
  /** When the last window got past each step of its create (ms since the round started). */
  readonly lastStepMs: Readonly<Record<CreateStep, Figure>>;
}

/** Fan-out results at one N. */
export interface FanoutSize {
  readonly n: number;
  /** One pool, connected during the run. */
  readonly ours: FanoutFigures;
  /** One pool, already connected (the second round on the same pool). */
  readonly oursWarm: FanoutFigures;
  /** A pool (connection) per guest; absent above `perGuestMaxN`. */
  readonly perGuest?: FanoutFigures;
}

/** Result of part 2. */
export interface FanoutResult {
  readonly freezeDelayMs: number;
  readonly sizes: readonly FanoutSize[];
  /** How peak RSS was measured. */
  readonly rssMethod: string;
  /** sshd settings changed from the lab defaults, and why. */
  readonly sshdConfig: string;
}

/** A round as the parent records it: the client's measure plus what sshd saw. */
type Measure = Omit<RoundMeasure, "failures" | "lastStepMs"> & { sshdConnections: number };

/** The fan-out client process. */
interface Client {
  request(request: RoundRequest): Promise<RoundMeasure>;
  stop(): Promise<void>;
}

async function startClient(tree: JsTree, init: ClientInit): Promise<Client> {
  const child = spawnTracked(process.execPath, [tree.file("bench/fanoutClient.ts")], { cwd: tree.root, stdio: ["pipe", "pipe", "inherit"] });
  const lines = readline.createInterface({ input: child.stdout as NodeJS.ReadableStream });
  const pending: { resolve(line: string): void; reject(err: Error): void }[] = [];
  lines.on("line", (line) => pending.shift()?.resolve(line));
  child.once("exit", (code) => {
    for (const p of pending.splice(0)) p.reject(new Error(`the fan-out client exited (${code})`));
  });
  const send = (value: unknown): Promise<string> =>
    new Promise((resolve, reject) => {
      pending.push({ resolve, reject });
      child.stdin?.write(JSON.stringify(value) + "\n");
    });
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      child.stdin?.end();
      lines.close();
      await stopProcess(child);
    })());
  try {
    await send(init);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    request: async (request) => {
      const reply = JSON.parse(await send(request)) as RoundMeasure | { error: string };
      if ("error" in reply) throw new Error(`fan-out round N=${request.n} (${request.pool}): ${reply.error}`);
      return reply;
    },
    stop,
  };
}

function put(samples: Samples, failures: Map<string, Map<string, number>>, prefix: string, m: RoundMeasure, sshdConnections: number): void {
  const measure: Measure = { ...m, sshdConnections };
  for (const [key, value] of Object.entries(measure)) if (typeof value === "number") samples.add(`${prefix}.${key}`, value);
  for (const step of CREATE_STEPS) samples.add(`${prefix}.step.${step}`, m.lastStepMs[step]);
  const counts = failures.get(prefix) ?? new Map<string, number>();
  for (const failure of m.failures) counts.set(failure, (counts.get(failure) ?? 0) + 1);
  failures.set(prefix, counts);
}

function figures(samples: Samples, failures: Map<string, Map<string, number>>, prefix: string): FanoutFigures {
  const f = (key: keyof Measure): Figure => samples.figure(`${prefix}.${key}`);
  return {
    runs: f("totalMs").n,
    totalMs: f("totalMs"),
    freezePhaseMs: f("freezePhaseMs"),
    thawPhaseMs: f("thawPhaseMs"),
    freezeSkewMs: f("freezeSkewMs"),
    freezeIssueSkewMs: f("freezeIssueSkewMs"),
    clientConnections: f("clientConnections").max,
    sshdConnections: f("sshdConnections").max,
    peakRssMB: f("peakRssMB"),
    startRssMB: f("startRssMB"),
    failedWindows: f("failedWindows"),
    failures: [...(failures.get(prefix) ?? new Map<string, number>())].map(([message, count]) => ({ message, count })),
    lastStepMs: Object.fromEntries(CREATE_STEPS.map((step) => [step, samples.figure(`${prefix}.step.${step}`)])) as Record<CreateStep, Figure>,
  };
}

/**
 * sshd settings for the fan-out: a generous MaxStartups, or the one-connection-per-guest comparison would be
 * refused by sshd's default (10:30:100: drop 30% of unauthenticated connections beyond 10, all beyond 100)
 * and measure retries instead of cost.
 */
const FANOUT_SSHD_CONFIG = "MaxStartups 2000:30:4000";

/** Runs part 2: starts its own sshd, fake-agent fleet and client process, and stops them. */
export async function benchFanout(options: FanoutOptions): Promise<FanoutResult> {
  const log = options.log ?? stderrLog;
  const freezeDelayMs = options.freezeDelayMs ?? 30;
  const largest = Math.max(...options.sizes);
  const dir = tempDir("fanout");
  const leaseDir = path.join(dir, "leases");
  let sshd: LabSshd | undefined;
  let fleet: Fleet | undefined;
  let client: Client | undefined;
  const tree = buildJsTree(["provider", "bench/fanoutClient.ts", "bench/instrument.ts", "bench/memory.ts", "bench/stats.ts"]);
  try {
    [sshd, fleet] = await Promise.all([startSshd({ extraConfig: FANOUT_SSHD_CONFIG }), startFleet(largest, freezeDelayMs)]);
    const lab = sshd;
    // A long per-dial timeout: hundreds of simultaneous handshakes on two cores are slow, not failed.
    const config: SshConnectionConfig = connectionFor(sshd, { perDialTimeout: 120 });
    client = await startClient(tree, { config, sockets: fleet.sockets, leaseDir });
    const measured = async (request: RoundRequest): Promise<{ m: RoundMeasure; sshd: number }> => {
      const before = lab.acceptedConnections();
      const m = await (client as Client).request(request);
      return { m, sshd: lab.acceptedConnections() - before };
    };
    log(`fan-out: ${largest} fake agents (freeze ${freezeDelayMs} ms) behind sshd :${sshd.port}; warm-up starts the host daemon`);
    const warmUp = await measured({ n: 1, pool: "new" });
    if (warmUp.m.failedWindows > 0) throw new Error(`fan-out warm-up failed: ${warmUp.m.failures.join("; ")}`);
    const sizes: FanoutSize[] = [];
    for (const n of options.sizes) {
      const samples = new Samples();
      const failures = new Map<string, Map<string, number>>();
      const perGuest = n <= options.perGuestMaxN && options.perGuestReps > 0;
      for (let rep = 0; rep < Math.max(options.reps, perGuest ? options.perGuestReps : 0); rep++) {
        if (rep < options.reps) {
          const cold = await measured({ n, pool: "new" });
          put(samples, failures, "ours", cold.m, cold.sshd);
          const warm = await measured({ n, pool: "same" });
          put(samples, failures, "oursWarm", warm.m, warm.sshd);
        }
        if (perGuest && rep < options.perGuestReps) {
          const each = await measured({ n, pool: "perGuest" });
          put(samples, failures, "perGuest", each.m, each.sshd);
        }
        log(`fan-out N=${n}: repetition ${rep + 1} done`);
      }
      sizes.push({
        n,
        ours: figures(samples, failures, "ours"),
        oursWarm: figures(samples, failures, "oursWarm"),
        ...(perGuest ? { perGuest: figures(samples, failures, "perGuest") } : {}),
      });
    }
    return { freezeDelayMs, sizes, rssMethod: "VmHWM of the client process (reset per round), else sampled", sshdConfig: FANOUT_SSHD_CONFIG.replace(/\n/g, "; ") };
  } finally {
    await client?.stop();
    await Promise.all([fleet?.stop(), sshd?.stop()]);
    removeLeaseDir(leaseDir);
    fs.rmSync(dir, { recursive: true, force: true });
    tree.remove();
  }
}
