/**
 * Part 1: one window against the real lab guest, every variant measured side by side in each repetition
 * (the order rotates per repetition), so ratios hold on a noisy, shared machine.
 *
 * Variants (each ends with the guest verified thawed):
 * - raw: our agent session straight on the UNIX socket on this host: sync, status, fsinfo, freeze-list,
 *   status, thaw, status. The physical limit for this guest.
 * - rawSplit: the same commands split the way a window must split them (create, then release later, maybe
 *   from another process): one session for sync, status, fsinfo, freeze-list, status; a second one for sync,
 *   status, thaw, status.
 * - oursWarm: createWindow + releaseWindow over a pooled SSH connection that is already up.
 * - oursCold: the same with a new SshPool, so a new SSH connection, closed after.
 * - altSsh: what a @pulumi/command user writes: one `ssh host '(printf ...; sleep S) | socat - UNIX-CONNECT:sock'`
 *   per agent command, with the real OpenSSH client (a new connection per command, as each
 *   remote.Command has). Each exec sends a sync first, so stale replies are handled as fairly as ours.
 *   The `sleep` keeps socat's stdin open: QEMU drops a client that half-closes before the reply is written.
 * - altPooled: the same shell command per agent command, as execs on one already-connected ssh2 connection.
 * - execTrue / sshTrue: baselines, an exec of `true` on a connected pool, and `ssh host true`.
 *
 * qemu-ga polls its virtio port every 100 ms while no client is connected (it sleeps 100 ms on EOF), so the
 * first reply on a new connection waits 0-100 ms depending on the phase of that loop: 100 ms when the
 * previous client left just before. To give every variant the same odds, each variant, and the release of
 * each window (standing in for the snapshot taken between create and release), is preceded by an idle pause
 * of random length (100-200 ms). Pauses are never counted in any figure.
 */
import { spawn } from "node:child_process";
import * as path from "node:path";
import { randomInt } from "node:crypto";
import { AgentSession } from "../provider/agent/session";
import { fsfreezeFreezeList, fsfreezeStatus, fsfreezeThaw, getFsinfo } from "../provider/agent/commands";
import { openLocalChannel } from "../provider/transport/local";
import { SshPool, shellQuote, type SshConnectionConfig } from "../provider/transport/ssh";
import { createWindow, releaseWindow, type AgentTarget } from "../provider/quiesce/lifecycle";
import type { Lab } from "../test/lab/lab";
import { StreamProbe, TimedPool, type ChannelRecord, type Exchange } from "./instrument";
import { Samples, clock, type Figure } from "./stats";
import { connectionFor, removeLeaseDir, stderrLog, tempDir, thawLocal, type Log } from "./common";
import * as fs from "node:fs";

/** Options of {@link benchSingleWindow}. */
export interface SingleWindowOptions {
  /** Measured repetitions of every variant (after one warm-up round). */
  readonly reps: number;
  /** Milliseconds the alternative keeps socat's stdin open per command. Default 200. */
  readonly sleepMs?: number;
  /** Guest mount points to freeze. Default ["/data"]. */
  readonly mountpoints?: readonly string[];
  readonly log?: Log;
}

/** The variants, in the order of the first repetition. */
export const SINGLE_VARIANTS = ["raw", "rawSplit", "oursWarm", "oursCold", "altSsh", "altPooled", "execTrue", "sshTrue"] as const;
/** A variant of part 1. */
export type SingleVariant = (typeof SINGLE_VARIANTS)[number];

/** Where the time of one of our windows went (each a median over the repetitions, in ms). */
export interface OursBreakdown {
  /** Opening the relay channels onto the agent connection the host daemon holds (includes the SSH connect when cold). */
  readonly agentOpenMs: Figure;
  /** Agent round trips: request written to last reply bytes, summed (syncs included). */
  readonly agentCommandsMs: Figure;
  /** Of which the syncs that open each session (where qemu-ga's 100 ms idle poll shows). */
  readonly agentSyncMs: Figure;
  /** createWindow alone, and releaseWindow alone. */
  readonly createMs: Figure;
  readonly releaseMs: Figure;
  /** Host daemon requests (hello, claim, relay, arm, release) and opening its control channel. */
  readonly daemonMs: Figure;
  /** The rest: JavaScript, scheduling, closing channels. */
  readonly otherMs: Figure;
  /** Agent round trips per window, including the relay's sync. */
  readonly agentRoundTrips: number;
  /** Agent commands in order (first repetition). */
  readonly agentCommands: readonly string[];
  /** Host daemon requests per window. */
  readonly daemonRequests: number;
  /** Channels opened per window (relay and control). */
  readonly channelsOpened: number;
  /** Each agent round trip ("<position>:<command>") on its own. */
  readonly perCommandMs: Readonly<Record<string, Figure>>;
}

/** Result of part 1. Every figure is in milliseconds. */
export interface SingleWindowResult {
  readonly reps: number;
  readonly mountpoints: readonly string[];
  readonly sleepMs: number;
  /** Total time of each variant. */
  readonly totals: Record<SingleVariant, Figure>;
  /** The raw variant's agent round trips alone (no channel open), and its command list. */
  readonly raw: {
    readonly agentCommandsMs: Figure;
    /** Of which the sync. */
    readonly agentSyncMs: Figure;
    readonly openMs: Figure;
    readonly agentCommands: readonly string[];
    /** Each agent round trip ("<position>:<command>") on its own. */
    readonly perCommandMs: Readonly<Record<string, Figure>>;
  };
  readonly oursWarm: OursBreakdown;
  readonly oursCold: OursBreakdown;
  /** rawSplit: its agent round trips alone, and of which the two syncs. */
  readonly rawSplit: { readonly agentCommandsMs: Figure; readonly agentSyncMs: Figure };
  /**
   * The alternative with its fixed waits subtracted: a lower bound of what it would cost if socat could end
   * on the reply (the reply's own latency overlapped the wait, so this undercounts).
   */
  readonly altSshNoWait: Figure;
  readonly altPooledNoWait: Figure;
  /** Execs (= agent commands, each with its own sync) per alternative window. */
  readonly altExecs: number;
  /** SSH connections the warm pool made over all measured repetitions (should be 0: it was connected before). */
  readonly warmConnectionsDuringReps: number;
  /** SSH connections made by the cold variant, per window. */
  readonly coldConnectionsPerWindow: number;
}

interface AltCommand {
  readonly execute: string;
  readonly arguments?: Record<string, unknown>;
}

/** One window's worth of agent commands for the alternative (each exec also syncs first). */
function altSequence(mountpoints: readonly string[]): AltCommand[] {
  return [
    { execute: "guest-fsfreeze-status" },
    { execute: "guest-get-fsinfo" },
    { execute: "guest-fsfreeze-freeze-list", arguments: { mountpoints: [...mountpoints] } },
    { execute: "guest-fsfreeze-status" },
    { execute: "guest-fsfreeze-thaw" },
    { execute: "guest-fsfreeze-status" },
  ];
}

/** The shell command a user would write for one agent command. */
export function socatScript(socketPath: string, syncId: number, command: AltCommand, sleepMs: number): string {
  const sync = JSON.stringify({ execute: "guest-sync-delimited", arguments: { id: syncId } });
  const request = JSON.stringify(command.arguments ? { execute: command.execute, arguments: command.arguments } : { execute: command.execute });
  const seconds = (sleepMs / 1000).toFixed(3);
  return `(printf '\\377%s\\n%s\\n' ${shellQuote(sync)} ${shellQuote(request)}; sleep ${seconds}) | socat - UNIX-CONNECT:${shellQuote(socketPath)}`;
}

/** Finds the reply that follows our sync reply in socat's output; throws on an error reply. */
export function parseSocatReply(output: string, syncId: number, command: string): unknown {
  const lines = output.split("\n").map((line) => {
    // A sync reply is preceded by 0xFF (decoded as U+FFFD, or kept as \xff in latin1).
    const cut = Math.max(line.lastIndexOf("\uFFFD"), line.lastIndexOf("\xff"));
    return line.slice(cut + 1).trim();
  });
  const parse = (line: string): Record<string, unknown> | undefined => {
    if (!line.startsWith("{")) return undefined;
    try {
      return JSON.parse(line) as Record<string, unknown>;
    } catch (err) {
      throw new Error(`${command}: unparseable agent output line ${JSON.stringify(line)}: ${(err as Error).message}`);
    }
  };
  const syncAt = lines.findIndex((line) => parse(line)?.return === syncId);
  if (syncAt < 0) throw new Error(`${command}: no sync reply for id ${syncId} in ${JSON.stringify(output)}`);
  const reply = lines.slice(syncAt + 1).map(parse).find((value) => value !== undefined);
  if (!reply) throw new Error(`${command}: no reply after the sync (the wait was too short?) in ${JSON.stringify(output)}`);
  if ("error" in reply) throw new Error(`${command}: agent error ${JSON.stringify(reply.error)}`);
  return reply.return;
}

/** Runs the real OpenSSH client once; resolves with its stdout. */
function runSshClient(args: readonly string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn("ssh", [...args], { stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    let err = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    timer.unref();
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => (err += d.toString("utf8")));
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(Buffer.concat(out).toString("utf8"));
      else reject(new Error(`ssh exited with ${code ?? signal}: ${err.trim()}`));
    });
  });
}

function sshClientArgs(lab: Lab): string[] {
  const { sshd } = lab;
  return [
    "-F", "/dev/null", "-i", sshd.privateKeyPath, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
    "-o", `UserKnownHostsFile=${sshd.knownHostsPath}`, "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
    "-p", String(sshd.port), `${sshd.user}@${sshd.host}`,
  ];
}

/** The alternative: one exec per agent command. Returns nothing; throws if the window was not verified. */
async function altWindow(exec: (script: string) => Promise<string>, socketPath: string, mountpoints: readonly string[], sleepMs: number): Promise<void> {
  const results: unknown[] = [];
  for (const command of altSequence(mountpoints)) {
    const syncId = randomInt(1, 2 ** 31 - 1);
    results.push(parseSocatReply(await exec(socatScript(socketPath, syncId, command, sleepMs)), syncId, command.execute));
    if (results.length === 1 && results[0] !== "thawed") throw new Error(`alternative: the guest is ${String(results[0])} before the freeze`);
    if (results.length === 2) {
      const have = (results[1] as { mountpoint?: string }[]).map((f) => f.mountpoint);
      const missing = mountpoints.filter((m) => !have.includes(m));
      if (missing.length) throw new Error(`alternative: the guest has no ${missing.join(", ")}`);
    }
  }
  const [, , count, frozen, , thawed] = results;
  if (count !== mountpoints.length || frozen !== "frozen" || thawed !== "thawed") {
    throw new Error(`alternative: freeze not verified: count ${String(count)}, status ${String(frozen)}, after thaw ${String(thawed)}`);
  }
}

/** An idle pause of random length in [100, 200) ms: see the module comment. Never counted. */
export function phasePause(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 100 + Math.random() * 100));
}

/** One agent session on the local socket running `steps`; returns the open time and the probe. */
async function rawSession(
  socketPath: string,
  steps: (session: AgentSession) => Promise<void>,
): Promise<{ totalMs: number; openMs: number; probe: StreamProbe }> {
  const started = clock();
  const channel = await openLocalChannel(socketPath);
  const openMs = clock() - started;
  const probe = new StreamProbe(channel.stream);
  const session = await AgentSession.open(channel.stream, { target: `raw:${socketPath}` });
  try {
    await steps(session);
  } finally {
    session.close();
  }
  return { totalMs: clock() - started, openMs, probe };
}

async function rawFreeze(session: AgentSession, mountpoints: readonly string[]): Promise<void> {
  if ((await fsfreezeStatus(session)) !== "thawed") throw new Error("raw: the guest is frozen before the freeze");
  const have = (await getFsinfo(session)).map((f) => f.mountpoint);
  const missing = mountpoints.filter((m) => !have.includes(m));
  if (missing.length) throw new Error(`raw: the guest has no ${missing.join(", ")}`);
  const count = await fsfreezeFreezeList(session, mountpoints);
  const frozen = await fsfreezeStatus(session);
  if (count !== mountpoints.length || frozen !== "frozen") throw new Error(`raw: freeze not verified: count ${count}, status ${frozen}`);
}

async function rawThaw(session: AgentSession, checkFrozen: boolean): Promise<void> {
  if (checkFrozen && (await fsfreezeStatus(session)) !== "frozen") throw new Error("raw: the guest is not frozen at the release");
  await fsfreezeThaw(session);
  const thawed = await fsfreezeStatus(session);
  if (thawed !== "thawed") throw new Error(`raw: after the thaw the guest reports ${thawed}`);
}

/** The raw variant: one session. */
function rawWindow(socketPath: string, mountpoints: readonly string[]): Promise<{ totalMs: number; openMs: number; probe: StreamProbe }> {
  return rawSession(socketPath, async (session) => {
    await rawFreeze(session, mountpoints);
    await rawThaw(session, false);
  });
}

/** The rawSplit variant: a create session and, after a pause, a release session. Returns both probes. */
async function rawSplitWindow(socketPath: string, mountpoints: readonly string[]): Promise<{ totalMs: number; probes: StreamProbe[] }> {
  const create = await rawSession(socketPath, (session) => rawFreeze(session, mountpoints));
  await phasePause();
  const release = await rawSession(socketPath, (session) => rawThaw(session, true));
  return { totalMs: create.totalMs + release.totalMs, probes: [create.probe, release.probe] };
}

function syncMs(exchanges: readonly Exchange[]): number {
  return exchanges.filter((e) => e.command === "guest-sync-delimited").reduce((sum, e) => sum + exchangeMs(e), 0);
}

interface OursSample {
  totalMs: number;
  createMs: number;
  releaseMs: number;
  agentSyncMs: number;
  agentOpenMs: number;
  agentCommandsMs: number;
  daemonMs: number;
  agentCommands: string[];
  /** Duration of each agent round trip, in order. */
  agentCommandMs: number[];
  daemonRequests: number;
  channelsOpened: number;
}

/** One of our windows: createWindow + releaseWindow, timed and broken down. */
async function oursWindow(pool: TimedPool, target: AgentTarget, mountpoints: readonly string[]): Promise<OursSample> {
  pool.take();
  const started = clock();
  const window = await createWindow(
    { target, mountpoints: [...mountpoints], maxDurationSeconds: 120, thawOnDisconnect: true, owner: "bench" },
    { pool },
  );
  const createMs = clock() - started;
  await phasePause();
  const releaseStarted = clock();
  const released = await releaseWindow({ target, windowId: window.windowId }, { pool });
  const releaseMs = clock() - releaseStarted;
  const totalMs = createMs + releaseMs;
  if (window.frozenCount !== mountpoints.length || released.outcome !== "released" || released.agentStatus !== "thawed") {
    throw new Error(`ours: window not verified: froze ${window.frozenCount}, release ${released.outcome}, status ${released.agentStatus}`);
  }
  const channels = pool.take();
  // Relays start with the relay request, then carry the agent session; the rest is the control channel.
  const relays = channels.filter((c) => c.probe.exchanges[0]?.command === "daemon:relay");
  const control = channels.filter((c) => !relays.includes(c));
  const agentExchanges = relays.flatMap((c) => c.probe.exchanges.slice(1));
  const daemonExchanges = [...control.flatMap((c) => c.probe.exchanges), ...relays.map((c) => c.probe.exchanges[0])].filter((e) => e.command.startsWith("daemon:"));
  const sum = (list: ChannelRecord[], f: (c: ChannelRecord) => number): number => list.reduce((s, c) => s + f(c), 0);
  const exchangesMs = (list: Exchange[]): number => list.reduce((s, e) => s + (e.lastReplyAt !== undefined ? e.lastReplyAt - e.sentAt : 0), 0);
  return {
    totalMs,
    createMs,
    releaseMs,
    agentSyncMs: syncMs(agentExchanges),
    agentOpenMs: sum(relays, (c) => c.openMs),
    agentCommandsMs: exchangesMs(agentExchanges),
    daemonMs: sum(control, (c) => c.openMs) + exchangesMs(daemonExchanges),
    agentCommands: agentExchanges.map((e) => e.command),
    agentCommandMs: agentExchanges.map(exchangeMs),
    daemonRequests: daemonExchanges.length,
    channelsOpened: channels.length,
  };
}

function exchangeMs(e: Exchange): number {
  return e.lastReplyAt !== undefined ? e.lastReplyAt - e.sentAt : Number.NaN;
}

/** Keys "<position>:<command>" for a command list. */
function commandKeys(commands: readonly string[]): string[] {
  return commands.map((c, i) => `${String(i + 1).padStart(2, "0")}:${c}`);
}

function perCommand(samples: Samples, prefix: string, commands: readonly string[]): Record<string, Figure> {
  return Object.fromEntries(commandKeys(commands).map((key) => [key, samples.figure(`${prefix}.cmd.${key}`)]));
}

function recordCommands(samples: Samples, prefix: string, commands: readonly string[], durations: readonly number[]): void {
  commandKeys(commands).forEach((key, i) => samples.add(`${prefix}.cmd.${key}`, durations[i]));
}

function breakdown(samples: Samples, prefix: string, first: OursSample | undefined): OursBreakdown {
  return {
    agentOpenMs: samples.figure(`${prefix}.agentOpenMs`),
    agentCommandsMs: samples.figure(`${prefix}.agentCommandsMs`),
    agentSyncMs: samples.figure(`${prefix}.agentSyncMs`),
    createMs: samples.figure(`${prefix}.createMs`),
    releaseMs: samples.figure(`${prefix}.releaseMs`),
    daemonMs: samples.figure(`${prefix}.daemonMs`),
    otherMs: samples.figure(`${prefix}.otherMs`),
    agentRoundTrips: first?.agentCommands.length ?? 0,
    agentCommands: first?.agentCommands ?? [],
    daemonRequests: first?.daemonRequests ?? 0,
    channelsOpened: first?.channelsOpened ?? 0,
    perCommandMs: perCommand(samples, prefix, first?.agentCommands ?? []),
  };
}

function record(samples: Samples, prefix: string, s: OursSample): void {
  samples.add(`${prefix}.agentOpenMs`, s.agentOpenMs);
  samples.add(`${prefix}.agentCommandsMs`, s.agentCommandsMs);
  samples.add(`${prefix}.agentSyncMs`, s.agentSyncMs);
  samples.add(`${prefix}.createMs`, s.createMs);
  samples.add(`${prefix}.releaseMs`, s.releaseMs);
  samples.add(`${prefix}.daemonMs`, s.daemonMs);
  samples.add(`${prefix}.otherMs`, s.totalMs - s.agentOpenMs - s.agentCommandsMs - s.daemonMs);
  recordCommands(samples, prefix, s.agentCommands, s.agentCommandMs);
}

/**
 * Runs part 1 against a running lab (guest + sshd).
 * Leaves the guest thawed; on failure it thaws the guest before rethrowing.
 */
export async function benchSingleWindow(lab: Lab, options: SingleWindowOptions): Promise<SingleWindowResult> {
  const log = options.log ?? stderrLog;
  const sleepMs = options.sleepMs ?? 200;
  const mountpoints = options.mountpoints ?? ["/data"];
  const socketPath = lab.guest.socketPath;
  const dir = tempDir("single");
  const leaseDir = path.join(dir, "leases");
  const config: SshConnectionConfig = connectionFor(lab.sshd);
  const target: AgentTarget = { connection: config, socketPath, leaseDir };
  // Long idle timeouts: the slow alternatives run between two uses of these pools.
  const warmPool = new TimedPool({ idleTimeoutMs: 600_000 });
  const altPool = new SshPool({ idleTimeoutMs: 600_000 });
  const sshArgs = sshClientArgs(lab);
  const samples = new Samples();
  let firstWarm: OursSample | undefined;
  let firstCold: OursSample | undefined;
  let rawCommands: string[] = [];
  let coldConnections = 0;
  const alternatives = altSequence(mountpoints).length;

  const run = async (variant: SingleVariant, measured: boolean): Promise<void> => {
    const put = (name: string, value: number): void => {
      if (measured) samples.add(name, value);
    };
    switch (variant) {
      case "raw": {
        const r = await rawWindow(socketPath, mountpoints);
        put("raw", r.totalMs);
        put("raw.openMs", r.openMs);
        put("raw.agentCommandsMs", r.probe.busyMs());
        put("raw.agentSyncMs", syncMs(r.probe.exchanges));
        rawCommands = r.probe.exchanges.map((e) => e.command);
        if (measured) recordCommands(samples, "raw", rawCommands, r.probe.exchanges.map(exchangeMs));
        return;
      }
      case "rawSplit": {
        const r = await rawSplitWindow(socketPath, mountpoints);
        put("rawSplit", r.totalMs);
        put("rawSplit.agentCommandsMs", r.probes.reduce((sum, p) => sum + p.busyMs(), 0));
        put("rawSplit.agentSyncMs", syncMs(r.probes.flatMap((p) => p.exchanges)));
        return;
      }
      case "oursWarm": {
        const s = await oursWindow(warmPool, target, mountpoints);
        if (!measured) return;
        firstWarm ??= s;
        put("oursWarm", s.totalMs);
        record(samples, "oursWarm", s);
        return;
      }
      case "oursCold": {
        const pool = new TimedPool();
        try {
          const s = await oursWindow(pool, target, mountpoints);
          if (!measured) return;
          firstCold ??= s;
          coldConnections = pool.connectionsMade;
          put("oursCold", s.totalMs);
          record(samples, "oursCold", s);
        } finally {
          pool.closeAll();
        }
        return;
      }
      case "altSsh": {
        const started = clock();
        await altWindow((script) => runSshClient([...sshArgs, script]), socketPath, mountpoints, sleepMs);
        const total = clock() - started;
        put("altSsh", total);
        put("altSshNoWait", total - alternatives * sleepMs);
        return;
      }
      case "altPooled": {
        const started = clock();
        await altWindow(
          async (script) => {
            const r = await altPool.exec(config, script, { timeoutMs: 60_000 });
            if (r.code !== 0) throw new Error(`exec exited with ${r.code}: ${r.stderr.trim()}`);
            return r.stdout;
          },
          socketPath,
          mountpoints,
          sleepMs,
        );
        const total = clock() - started;
        put("altPooled", total);
        put("altPooledNoWait", total - alternatives * sleepMs);
        return;
      }
      case "execTrue": {
        const started = clock();
        const r = await altPool.exec(config, "true");
        if (r.code !== 0) throw new Error(`exec true exited with ${r.code}`);
        put("execTrue", clock() - started);
        return;
      }
      case "sshTrue": {
        const started = clock();
        await runSshClient([...sshArgs, "true"]);
        put("sshTrue", clock() - started);
        return;
      }
    }
  };

  try {
    log(`single window: warm-up (starts the host daemon in ${leaseDir}, connects the pools)`);
    for (const variant of SINGLE_VARIANTS) await run(variant, false);
    const warmConnectionsBefore = warmPool.connectionsMade;
    for (let rep = 0; rep < options.reps; rep++) {
      // Rotate the order, so no variant always runs right after the same other one.
      for (let i = 0; i < SINGLE_VARIANTS.length; i++) {
        await phasePause();
        await run(SINGLE_VARIANTS[(rep + i) % SINGLE_VARIANTS.length], true);
      }
      log(`single window: repetition ${rep + 1}/${options.reps} done`);
    }
    const totals = Object.fromEntries(SINGLE_VARIANTS.map((v) => [v, samples.figure(v)])) as Record<SingleVariant, Figure>;
    return {
      reps: options.reps,
      mountpoints: [...mountpoints],
      sleepMs,
      totals,
      raw: {
        agentCommandsMs: samples.figure("raw.agentCommandsMs"),
        agentSyncMs: samples.figure("raw.agentSyncMs"),
        openMs: samples.figure("raw.openMs"),
        agentCommands: rawCommands,
        perCommandMs: perCommand(samples, "raw", rawCommands),
      },
      rawSplit: { agentCommandsMs: samples.figure("rawSplit.agentCommandsMs"), agentSyncMs: samples.figure("rawSplit.agentSyncMs") },
      oursWarm: breakdown(samples, "oursWarm", firstWarm),
      oursCold: breakdown(samples, "oursCold", firstCold),
      altSshNoWait: samples.figure("altSshNoWait"),
      altPooledNoWait: samples.figure("altPooledNoWait"),
      altExecs: alternatives,
      warmConnectionsDuringReps: warmPool.connectionsMade - warmConnectionsBefore,
      coldConnectionsPerWindow: coldConnections,
    };
  } catch (err) {
    await thawLocal(socketPath).catch((thawErr: unknown) => log(`cleanup thaw failed too: ${(thawErr as Error).message}`));
    throw err;
  } finally {
    warmPool.closeAll();
    altPool.closeAll();
    removeLeaseDir(leaseDir);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
