/** The built `quiesce` CLI as a subprocess, with its exit code, output and (with --json) its one JSON object. */
import { spawn } from "node:child_process";
import * as path from "node:path";

const repoRoot = path.resolve(__dirname, "../..");
const cli = path.join(repoRoot, "dist/provider/cli/index.js");

/** What a run of the CLI gave. */
export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
  json: Record<string, unknown>;
}

export function quiesce(args: string[], options: { onSpawn?: (pid: number) => void } = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
    options.onSpawn?.(child.pid as number);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      let json: Record<string, unknown> = {};
      if (args.includes("--json")) {
        const lines = stdout.trim().split("\n").filter(Boolean);
        // --json prints exactly one JSON object on stdout.
        expect(lines).toHaveLength(1);
        json = JSON.parse(lines[0]) as Record<string, unknown>;
      }
      resolve({ code, stdout, stderr, json });
    });
  });
}

