/**
 * The Pulumi contract of every resource (issue 14), through @pulumi/pulumi's real dynamic-provider host over
 * gRPC with the SDK's serialized providers, as the engine drives them:
 * - update leaves no removed input behind (item 1);
 * - check tolerates the unknown sentinel in every field, whole maps and arrays included (item 2);
 * - toggling WindowRelease.allowExpired is an update, not a replace (item 3);
 * - the lease names the stack from the program, not from the provider host's environment (item 7).
 * Check, diff and update do no I/O; the owner test creates a real window on the fake agent (local socket).
 */
import { readClaim, removeLeaseDir } from "../fake/daemonFiles";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { providersForTesting } from "../../sdk/window";
import { QuiesceWindow } from "../../sdk";
import { FakeAgent } from "../fake/fakeAgent";
import { makeUrn, serializeDynamicProvider, startProviderHost, UNKNOWN, type PropertyMap, type ProviderHost } from "./providerHost";
import { runProgram } from "./mocksRunner";

const repoRoot = path.resolve(__dirname, "../..");
let host: ProviderHost;
const text: Record<"window" | "release" | "hostSnapshot", string> = { window: "", release: "", hostSnapshot: "" };
const urn = {
  window: makeUrn("pulumi-nodejs:dynamic/quiesce:QuiesceWindow", "db"),
  release: makeUrn("pulumi-nodejs:dynamic/quiesce:WindowRelease", "db-release"),
  hostSnapshot: makeUrn("pulumi-nodejs:dynamic/quiesce:HostSnapshot", "db-snap"),
};

beforeAll(async () => {
  // The engine need not set PULUMI_PROJECT / PULUMI_STACK for the dynamic-provider host: here it does not.
  host = await startProviderHost({ cwd: repoRoot, env: { PULUMI_PROJECT: "", PULUMI_STACK: "", PULUMI_NODEJS_PROJECT: "", PULUMI_NODEJS_STACK: "" } });
  await host.configure();
  text.window = await serializeDynamicProvider(providersForTesting.windowProvider);
  text.release = await serializeDynamicProvider(providersForTesting.releaseProvider);
  text.hostSnapshot = await serializeDynamicProvider(providersForTesting.hostSnapshotProvider);
}, 60_000);
afterAll(async () => host?.stop());

const connection = { host: "hv1.example.net", port: 2222, user: "backup", privateKey: "KEY", knownHostsPath: "/etc/ssh/ssh_known_hosts", proxy: { host: "bastion", hostKey: "SHA256:abc" } };
const windowInputs = (): PropertyMap => ({
  __provider: text.window,
  connection,
  socketPath: "/run/vm1/qga.sock",
  mountpoints: ["/data", "/data2"],
  disks: ["qdata1"],
  maxDurationSeconds: 60,
  thawOnDisconnect: true,
  timeouts: { agentSeconds: 5, freezeSeconds: 20, thawSeconds: 20 },
  triggers: ["nightly", 3],
  leaseDir: "/run/pulumi-quiesce",
  resourceName: "db",
  project: "shop",
  stack: "prod",
});
const windowOutputs = { windowId: "qw-0123456789abcdef", frozenMountpoints: ["/data"], frozenCount: 1, frozenAt: "2026-12-01T00:00:00.000Z", expiresAt: "2026-12-01T00:01:00.000Z", agentVersion: "7.2.0", filesystems: [], held: true, state: "held" };
const releaseInputs = (): PropertyMap => ({
  __provider: text.release,
  windowId: "qw-0123456789abcdef",
  connection,
  socketPath: "/run/vm1/qga.sock",
  leaseDir: "/run/pulumi-quiesce",
  timeouts: { agentSeconds: 5 },
  allowExpired: false,
});
const releaseOutputs = { heldMs: 812, releasedAt: "2026-12-01T00:00:01.000Z", outcome: "released" };
const snapshotInputs = (): PropertyMap => ({
  __provider: text.hostSnapshot,
  windowId: "qw-0123456789abcdef",
  connection,
  socketPath: "/run/vm1/qga.sock",
  leaseDir: "/run/pulumi-quiesce",
  timeouts: { agentSeconds: 5 },
  create: 'lvcreate -s -n "$SNAP" -L 1G vg0/db',
  delete: 'lvremove -f "vg0/$SNAP"',
  environment: { SNAP: "db-snap", TOKEN: "s3cret" },
});
const snapshotOutputs = { exitCode: 0, stdout: "Logical volume created\n", stderr: "", commandMs: 140 };

const cases = [
  ["window", windowInputs],
  ["release", releaseInputs],
  ["hostSnapshot", snapshotInputs],
] as const;

/** Every path in a value (objects and arrays, recursively), the value itself first: `""`, `a`, `a.b`, `a.0`. */
function paths(value: unknown, prefix: string[] = []): string[][] {
  const here = [prefix];
  if (value !== null && typeof value === "object") {
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) here.push(...paths(v, [...prefix, k]));
  }
  return here;
}

function withUnknownAt(inputs: PropertyMap, at: string[]): PropertyMap {
  const copy = JSON.parse(JSON.stringify(inputs)) as PropertyMap;
  let node: Record<string, unknown> = copy;
  for (const part of at.slice(0, -1)) node = node[part] as Record<string, unknown>;
  node[at[at.length - 1]] = UNKNOWN;
  return copy;
}

describe.each(cases)("%s: check in preview", (kind, inputs) => {
  it("accepts the valid inputs", async () => {
    expect((await host.check(urn[kind], {}, inputs())).failures).toEqual([]);
  });

  it("accepts the unknown sentinel in every field, every nested field, and in place of every map and array", async () => {
    const all = paths(inputs()).filter((p) => p.length > 0 && p[0] !== "__provider");
    expect(all.length).toBeGreaterThan(8);
    const failing: string[] = [];
    for (const at of all) {
      const { failures } = await host.check(urn[kind], {}, withUnknownAt(inputs(), at));
      if (failures.length > 0) failing.push(`${at.join(".")}: ${failures.map((f) => f.reason).join("; ")}`);
    }
    expect(failing).toEqual([]);
  });
});

describe("update keeps no removed input (the state is the new inputs plus the outputs that still hold)", () => {
  it("HostSnapshot: a removed delete command is gone, so destroy cannot run it", async () => {
    const olds = { ...snapshotInputs(), ...snapshotOutputs };
    const news = snapshotInputs();
    delete news.delete;
    const checked = await host.check(urn.hostSnapshot, olds, news);
    const diff = await host.diff("snap-id", urn.hostSnapshot, olds, checked.inputs);
    expect(diff).toMatchObject({ changes: "some", replaces: [] });
    const updated = await host.update("snap-id", urn.hostSnapshot, olds, checked.inputs);
    expect(updated.properties).not.toHaveProperty("delete");
    expect(updated.properties).toMatchObject(snapshotOutputs);
    expect(updated.properties).toMatchObject({ create: news.create, windowId: news.windowId });
  });

  it("QuiesceWindow: removed timeouts are gone; the window's outputs stay", async () => {
    const olds = { ...windowInputs(), ...windowOutputs };
    const news = windowInputs();
    delete news.timeouts;
    const diff = await host.diff(windowOutputs.windowId, urn.window, olds, news);
    expect(diff).toMatchObject({ changes: "some", replaces: [] });
    const updated = await host.update(windowOutputs.windowId, urn.window, olds, news);
    expect(updated.properties).not.toHaveProperty("timeouts");
    expect(updated.properties).toMatchObject(windowOutputs);
  });

  it("WindowRelease: toggling allowExpired updates (no replace, so no re-run against a window released long ago)", async () => {
    const olds = { ...releaseInputs(), ...releaseOutputs };
    const news = { ...releaseInputs(), allowExpired: true };
    const diff = await host.diff("rel-id", urn.release, olds, news);
    expect(diff).toMatchObject({ changes: "some", replaces: [] });
    const updated = await host.update("rel-id", urn.release, olds, news);
    expect(updated.properties).toMatchObject({ ...releaseOutputs, allowExpired: true });
    // Another window is a new release to run.
    expect((await host.diff("rel-id", urn.release, olds, { ...news, windowId: "qw-ffffffffffffffff" })).replaces).toEqual(["windowId"]);
  });
});

describe("the lease names the stack", () => {
  it("the SDK passes the program's project and stack as inputs, and the lease records them", async () => {
    const agent = await FakeAgent.start();
    const leaseDir = fs.mkdtempSync(path.join(os.tmpdir(), "leases-"));
    try {
      const run = await runProgram(
        () => {
          new QuiesceWindow("db", { socketPath: agent.socketPath, leaseDir, mountpoints: ["/data"] });
        },
        { programDir: repoRoot, project: "shop", stack: "prod" },
      );
      expect(run.errors).toEqual([]);
      expect(run.resources.find((r) => r.name === "db")?.inputs).toMatchObject({ resourceName: "db", project: "shop", stack: "prod" });
      const lease = readClaim(leaseDir, agent.socketPath) as { owner: string };
      expect(lease.owner).toBe("pulumi:shop/prod/db");
      await run.destroyAll();
      expect(agent.status).toBe("thawed");
    } finally {
      await agent.stop();
      await removeLeaseDir(leaseDir);
    }
  });

  it("a window created by a provider host without PULUMI_PROJECT / PULUMI_STACK records pulumi:project/stack/name", async () => {
    const agent = await FakeAgent.start();
    const leaseDir = fs.mkdtempSync(path.join(os.tmpdir(), "leases-"));
    try {
      const inputs = { __provider: text.window, socketPath: agent.socketPath, leaseDir, mountpoints: ["/data"], resourceName: "db", project: "shop", stack: "prod" };
      const created = await host.create(urn.window, (await host.check(urn.window, {}, inputs)).inputs);
      const lease = readClaim(leaseDir, agent.socketPath) as { owner: string };
      expect(lease.owner).toBe("pulumi:shop/prod/db");
      await host.delete(created.id, urn.window, created.properties);
      expect(agent.status).toBe("thawed");
    } finally {
      await agent.stop();
      await removeLeaseDir(leaseDir);
    }
  });
});
