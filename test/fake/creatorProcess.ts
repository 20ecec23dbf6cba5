/**
 * A separate node process that creates one window through the built lifecycle (dist/) and then stays
 * alive holding it, for tests that kill, stop or cut the process that froze.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as path from "node:path";
import type { CreateWindowRequest } from "../../provider/quiesce/lifecycle";

const repoRoot = path.resolve(__dirname, "../..");
const script = `
  const { createWindow } = require("./dist/provider/quiesce/lifecycle");
  createWindow(JSON.parse(process.argv[1])).then(
    (w) => console.log(JSON.stringify(w)),
    (e) => { console.error(e); process.exit(1); });`;

/** Starts the process and resolves once its window is created (the caller must kill `child`). */
export async function spawnCreator(request: Omit<CreateWindowRequest, "signal">): Promise<{ child: ChildProcess; windowId: string }> {
  const child = spawn(process.execPath, ["-e", script, JSON.stringify(request)], { cwd: repoRoot, stdio: ["ignore", "pipe", "inherit"] });
  const windowId = await new Promise<string>((resolve, reject) => {
    child.stdout?.once("data", (d: Buffer) => resolve((JSON.parse(d.toString()) as { windowId: string }).windowId));
    child.once("exit", (code) => reject(new Error(`the creator process exited ${code} before creating the window`)));
  });
  return { child, windowId };
}
