/**
 * A fleet of fake guest agents in a child process, for the fan-out benchmark: the agents stand for QEMU
 * processes, so they must not share the measured process's event loop or memory.
 *
 * Child: `node -r ts-node/register/transpile-only bench/fleet.ts COUNT FREEZE_DELAY_MS` starts COUNT fake
 * agents (test/fake/fakeAgent.ts) on UNIX sockets in a fresh temp dir, prints one JSON line
 * `{"sockets": [...]}` and serves until SIGTERM or until its stdin closes, then stops them and removes the dir.
 *
 * Parent: {@link startFleet}.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as readline from "node:readline";
import type { ChildProcess } from "node:child_process";
import { FakeAgent } from "../test/fake/fakeAgent";
import { spawnTracked, stopProcess } from "../test/lab/process";

/** A running fleet. */
export interface Fleet {
  /** Absolute socket paths, one per agent. */
  readonly sockets: readonly string[];
  readonly pid: number;
  /** Stops the child by its PID (SIGTERM, then SIGKILL). Idempotent. */
  stop(): Promise<void>;
}

const repoRoot = path.resolve(__dirname, "..");

/** Starts `count` fake agents (each freeze takes `freezeDelayMs`) in a child process. */
export async function startFleet(count: number, freezeDelayMs: number, timeoutMs = 60_000): Promise<Fleet> {
  const child = spawnTracked(
    process.execPath,
    ["-r", "ts-node/register/transpile-only", path.join(__dirname, "fleet.ts"), String(count), String(freezeDelayMs)],
    { cwd: repoRoot, stdio: ["pipe", "pipe", "inherit"] },
  );
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopped ??= stopProcess(child));
  try {
    const sockets = await firstLine(child, timeoutMs).then((line) => (JSON.parse(line) as { sockets: string[] }).sockets);
    if (sockets.length !== count) throw new Error(`the fleet started ${sockets.length} agents, not ${count}`);
    return { sockets, pid: child.pid as number, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

function firstLine(child: ChildProcess, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout as NodeJS.ReadableStream });
    const finish = (error: Error | undefined, line?: string): void => {
      clearTimeout(timer);
      child.removeListener("exit", onExit);
      lines.close();
      if (error) reject(error);
      else resolve(line as string);
    };
    const onExit = (code: number | null): void => finish(new Error(`the fake-agent fleet exited (${code}) before it was ready`));
    const timer = setTimeout(() => finish(new Error(`the fake-agent fleet was not ready within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
    child.once("exit", onExit);
    lines.once("line", (line) => finish(undefined, line));
  });
}

async function serve(count: number, freezeDelayMs: number): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "qbench-fleet-"));
  const agents: FakeAgent[] = [];
  let stopping = false;
  const stopAll = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await Promise.all(agents.map((a) => a.stop()));
    fs.rmSync(dir, { recursive: true, force: true });
    process.exit(0);
  };
  process.on("SIGTERM", () => void stopAll());
  process.stdin.on("end", () => void stopAll());
  process.stdin.resume();
  for (let i = 0; i < count; i++) {
    agents.push(await FakeAgent.start({ socketPath: path.join(dir, `agent-${i}.sock`), faults: { freezeDelayMs } }));
  }
  process.stdout.write(JSON.stringify({ sockets: agents.map((a) => a.socketPath) }) + "\n");
}

if (require.main === module) {
  const [count, delay] = process.argv.slice(2).map(Number);
  if (!Number.isInteger(count) || count < 1 || !Number.isFinite(delay)) {
    process.stderr.write("usage: fleet.ts COUNT FREEZE_DELAY_MS\n");
    process.exit(2);
  }
  serve(count, delay).catch((err: unknown) => {
    process.stderr.write(`fleet: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
