import { removeLeaseDir } from "./daemonFiles";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createHostSnapshot, type HostSnapshotInputs } from "../../provider/dynamic/hostSnapshot";
import { createWindow, releaseWindow } from "../../provider/quiesce/lifecycle";
import { isQuiesceError } from "../../provider/errors";
import { FakeAgent } from "./fakeAgent";

let agent: FakeAgent;
let leaseDir: string;
beforeEach(async () => {
  agent = await FakeAgent.start();
  leaseDir = fs.mkdtempSync(path.join(os.tmpdir(), "leases-"));
});
afterEach(async () => {
  await agent.stop();
  await removeLeaseDir(leaseDir);
});

async function window(): Promise<HostSnapshotInputs> {
  const w = await createWindow({ target: { socketPath: agent.socketPath, leaseDir }, mountpoints: ["/data"] });
  return { windowId: w.windowId, socketPath: agent.socketPath, leaseDir, create: "true" };
}

test("runs the command while the window is held and returns its output", async () => {
  const inputs = await window();
  const r = await createHostSnapshot({ ...inputs, create: "echo snapshot-taken" });
  expect(r.outs).toMatchObject({ exitCode: 0, stdout: "snapshot-taken\n" });
});

test("environment values reach the command verbatim, never as shell code", async () => {
  const inputs = await window();
  const nasty = `a'b "c" $(touch /tmp/pwned-by-quiesce) \`id\` ;rm -rf /`;
  const r = await createHostSnapshot({ ...inputs, environment: { V: nasty }, create: 'printf %s "$V"' });
  expect(r.outs.stdout).toBe(nasty);
  expect(fs.existsSync("/tmp/pwned-by-quiesce")).toBe(false);
});

test("refuses to run when the window is no longer held", async () => {
  const inputs = await window();
  await releaseWindow({ target: { socketPath: agent.socketPath, leaseDir }, windowId: inputs.windowId as string });
  const err = await createHostSnapshot({ ...inputs, create: "echo should-not-run" }).catch((e: unknown) => e);
  expect(isQuiesceError(err, "NOT_HELD")).toBe(true);
  expect((err as Error).message).toMatch(/not held before the snapshot command \(state: released\); nothing was run/);
});

test("fails when the window ended while the command ran", async () => {
  const inputs = await window();
  // The guest is thawed behind the window's back while the command runs.
  const marker = path.join(leaseDir, "started");
  const watcher = fs.watch(leaseDir, () => {
    if (fs.existsSync(marker)) agent.frozen.clear();
  });
  try {
    const err = await createHostSnapshot({ ...inputs, environment: { M: marker }, create: 'touch "$M"; sleep 0.5' }).catch((e: unknown) => e);
    expect(isQuiesceError(err, "NOT_HELD")).toBe(true);
    expect((err as Error).message).toMatch(/not held after the snapshot command \(state: thawed-outside\).*NOT CONSISTENT and was left on the host/s);
  } finally {
    watcher.close();
  }
});

test("a snapshot found inconsistent afterwards is removed by the delete command, so it does not linger unseen", async () => {
  const inputs = await window();
  const snapshot = path.join(leaseDir, "snapshot.img");
  const watcher = fs.watch(leaseDir, () => {
    if (fs.existsSync(snapshot)) agent.frozen.clear();
  });
  try {
    const err = await createHostSnapshot({
      ...inputs,
      environment: { S: snapshot },
      create: 'echo data > "$S"; sleep 0.5',
      delete: 'rm "$S"',
    }).catch((e: unknown) => e);
    expect(isQuiesceError(err, "NOT_HELD")).toBe(true);
    expect((err as Error).message).toMatch(/not consistent and the delete command removed it/);
    expect(fs.existsSync(snapshot)).toBe(false);
  } finally {
    watcher.close();
  }
});

test("a failing command fails the resource with its exit code and the end of its stderr", async () => {
  const inputs = await window();
  const err = await createHostSnapshot({ ...inputs, create: "echo lvcreate: Volume group not found >&2; exit 5" }).catch((e: unknown) => e);
  expect(isQuiesceError(err, "HOST_COMMAND_FAILED")).toBe(true);
  expect((err as Error).message).toMatch(/exited with 5.*Volume group not found/s);
});

test("environment values a failing command echoes are masked in the error (errors are not secret)", async () => {
  const inputs = await window();
  const err = await createHostSnapshot({
    ...inputs,
    environment: { RBD_KEY: "AQBx-very-secret-key==" },
    create: 'echo "rbd: auth failed for key $RBD_KEY" >&2; exit 1',
  }).catch((e: unknown) => e);
  expect(isQuiesceError(err, "HOST_COMMAND_FAILED")).toBe(true);
  expect((err as Error).message).toContain("auth failed for key [secret]");
  expect(JSON.stringify(err)).not.toContain("very-secret");
  expect(JSON.stringify((err as { fields: unknown }).fields)).not.toContain("very-secret");
});

test("a command the host kills at the lease end is judged by the check after it: its delete removes what it made", async () => {
  const w = await createWindow({ target: { socketPath: agent.socketPath, leaseDir }, mountpoints: ["/data"], maxDurationSeconds: 1 });
  const marker = path.join(leaseDir, "partial-snapshot");
  const err = await createHostSnapshot({
    windowId: w.windowId,
    socketPath: agent.socketPath,
    leaseDir,
    environment: { M: marker },
    create: 'touch "$M"; sleep 30',
    delete: 'rm -f "$M"',
  }).catch((e: unknown) => e);
  expect(isQuiesceError(err, "NOT_HELD")).toBe(true);
  expect((err as Error).message).toMatch(/delete command removed it/);
  expect(fs.existsSync(marker)).toBe(false);
}, 30_000);
