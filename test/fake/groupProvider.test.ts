/**
 * QuiesceGroup's provider logic (issue 12) against fake agents: check, create, refresh showing a member thawed
 * outside pulumi-quiesce, a group release that fails naming that member, delete; and diff's rule for members.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { checkGroup, createGroupResource, deleteGroup, diffGroup, readGroup, type GroupInputs } from "../../provider/dynamic/group";
import { createRelease } from "../../provider/dynamic/release";
import { removeLeaseDir } from "./daemonFiles";
import { failure } from "./failure";
import { FakeAgent } from "./fakeAgent";

let agents: FakeAgent[] = [];
let leaseDir: string;
beforeEach(async () => {
  leaseDir = fs.mkdtempSync(path.join(os.tmpdir(), "group-provider-"));
  agents = await Promise.all([FakeAgent.start(), FakeAgent.start()]);
});
afterEach(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await removeLeaseDir(leaseDir);
});
const inputs = (): GroupInputs => ({
  members: agents.map((a, i) => ({ name: `m${i}`, socketPath: a.socketPath, leaseDir, mountpoints: ["/data"] })),
  maxDurationSeconds: 60,
  resourceName: "g",
  project: "p",
  stack: "s",
});

test("create holds every member; refresh shows a member thawed outside; the group's release fails naming it; delete succeeds", async () => {
  expect((await checkGroup({}, inputs())).failures).toEqual([]);
  const { id, outs } = await createGroupResource(inputs());
  expect(outs).toMatchObject({ groupId: id, held: true });
  expect(outs.windows.map((w) => [w.name, w.state, w.frozenMountpoints])).toEqual([
    ["m0", "held", ["/data"]],
    ["m1", "held", ["/data"]],
  ]);
  expect(typeof outs.skewMs).toBe("number");
  // Someone thaws m1 behind pulumi-quiesce's back.
  agents[1].frozen.clear();
  const read = await readGroup(id, outs);
  expect(read.props.held).toBe(false);
  expect(read.props.windows.map((w) => [w.name, w.state])).toEqual([
    ["m0", "held"],
    ["m1", "thawed-outside"],
  ]);
  const release = await failure(createRelease({ groupId: id, groupMembers: outs.members, groupWindows: outs.windows }));
  expect(release.code).toBe("GROUP_NOT_HELD");
  expect(release.message).toMatch(/member m1 was not held throughout: .*thawed by someone else.*MAY BE INCONSISTENT/s);
  expect(agents[0].frozen.size).toBe(0); // m0 was thawed by the release all the same
  await deleteGroup(id, outs);
});

test("diff: a member's credentials update; its socket, selection or a new member replace", async () => {
  const withKey = (key: string): GroupInputs => ({ ...inputs(), members: inputs().members.map((m) => ({ ...m, connection: { host: "h", privateKey: key } })) });
  const olds = { ...withKey("k1"), groupId: "qg-1", windows: [], skewMs: 0, frozenAt: "", expiresAt: "", held: true };
  expect(await diffGroup("qg-1", olds, withKey("k2"))).toMatchObject({ changes: true, replaces: [] });
  const moved = withKey("k1");
  expect((await diffGroup("qg-1", olds, { ...moved, members: [{ ...moved.members[0], mountpoints: ["/data2"] }, moved.members[1]] })).replaces).toEqual(["members"]);
  expect((await diffGroup("qg-1", olds, { ...moved, members: [...moved.members, { name: "m2", socketPath: "/x" }] })).replaces).toEqual(["members"]);
  // The same members in another order, or with a default spelled out, are the same freeze.
  const spelled = { ...moved, members: [...moved.members].reverse().map((m) => ({ ...m, connection: { ...m.connection, port: 22 } as never })) };
  expect((await diffGroup("qg-1", olds, spelled)).replaces).toEqual([]); // an update at most: no new freeze
});
