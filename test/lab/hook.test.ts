/**
 * A real qemu-ga 7.2 run with a fsfreeze hook (-F) that fails every freeze (issue 13): the failure gets a code
 * of its own naming the hook and its log, and `--on-failure crash-consistent` takes the snapshot anyway, with
 * nothing frozen and the result saying so. The guest is never left frozen.
 */
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import { getOsinfo } from "../../provider/agent/commands";
import { guestOsProfile } from "../../provider/quiesce/guestOs";
import { createWindow, openSession } from "../../provider/quiesce/lifecycle";
import { agentStatusAt } from "./agentStatus";
import { useLab } from "./shared";

const lab = useLab({ guest: { load: false, failingFreezeHook: true } });
const repoRoot = path.resolve(__dirname, "../..");

function quiesce(args: string[]): { code: number | null; json: Record<string, unknown>; stderr: string } {
  const split = args.indexOf("--");
  const withJson = split < 0 ? [...args, "--json"] : [...args.slice(0, split), "--json", ...args.slice(split)];
  const r = spawnSync(process.execPath, [path.join(repoRoot, "dist/provider/cli/index.js"), ...withJson], { cwd: repoRoot, encoding: "utf8", timeout: 60_000 });
  return { code: r.status, json: JSON.parse(r.stdout.trim()) as Record<string, unknown>, stderr: r.stderr };
}
const target = (): string[] => ["--local", "--socket", lab().guest.socketPath, "--lease-dir", path.join(lab().guest.runDir, "hook-leases")];

test("the real agent's hook failure is FREEZE_HOOK_FAILED, naming the hook and its log; nothing is frozen", async () => {
  const r = quiesce(["run", ...target(), "--mountpoint", "/data", "--", "true"]);
  expect(r.code).toBe(1);
  expect(r.json).toMatchObject({ ok: false, error: { code: "FREEZE_HOOK_FAILED", fields: { hookStatus: 3 } } });
  expect((r.json.error as { message: string }).message).toMatch(/failed with status 3.*\/var\/log\/qga-fsfreeze-hook\.log/s);
  expect(await agentStatusAt(lab().guest.socketPath)).toBe("thawed");
});

test("--on-failure crash-consistent runs the command with nothing frozen, and says crash-consistent", async () => {
  const r = quiesce(["run", ...target(), "--mountpoint", "/data", "--on-failure", "crash-consistent", "--", "echo", "copied"]);
  expect(r.code).toBe(0);
  expect(r.json).toMatchObject({ ok: true, consistency: "crash", outcome: "crash-consistent", frozenMountpoints: [], stdout: "copied\n" });
  expect(r.json.consistencyReason).toMatch(/^FREEZE_HOOK_FAILED: /);
  expect(r.stderr).toContain("NOTHING FROZEN");
  expect(await agentStatusAt(lab().guest.socketPath)).toBe("thawed");
});

test("the lifecycle falls back on the real agent too; the real agent's guest-get-osinfo reads as linux", async () => {
  const w = await createWindow({ target: { socketPath: lab().guest.socketPath, leaseDir: path.join(lab().guest.runDir, "hook-leases") }, mountpoints: ["/data"], onQuiesceFailure: "crash-consistent" });
  expect(w).toMatchObject({ consistency: "crash", frozenCount: 0 });
  expect(await agentStatusAt(lab().guest.socketPath)).toBe("thawed");
  const session = await openSession({ socketPath: lab().guest.socketPath }, undefined);
  try {
    const info = await getOsinfo(session);
    expect(info.id).toBe("quiesce-lab"); // the lab's os-release
    expect(guestOsProfile(info).kind).toBe("linux");
  } finally {
    session.close();
  }
});
