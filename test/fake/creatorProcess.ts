/**
 * A separate node process that creates one window through the built lifecycle (dist/) and then stays
 * alive holding it, for tests that kill, stop or cut the process that froze.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as path from "node:path";
import type { CreateWindowRequest } from "../../provider/quiesce/lifecycle";
import type { CreateGroupRequest } from "../../provider/quiesce/group";

const repoRoot = path.resolve(__dirname, "../..");
const script = `
  const { createWindow } = require("./dist/provider/quiesce/lifecycle");
  // QUIESCE_TEST_KILL_AT=<step>: the process SIGKILLs itself at that step boundary of the create.
  const killAt = process.env.QUIESCE_TEST_KILL_AT;
  const onStep = (step) => { if (step === killAt) process.kill(process.pid, "SIGKILL"); };
  createWindow(JSON.parse(process.argv[1]), { onStep }).then(
    (w) => console.log(JSON.stringify(w)),
    (e) => { console.error(e); process.exit(1); });`;

/** Starts the process and resolves once its window is created (the caller must kill `child`). */
export async function spawnCreator(request: Omit<CreateWindowRequest, "signal">): Promise<{ child: ChildProcess; windowId: string }> {
  const child = startCreator(request);
  const windowId = await new Promise<string>((resolve, reject) => {
    child.stdout?.once("data", (d: Buffer) => resolve((JSON.parse(d.toString()) as { windowId: string }).windowId));
    child.once("exit", (code) => reject(new Error(`the creator process exited ${code} before creating the window`)));
  });
  return { child, windowId };
}

/** Starts the process; with `killAt`, it kills itself (SIGKILL) at that step boundary of the create. */
export function startCreator(request: Omit<CreateWindowRequest, "signal">, killAt?: string): ChildProcess {
  return spawn(process.execPath, ["-e", script, JSON.stringify(request)], {
    cwd: repoRoot,
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, ...(killAt ? { QUIESCE_TEST_KILL_AT: killAt } : {}) },
  });
}

/** What one racer of {@link raceCreates} printed: its window, or its error's code and message. */
export interface RaceResult {
  readonly ok: boolean;
  readonly windowId?: string;
  readonly code?: string;
  readonly message?: string;
}

/** Starts `n` processes at once, each creating a window of `request` (owner `racer-<i>`); resolves with each outcome. */
export function raceCreates(request: Omit<CreateWindowRequest, "signal">, n: number): Promise<RaceResult[]> {
  const racer = `
    const { createWindow } = require("./dist/provider/quiesce/lifecycle");
    createWindow(JSON.parse(process.argv[1])).then(
      (w) => { console.log(JSON.stringify({ ok: true, windowId: w.windowId })); process.exit(0); },
      (e) => { console.log(JSON.stringify({ ok: false, code: e.code, message: e.message })); process.exit(0); });`;
  return Promise.all(
    Array.from(
      { length: n },
      (_, i) =>
        new Promise<RaceResult>((resolve, reject) => {
          const child = spawn(process.execPath, ["-e", racer, JSON.stringify({ ...request, owner: `racer-${i}` })], { cwd: repoRoot, stdio: ["ignore", "pipe", "inherit"] });
          let out = "";
          child.stdout?.on("data", (d: Buffer) => (out += d.toString()));
          child.once("exit", () => {
            try {
              resolve(JSON.parse(out.trim().split("\n").pop() ?? "") as RaceResult);
            } catch (err) {
              reject(new Error(`racer ${i} printed ${JSON.stringify(out)}`, { cause: err }));
            }
          });
        }),
    ),
  );
}

/**
 * 20 processes race to create a window of `target` (held past this process, lease 300 s): exactly one must win, and
 * every other must fail with ALREADY_FROZEN naming the winner. Returns the winner's window id (jest's expect).
 */
export async function raceForOneWinner(target: CreateWindowRequest["target"]): Promise<string> {
  const request = { target, mountpoints: ["/data"], thawOnDisconnect: false, maxDurationSeconds: 300, timeouts: { agentSeconds: 150 } };
  const results = await raceCreates(request, 20);
  const winners = results.filter((r) => r.ok);
  if (winners.length !== 1) console.log(JSON.stringify(results, null, 1));
  expect(winners).toHaveLength(1);
  const winner = winners[0].windowId as string;
  // The whole result is compared so a failure shows the loser's message, not only its code.
  for (const loser of results.filter((r) => !r.ok)) expect(loser).toMatchObject({ code: "ALREADY_FROZEN", message: expect.stringContaining(winner) });
  return winner;
}

/** Starts a process that creates a group and stays alive holding it; resolves with the members' window ids. */
export async function spawnGroupCreator(request: Omit<CreateGroupRequest, "signal">): Promise<{ child: ChildProcess; windowIds: string[] }> {
  const groupScript = `
    const { createGroup } = require("./dist/provider/quiesce/group");
    createGroup(JSON.parse(process.argv[1])).then(
      (g) => console.log(JSON.stringify(g.members.map((m) => m.windowId))),
      (e) => { console.error(e); process.exit(1); });`;
  const child = spawn(process.execPath, ["-e", groupScript, JSON.stringify(request)], { cwd: repoRoot, stdio: ["ignore", "pipe", "inherit"] });
  const windowIds = await new Promise<string[]>((resolve, reject) => {
    child.stdout?.once("data", (d: Buffer) => resolve(JSON.parse(d.toString()) as string[]));
    child.once("exit", (code) => reject(new Error(`the group process exited ${code} before freezing`)));
  });
  return { child, windowIds };
}
