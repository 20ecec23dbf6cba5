/** The group file of `quiesce group` (issue 12): parsed with line numbers, every problem named with its field. */
import { GroupFileError, parseGroupFile } from "../../provider/cli/groupFile";
import { validateGroupInputs } from "../../provider/quiesce/validate";

const problems = (text: string): string[] => {
  try {
    parseGroupFile(text, "g.yaml");
  } catch (err) {
    if (err instanceof GroupFileError) return err.problems.map((p) => `${p.line}: ${p.message}`);
    throw err;
  }
  return [];
};

test("the issue's example parses: defaults apply to every member, a member's own target and fields win", () => {
  const g = parseGroupFile(
    [
      "ttl: 60                       # lease in seconds, every member (default 300)",
      "defaults:",
      "  host: hv1",
      "  user: root",
      "  identity: ~/.ssh/id_ed25519",
      "  knownHosts: ~/.ssh/known_hosts",
      "  leaseDir: /run/pulumi-quiesce",
      "members:",
      "  - name: primary",
      "    socket: /var/lib/vms/db1/qga.sock",
      "    mountpoints: [/var/lib/postgresql]",
      "  - name: replica",
      "    host: hv2",
      "    port: 2222",
      "    socket: /var/lib/vms/db2/qga.sock",
      "  - name: app",
      "    domain: app1              # a libvirt domain",
      "    disks: [appdata]",
    ].join("\n"),
    "g.yaml",
  );
  expect(g.ttl).toBe(60);
  expect(g.members.map((m) => [m.name, m.line, m.options.host, m.options.port, m.options.socket, m.options.domain, m.mountpoints, m.disks])).toEqual([
    ["primary", 9, "hv1", undefined, "/var/lib/vms/db1/qga.sock", undefined, ["/var/lib/postgresql"], []],
    ["replica", 12, "hv2", "2222", "/var/lib/vms/db2/qga.sock", undefined, [], []],
    ["app", 16, "hv1", undefined, undefined, "app1", [], ["appdata"]],
  ]);
  expect(g.members[0].options).toMatchObject({ user: "root", identity: "~/.ssh/id_ed25519", knownHosts: "~/.ssh/known_hosts", leaseDir: "/run/pulumi-quiesce" });
});

test("a default target is replaced by a member's own target of another kind", () => {
  const g = parseGroupFile("defaults: { host: h, socket: /s }\nmembers:\n  - { name: a }\n  - { name: b, domain: d }\n", "g.yaml");
  expect(g.members.map((m) => [m.options.socket, m.options.domain])).toEqual([
    ["/s", undefined],
    [undefined, "d"],
  ]);
});

test("an unknown field, a missing target, a duplicate name: each an error with its line and field", () => {
  expect(
    problems(["members:", "  - name: a", "    host: h", "    sockt: /s", "  - name: b", "    host: h", "  - name: a", "    host: h", "    socket: /t"].join("\n")),
  ).toEqual([
    expect.stringMatching(/^2: member a \(members\[0\]\): a target is required: socket/),
    expect.stringMatching(/^4: members\[0\]: unknown field "sockt" \(did you mean socket\?\)/),
    expect.stringMatching(/^5: member b \(members\[1\]\): a target is required/),
    expect.stringMatching(/^7: members\[2\]: the name "a" is used twice \(first at line 2\)/),
  ]);
});

test("bad values name the field and what it takes; bad YAML and a missing members list say so", () => {
  expect(problems("ttl: soon\nmembers:\n  - { name: a, host: h, socket: /s, port: x, mountpoints: /data }\n")).toEqual([
    expect.stringMatching(/^1: ttl must be a whole number of seconds/),
    expect.stringMatching(/^3: members\[0\]\.port must be a whole number; got "x"/),
    expect.stringMatching(/^3: members\[0\]\.mountpoints must be a list of texts/),
  ]);
  expect(problems("members: [\n")[0]).toMatch(/^\d+: not valid YAML/);
  expect(problems("ttl: 5\n")).toEqual([expect.stringMatching(/^1: members: is required/)]);
  expect(problems("members:\n  - { name: a, socket: /s }\n")).toEqual([expect.stringMatching(/give host .* or local: true/)]);
  expect(problems("member:\n  - { name: a }\n")[0]).toMatch(/unknown field "member" \(did you mean members\?\)/);
});

test("QuiesceGroup's check: members validated as windows, with members[i]. before each property", () => {
  const failures = validateGroupInputs({
    members: [{ name: "a", socketPath: "/s" }, { name: "a", domain: "d", socketPath: "/t" }, { name: "c", mountpoints: ["rel"], sockett: "/x" }],
    maxDurationSeconds: 0,
  });
  expect(failures.map((f) => f.property)).toEqual(["members[1].name", "members[1].domain", "members[2].sockett", "members[2].socketPath", "members[2].mountpoints[0]", "maxDurationSeconds"]);
  expect(failures[0].reason).toMatch(/used twice/);
  expect(validateGroupInputs({ members: [] })[0].property).toBe("members");
  expect(validateGroupInputs({ members: [{ name: "a", socketPath: "/s" }, { name: "b", domain: "d", libvirtUri: "qemu:///system" }] })).toEqual([]);
});

test("a member's field replaces the defaults of its kind: where it is reached, its host key, its target and URI, its selection", () => {
  const g = parseGroupFile(
    [
      "defaults: { host: hv1, knownHosts: /kh, domain: d, libvirtUri: 'qemu:///session', mountpoints: [/data] }",
      "members:",
      "  - { name: here, local: true, hostKey: 'SHA256:x', socket: /s, disks: [vdb] }",
      "  - { name: there }",
    ].join("\n"),
    "g.yaml",
  );
  const [here, there] = g.members;
  expect(here.options).toEqual({ local: true, hostKey: "SHA256:x", socket: "/s" });
  expect([here.mountpoints, here.disks]).toEqual([[], ["vdb"]]);
  expect(there.options).toEqual({ host: "hv1", knownHosts: "/kh", domain: "d", libvirtUri: "qemu:///session" });
  expect([there.mountpoints, there.disks]).toEqual([["/data"], []]);
});

test("a group's HostSnapshot must name one of the group's members", async () => {
  const { validateHostSnapshotInputs } = await import("../../provider/quiesce/validate");
  const base = { groupId: "qg-1", groupMembers: [{ name: "a", socketPath: "/s" }, { name: "b", domain: "d" }], create: "true" };
  expect(validateHostSnapshotInputs(base).map((f) => [f.property, f.reason])).toEqual([["member", expect.stringMatching(/needs member.*one of a, b/)]]);
  expect(validateHostSnapshotInputs({ ...base, member: "c" })[0].reason).toMatch(/no member "c": it has a, b/);
  expect(validateHostSnapshotInputs({ ...base, member: "b" })).toEqual([]);
});

test("a YAML alias is refused by name, not misread", () => {
  expect(problems("members:\n  - { name: a, host: &h hv1, socket: /s }\n  - { name: b, host: *h, socket: /t }\n")[0]).toMatch(
    /^3: members\[1\]\.host: YAML aliases \(\*h\) are not taken here/,
  );
});
