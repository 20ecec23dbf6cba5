/**
 * QuiesceWindow through @pulumi/pulumi's real dynamic-provider host over gRPC, against the real lab guest
 * and sshd: Configure, Check, Create, Diff, Update, Read and Delete exactly as the engine sends them.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { claimPath } from "../fake/daemonFiles";
import { FakeAgent } from "../fake/fakeAgent";
import { providersForTesting } from "../../sdk/window";
import { agentStatusAt } from "./agentStatus";
import { makeUrn, serializeDynamicProvider, startProviderHost, UNKNOWN, type ProviderHost } from "../pulumi/providerHost";
import { useLab } from "./shared";

const lab = useLab({ guest: { load: false } });
const repoRoot = path.resolve(__dirname, "../..");
let host: ProviderHost;
let windowText: string;
let releaseText: string;
const windowUrn = makeUrn("pulumi-nodejs:dynamic/quiesce:QuiesceWindow", "data");
const releaseUrn = makeUrn("pulumi-nodejs:dynamic/quiesce:WindowRelease", "data-release");

beforeAll(async () => {
  host = await startProviderHost({ cwd: repoRoot });
  await host.configure();
  windowText = await serializeDynamicProvider(providersForTesting.windowProvider);
  releaseText = await serializeDynamicProvider(providersForTesting.releaseProvider);
}, 60_000);
afterAll(async () => host?.stop());

function inputs(extra: Record<string, unknown> = {}): Record<string, unknown> {
  const sshd = lab().sshd;
  return {
    __provider: windowText,
    connection: { host: sshd.host, port: sshd.port, user: "root", privateKey: sshd.privateKey, knownHostsPath: sshd.knownHostsPath },
    socketPath: lab().guest.socketPath,
    mountpoints: ["/data"],
    maxDurationSeconds: 120,
    leaseDir: path.join(lab().guest.runDir, "leases"),
    resourceName: "data",
    ...extra,
  };
}

const agentStatus = (): Promise<string> => agentStatusAt(lab().guest.socketPath, inputs().leaseDir as string);

test("__provider is small, holds no secret, and only requires the package by name", () => {
  expect(windowText).toContain('require("pulumi-quiesce/provider/dynamic/index")');
  expect(windowText).not.toContain(lab().sshd.privateKey.slice(40, 80));
  expect(windowText.length).toBeLessThan(20_000);
});

test("check: one failure per bad field; unknowns tolerated in preview", async () => {
  const bad = await host.check(windowUrn, {}, inputs({ socketPath: "relative.sock", mountpoints: ["data", "/data"], maxDurationSeconds: 0 }));
  expect(bad.failures.map((f) => f.property).sort()).toEqual(["maxDurationSeconds", "mountpoints[0]", "socketPath"]);
  const preview = await host.check(windowUrn, {}, inputs({ socketPath: UNKNOWN, mountpoints: UNKNOWN }));
  expect(preview.failures).toEqual([]);
});

test("the whole lifecycle: create freezes, diff/update/read behave, delete thaws", async () => {
  const checked = await host.check(windowUrn, {}, inputs());
  expect(checked.failures).toEqual([]);
  const created = await host.create(windowUrn, checked.inputs);
  const outs = created.properties;
  expect(created.id).toMatch(/^qw-/);
  expect(outs).toMatchObject({ windowId: created.id, frozenMountpoints: ["/data"], frozenCount: 1, held: true, state: "held" });
  expect(await agentStatus()).toBe("frozen");

  // No change → no diff; credentials or timeouts only → update; selection → replace, delete first.
  expect((await host.diff(created.id, windowUrn, outs, checked.inputs)).changes).toBe("none");
  const newTimeouts = inputs({ timeouts: { agentSeconds: 20 } });
  const updateDiff = await host.diff(created.id, windowUrn, outs, newTimeouts);
  expect(updateDiff).toMatchObject({ changes: "some", replaces: [] });
  const replaceDiff = await host.diff(created.id, windowUrn, outs, inputs({ mountpoints: ["/data", "/data2"] }));
  expect(replaceDiff).toMatchObject({ changes: "some", replaces: ["mountpoints"], deleteBeforeReplace: true });
  const hostDiff = await host.diff(created.id, windowUrn, outs, inputs({ connection: { ...(inputs().connection as object), port: 2 } }));
  expect(hostDiff.replaces).toEqual(["connection.port"]);

  const updated = await host.update(created.id, windowUrn, outs, newTimeouts);
  expect(updated.properties).toMatchObject({ windowId: created.id, frozenCount: 1, timeouts: { agentSeconds: 20 } });

  const read = await host.read(created.id, windowUrn, updated.properties);
  expect(read.properties).toMatchObject({ held: true, state: "held" });

  await host.delete(created.id, windowUrn, updated.properties);
  expect(await agentStatus()).toBe("thawed");

  // Refresh tells the truth afterwards: not held.
  const after = await host.read(created.id, windowUrn, updated.properties);
  expect(after.properties).toMatchObject({ held: false, state: "released" });
  // Delete again (already thawed) succeeds without touching the guest.
  await host.delete(created.id, windowUrn, updated.properties);
});

test("WindowRelease thaws the window, then fails loudly when the window is no longer held", async () => {
  const created = await host.create(windowUrn, (await host.check(windowUrn, {}, inputs())).inputs);
  const releaseInputs = {
    __provider: releaseText,
    windowId: created.id,
    connection: inputs().connection,
    socketPath: lab().guest.socketPath,
    leaseDir: inputs().leaseDir,
  };
  const released = await host.create(releaseUrn, (await host.check(releaseUrn, {}, releaseInputs)).inputs);
  expect(released.properties).toMatchObject({ outcome: "released" });
  expect(released.properties.heldMs).toBeGreaterThanOrEqual(0);
  expect(await agentStatus()).toBe("thawed");
  await expect(host.create(releaseUrn, releaseInputs)).rejects.toThrow(/no longer held.*MAY BE INCONSISTENT/s);
  const allowed = await host.create(releaseUrn, { ...releaseInputs, allowExpired: true });
  expect(allowed.properties.outcome).toBe("already-released");
  await host.delete(created.id, windowUrn, created.properties);
});

test("the VM is deleted while its window is in state: refresh says vm-gone, release fails loudly, delete succeeds", async () => {
  // A guest agent on the host that goes away with its socket, as when a VM is stopped or deleted. The fake
  // passes the same conformance suite as qemu-ga; the SSH server and the provider host are the real ones.
  const vm = await FakeAgent.start();
  const leaseFile = claimPath(inputs().leaseDir as string, vm.socketPath);
  let stopped = false;
  try {
    const created = await host.create(windowUrn, (await host.check(windowUrn, {}, inputs({ socketPath: vm.socketPath }))).inputs);
    expect(created.properties).toMatchObject({ held: true, state: "held" });
    expect(fs.existsSync(leaseFile)).toBe(true);
    await vm.stop();
    stopped = true;
    expect(fs.existsSync(vm.socketPath)).toBe(false);

    const read = await host.read(created.id, windowUrn, created.properties);
    expect(read.properties).toMatchObject({ held: false, state: "vm-gone" });
    const releaseInputs = {
      __provider: releaseText,
      windowId: created.id,
      connection: inputs().connection,
      socketPath: vm.socketPath,
      leaseDir: inputs().leaseDir,
    };
    await expect(host.create(releaseUrn, releaseInputs)).rejects.toThrow(/no longer held.*VM stopped or was deleted.*MAY BE INCONSISTENT/s);
    await host.delete(created.id, windowUrn, created.properties);
    expect(fs.existsSync(leaseFile)).toBe(false);
    // A path that never was a window's stays an error: the CLI and create do not guess.
    await expect(host.create(windowUrn, inputs({ socketPath: vm.socketPath }))).rejects.toThrow(/does not exist/);
  } finally {
    if (!stopped) await vm.stop();
  }
});

test("create with an unknown mount point fails, lists the guest's filesystems, and freezes nothing", async () => {
  await expect(host.create(windowUrn, inputs({ mountpoints: ["/nope"] }))).rejects.toThrow(/no filesystem mounted at \/nope.*\/data \(ext4/s);
  expect(await agentStatus()).toBe("thawed");
});

test("create with an unknown disk fails and freezes nothing", async () => {
  await expect(host.create(windowUrn, inputs({ mountpoints: undefined, disks: ["no-such-serial"] }))).rejects.toThrow(/no-such-serial/);
  expect(await agentStatus()).toBe("thawed");
});

test("a guest frozen by another window: create fails naming it; delete of a window whose lease is another's does not thaw", async () => {
  const first = await host.create(windowUrn, inputs({ resourceName: "first" }));
  await expect(host.create(windowUrn, inputs({ mountpoints: ["/data2"], resourceName: "second" }))).rejects.toThrow(
    new RegExp(`already frozen by window ${first.id}`),
  );
  expect(await agentStatus()).toBe("frozen");
  // A stale window (another id) deleted while `first` holds the guest must leave the freeze alone.
  await host.delete("qw-0000000000000000", windowUrn, { ...first.properties, windowId: "qw-0000000000000000" });
  expect(await agentStatus()).toBe("frozen");
  await host.delete(first.id, windowUrn, first.properties);
  expect(await agentStatus()).toBe("thawed");
});

test("a guest whose agent does not answer: create fails within the configured timeout, nothing frozen", async () => {
  await lab().guest.qmp("stop"); // the VM is paused: the socket accepts, nothing answers
  try {
    await expect(host.create(windowUrn, inputs({ timeouts: { agentSeconds: 1 } }))).rejects.toThrow(/no reply to guest-sync-delimited within 1000 ms/);
  } finally {
    await lab().guest.qmp("cont");
  }
  expect(await agentStatus()).toBe("thawed");
});
