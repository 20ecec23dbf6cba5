/**
 * QuiesceGroup's core (issue 12) against fake agents: all or nothing, one barrier, skew, and every member thawed
 * whatever fails. Each member is its own guest behind its own agent socket, with the real host daemon.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createGroup, groupStatus, releaseGroup, type GroupMember } from "../../provider/quiesce/group";
import { claimFiles, endedPath, removeLeaseDir } from "./daemonFiles";
import { spawnGroupCreator } from "./creatorProcess";
import { failure } from "./failure";
import { waitForFile } from "./waitForFile";
import { FakeAgent, type FakeAgentOptions } from "./fakeAgent";

let agents: FakeAgent[] = [];
let leaseDir: string;

async function start(...options: FakeAgentOptions[]): Promise<GroupMember[]> {
  agents = await Promise.all(options.map((o) => FakeAgent.start(o)));
  return agents.map((a, i) => ({ name: `m${i}`, target: { socketPath: a.socketPath, leaseDir }, mountpoints: ["/data"] }));
}
const frozenAgents = (): number[] => agents.flatMap((a, i) => (a.frozen.size > 0 ? [i] : []));
const freezes = (a: FakeAgent): string[] => a.log.filter((c) => c.startsWith("guest-fsfreeze-freeze"));

beforeEach(() => {
  leaseDir = fs.mkdtempSync(path.join(os.tmpdir(), "group-leases-"));
});
afterEach(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  agents = [];
  await removeLeaseDir(leaseDir);
});

test("every member is frozen as one point: each verified, the skew reported; the release thaws each and says it held throughout", async () => {
  const members = await start({}, {}, {});
  const planned: number[] = [];
  const armed: number[] = [];
  const g = await createGroup(
    { members, owner: "test" },
    { memberDeps: () => ({ onStep: (step) => void (step === "planned" ? planned.push(Date.now()) : step === "armed" && armed.push(Date.now())) }) },
  );
  expect(g.groupId).toMatch(/^qg-[0-9a-f]{16}$/);
  expect(g.members.map((m) => [m.name, m.frozenMountpoints])).toEqual([
    ["m0", ["/data"]],
    ["m1", ["/data"]],
    ["m2", ["/data"]],
  ]);
  expect(frozenAgents()).toEqual([0, 1, 2]);
  // The barrier: no member was armed (and so frozen) before every member was planned.
  expect(planned).toHaveLength(3);
  expect(Math.min(...armed)).toBeGreaterThanOrEqual(Math.max(...planned));
  expect(g.skewMs).toBeGreaterThanOrEqual(0);
  expect(g.skewMs).toBe(Math.max(...g.members.map((m) => m.verifiedAtMs)) - Math.min(...g.members.map((m) => m.freezeIssuedAtMs)));
  expect(g.members[0].owner).toBe("test#m0");
  const refs = g.members.map((m, i) => ({ name: m.name, target: members[i].target, windowId: m.windowId }));
  const status = await groupStatus(refs);
  expect(status.map((s) => s.report?.state)).toEqual(["held", "held", "held"]);
  const r = await releaseGroup(refs);
  expect(r.heldThroughout).toBe(true);
  expect(r.members.map((m) => m.outcome)).toEqual(["released", "released", "released"]);
  expect(frozenAgents()).toEqual([]);
});

test("a member selecting a mount point its guest lacks: the group fails naming that member, and nothing is frozen anywhere", async () => {
  const members = await start({}, {}, {});
  const bad = members.map((m, i) => (i === 1 ? { ...m, mountpoints: ["/nope"] } : m));
  const err = await failure(createGroup({ members: bad }));
  expect(err.code).toBe("GROUP_FAILED");
  expect(err.fields.failures).toEqual([expect.objectContaining({ member: "m1", code: "UNKNOWN_MOUNTPOINT" })]);
  expect(err.message).toMatch(/member m1 failed: UNKNOWN_MOUNTPOINT/);
  expect(err.message).toContain("No member is left frozen");
  // No member sent a freeze at all: the barrier stopped them before it.
  expect(agents.map(freezes)).toEqual([[], [], []]);
  expect(claimFiles(leaseDir)).toEqual([]);
});

test("a member's freeze fails after the others froze (fault injection): every member is thawed, and the error names it", async () => {
  const members = await start({}, {}, { faults: { freezeDelayMs: 300, freezeError: "injected: the disk went away" } });
  const err = await failure(createGroup({ members }));
  expect(err.code).toBe("GROUP_FAILED");
  expect(err.fields.failures).toEqual([expect.objectContaining({ member: "m2" })]);
  expect(err.fields.thawed).toEqual(["m0", "m1"]);
  expect(agents.map(freezes).map((f) => f.length)).toEqual([1, 1, 1]);
  expect(frozenAgents()).toEqual([]);
  expect(claimFiles(leaseDir)).toEqual([]);
});

test("duplicate member names and an empty group are refused before anything is touched", async () => {
  const members = await start({});
  expect((await failure(createGroup({ members: [...members, members[0]] }))).message).toMatch(/two members are named "m0"/);
  expect((await failure(createGroup({ members: [] }))).code).toBe("INVALID_INPUT");
  expect(freezes(agents[0])).toEqual([]);
});

test("the process holding a group is SIGKILLed: every member is thawed within 2 s", async () => {
  const members = await start({}, {}, {});
  const { child, windowIds: ids } = await spawnGroupCreator({ members });
  expect(frozenAgents()).toEqual([0, 1, 2]);
  const killedAt = Date.now();
  child.kill("SIGKILL");
  const ended = await Promise.all(ids.map(async (id) => JSON.parse(await waitForFile(endedPath(leaseDir, id), 10_000)) as { how: string }));
  const thawMs = Date.now() - killedAt;
  expect(ended.map((e) => e.how)).toEqual(["disconnected", "disconnected", "disconnected"]);
  expect(thawMs).toBeLessThan(2_000);
  expect(frozenAgents()).toEqual([]);
});

test("thawOnDisconnect false: the members outlive the process once all are frozen, and still end at their deadlines", async () => {
  const members = await start({}, {});
  const g = await createGroup({ members, thawOnDisconnect: false, maxDurationSeconds: 2 });
  const ended = await Promise.all(g.members.map(async (m) => JSON.parse(await waitForFile(endedPath(leaseDir, m.windowId), 10_000)) as { how: string }));
  expect(ended.map((e) => e.how)).toEqual(["expired", "expired"]);
  expect(frozenAgents()).toEqual([]);
});

test("thawOnDisconnect false, and a member cannot be let go (its window ended before the detach): the group fails and every member is thawed", async () => {
  const members = await start({}, {});
  const err = await failure(
    createGroup(
      { members, thawOnDisconnect: false, owner: "t" },
      {
        memberDeps: (name) => ({
          onStep: async (step, io) => {
            if (name !== "m1" || step !== "returned") return;
            // m1's window ends under it once it is frozen (as if released elsewhere): its detach must fail.
            const { records } = (await io.daemon.request("list", {})) as unknown as { records: { windowId: string; owner: string }[] };
            const mine = records.find((r) => r.owner === "t#m1");
            if (mine) await io.daemon.request("release", { windowId: mine.windowId, thaw: true });
          },
        }),
      },
    ),
  );
  expect(err.code).toBe("GROUP_FAILED");
  expect(err.fields.failures).toEqual([expect.objectContaining({ member: "m1" })]);
  expect(frozenAgents()).toEqual([]);
  expect(claimFiles(leaseDir)).toEqual([]);
});
