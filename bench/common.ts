/** Pieces shared by the benchmark parts. */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { AgentSession } from "../provider/agent/session";
import { fsfreezeStatus, fsfreezeThaw } from "../provider/agent/commands";
import { openLocalChannel } from "../provider/transport/local";
import type { SshConnectionConfig } from "../provider/transport/ssh";
import type { LabSshd } from "../test/lab/lab";
import { signalIfAlive } from "../test/lab/process";

/** The repository root. */
export const repoRoot = path.resolve(__dirname, "..");

/** Progress reporter (stderr by default). */
export type Log = (line: string) => void;

/** Writes progress lines to stderr. */
export const stderrLog: Log = (line) => process.stderr.write(`bench: ${line}\n`);

/** Connection settings for a lab sshd. */
export function connectionFor(sshd: LabSshd, extra: Partial<SshConnectionConfig> = {}): SshConnectionConfig {
  return { host: sshd.host, port: sshd.port, user: sshd.user, privateKey: sshd.privateKey, knownHostsPath: sshd.knownHostsPath, ...extra };
}

/** A fresh temporary directory for one benchmark part (short path: UNIX socket paths are limited to 107 bytes). */
export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `qbench-${prefix}-`));
}

/** Thaws a guest through its local socket whatever holds it (used only to clean up after a failed run). */
export async function thawLocal(socketPath: string): Promise<void> {
  const channel = await openLocalChannel(socketPath);
  const session = await AgentSession.open(channel.stream, { target: `cleanup:${socketPath}` });
  try {
    await fsfreezeThaw(session);
    const status = await fsfreezeStatus(session);
    if (status !== "thawed") throw new Error(`cleanup: ${socketPath} still reports ${status} after a thaw`);
  } finally {
    session.close();
  }
}

/** The host daemon serving `leaseDir`: its worker and supervisor pids, from its own log. */
function daemonPids(leaseDir: string): number[] {
  let log: string;
  try {
    log = fs.readFileSync(path.join(leaseDir, "daemon.log"), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const last = [...log.matchAll(/\[(\d+)\] daemon \d+ serving .* \(supervisor (\d+|None)\)/g)].pop();
  return last ? [last[2], last[1]].filter((p) => p !== "None").map(Number) : [];
}

function isDaemonOf(pid: number, leaseDir: string): boolean {
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    return argv[1] === "-" && argv[2] === leaseDir;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

/**
 * Removes a lease directory the benchmark made and stops the host daemon that served it. The daemon leaves by
 * itself once its directory is gone and it holds nothing; it is also signalled by its PIDs (read from its own log,
 * and checked against their command lines), supervisor first so it does not restart the worker, so nothing of
 * ours outlives the run.
 */
export function removeLeaseDir(leaseDir: string): void {
  for (const pid of daemonPids(leaseDir)) if (isDaemonOf(pid, leaseDir)) signalIfAlive(pid, "SIGTERM");
  fs.rmSync(leaseDir, { recursive: true, force: true });
}
