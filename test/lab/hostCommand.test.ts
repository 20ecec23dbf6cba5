/**
 * Host commands (HostSnapshot, `quiesce run`) against the real sshd and on this machine (issue 14, items 4
 * and 5): the environment never reaches a command line on the host, and the command dies with its channel
 * when the client is killed, times out, or destroys the channel. A command allowed to run on would take its
 * snapshot after the guest was thawed, and nobody would record it.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isQuiesceError } from "../../provider/errors";
import { runHostCommand } from "../../provider/transport/hostCommand";
import { SshPool, type SshConnectionConfig } from "../../provider/transport/ssh";
import { waitForFile } from "../fake/waitForFile";
import { readEachProcess } from "./descendants";
import { startSshd, type LabSshd } from "./sshd";

const repoRoot = path.resolve(__dirname, "../..");
let sshd: LabSshd;
let pool: SshPool;
let tmp: string;

beforeAll(async () => {
  sshd = await startSshd();
  pool = new SshPool();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "hostcmd-"));
}, 60_000);
afterAll(async () => {
  pool?.closeAll();
  await sshd?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const ssh = (): SshConnectionConfig => ({ host: sshd.host, port: sshd.port, user: "root", privateKey: sshd.privateKey, knownHostsPath: sshd.knownHostsPath });
const where = [
  ["over SSH", () => ssh()],
  ["on this machine", () => undefined],
] as const;

/** Every /proc/PID/cmdline on this machine that contains `needle` (the lab's sshd and its sessions run here). */
function commandLinesContaining(needle: string): string[] {
  return [...readEachProcess("cmdline")].filter(([, cmdline]) => cmdline.includes(needle)).map(([pid, cmdline]) => `${pid}: ${cmdline.replace(/\0/g, " ")}`);
}

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

/** The figures this suite prints: how long after its channel ended each command was gone. */
const figures: string[] = [];
afterAll(() => {
  if (figures.length > 0) process.stdout.write(`host commands killed with their channel (ms after the trigger, 20 ms polling):\n  ${figures.join("\n  ")}\n`);
});

/** Resolves when `pid` is gone, recording how long after `since`; fails after `timeoutMs` (a bound, not a timing assertion). */
async function gone(pid: number, timeoutMs: number, what: string, since = Date.now()): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (alive(pid)) {
    if (Date.now() > deadline) throw new Error(`process ${pid} still runs ${timeoutMs} ms after its channel ended`);
    await new Promise((r) => setTimeout(r, 20));
  }
  figures.push(`${what}: ${Date.now() - since} ms`);
}

/** A script that starts a long sleep, records its PID in `marker`, and waits for it. */
function longRunning(marker: string): string {
  return `sleep 300 & echo $! > ${marker}.tmp && mv ${marker}.tmp ${marker}; wait`;
}

describe.each(where)("%s", (label, connection) => {
  test("exit code, stdout and stderr pass through; the command's stdin is empty; its children inherit no here-document", async () => {
    const r = await runHostCommand(connection(), { script: 'echo out; echo err >&2; ls /proc/self/fd/3 >/dev/null 2>&1 && exit 9; [ -z "$(cat)" ] && exit 7' }, pool);
    expect(r).toEqual({ code: 7, stdout: "out\n", stderr: "err\n" });
  });

  test("environment values are exact and never on a command line while the command runs", async () => {
    const secret = `tok-${randomBytes(12).toString("hex")}`;
    const value = `${secret} 'quoted' "double" $(not-run) \`not-run\`\nsecond line`;
    const marker = path.join(tmp, `env-${randomBytes(4).toString("hex")}`);
    const running = runHostCommand(connection(), { script: `touch ${marker}; sleep 1; printf %s "$TOKEN"`, environment: { TOKEN: value } }, pool);
    await waitForFile(marker, 30_000);
    expect(commandLinesContaining(secret)).toEqual([]);
    const r = await running;
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(value);
  });

  test("a timeout kills the command", async () => {
    const marker = path.join(tmp, `timeout-${randomBytes(4).toString("hex")}`);
    const err = await runHostCommand(connection(), { script: longRunning(marker), timeoutMs: 2_000 }, pool).catch((e: unknown) => e);
    expect(isQuiesceError(err, "SSH_COMMAND_TIMEOUT")).toBe(true);
    await gone(Number(fs.readFileSync(marker, "utf8")), 10_000, `${label}, timeout`);
  });

  test("an aborted call (the channel destroyed) kills the command", async () => {
    const marker = path.join(tmp, `abort-${randomBytes(4).toString("hex")}`);
    const abort = new AbortController();
    const running = runHostCommand(connection(), { script: longRunning(marker), signal: abort.signal }, pool).catch((e: unknown) => e);
    const pid = Number(await waitForFile(marker, 30_000));
    expect(alive(pid)).toBe(true);
    const aborted = Date.now();
    abort.abort(new Error("test"));
    expect(isQuiesceError(await running, "ABORTED")).toBe(true);
    await gone(pid, 10_000, `${label}, aborted`, aborted);
  });

  test("a SIGKILLed client takes its command with it", async () => {
    const marker = path.join(tmp, `killed-${randomBytes(4).toString("hex")}`);
    const script = `
      const { runHostCommand } = require("./dist/provider/transport/hostCommand");
      runHostCommand(JSON.parse(process.argv[1]) ?? undefined, { script: process.argv[2] }).then(
        (r) => console.log(JSON.stringify(r)), (e) => { console.error(e); process.exit(1); });`;
    const client = spawn(process.execPath, ["-e", script, JSON.stringify(connection() ?? null), longRunning(marker)], { cwd: repoRoot, stdio: "ignore" });
    try {
      const pid = Number(await waitForFile(marker, 30_000));
      expect(alive(pid)).toBe(true);
      const killed = Date.now();
      client.kill("SIGKILL");
      await gone(pid, 10_000, `${label}, client SIGKILLed`, killed);
    } finally {
      client.kill("SIGKILL");
    }
  });

  test("what the script leaves in the background dies with it, and the call returns when the script does", async () => {
    const marker = path.join(tmp, `leftover-${randomBytes(4).toString("hex")}`);
    const started = Date.now();
    const r = await runHostCommand(connection(), { script: `sleep 300 & echo $! > ${marker}; echo done`, timeoutMs: 60_000 }, pool);
    expect(r).toMatchObject({ code: 0, stdout: "done\n" });
    expect(Date.now() - started).toBeLessThan(30_000); // not the sleep, nor the timeout
    await gone(Number(fs.readFileSync(marker, "utf8")), 10_000, `${label}, background leftover after the script's exit`);
  });

  test("killAfterSeconds: the host kills the command by itself, the channel still open", async () => {
    const marker = path.join(tmp, `bounded-${randomBytes(4).toString("hex")}`);
    const r = await runHostCommand(connection(), { script: longRunning(marker), killAfterSeconds: 1, timeoutMs: 60_000 }, pool);
    expect(r.code).toBeNull(); // killed by a signal
    await gone(Number(fs.readFileSync(marker, "utf8")), 10_000, `${label}, killAfterSeconds 1`);
  });
});

test("an end of stdin already waiting when the script starts still kills it (no race with a new process group)", async () => {
  // The client sent everything and was gone at once: stdin is at EOF before the script even starts.
  const marker = path.join(tmp, "eof-race");
  const { hostCommandLine } = await import("../../provider/transport/hostCommand");
  for (let i = 0; i < 10; i++) {
    const r = await pool.exec(ssh(), hostCommandLine(`QUIESCE-END-race${i}`), { stdin: `sleep 1; touch ${marker}\nQUIESCE-END-race${i}\n` });
    expect(r.code).toBeNull();
  }
  await new Promise((r) => setTimeout(r, 1_500));
  expect(fs.existsSync(marker)).toBe(false);
});

test("a client gone before the whole script arrived runs nothing", async () => {
  // The wrapper reads the script up to its terminator line; a script cut short is not run.
  const marker = path.join(tmp, "partial");
  const { hostCommandLine } = await import("../../provider/transport/hostCommand");
  const r = await pool.exec(ssh(), hostCommandLine("QUIESCE-END-test"), { stdin: `touch ${marker}\n` });
  expect(r.code).toBe(125);
  expect(fs.existsSync(marker)).toBe(false);
});
