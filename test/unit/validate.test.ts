import { validateWindowInputs, PULUMI_UNKNOWN } from "../../provider/quiesce/validate";

const props = (inputs: Record<string, unknown>): string[] => validateWindowInputs(inputs).map((f) => f.property);

describe("window input validation (check)", () => {
  test("a good local window passes", () => {
    expect(validateWindowInputs({ socketPath: "/run/qga.sock", mountpoints: ["/data"], maxDurationSeconds: 60 })).toEqual([]);
  });

  test("a good SSH window with a bastion passes", () => {
    expect(
      validateWindowInputs({
        socketPath: "/run/qga.sock",
        connection: { host: "hv1", port: 2222, hostKey: "SHA256:abc", proxy: { host: "bastion", knownHostsPath: "~/.ssh/kh" } },
      }),
    ).toEqual([]);
  });

  test.each([
    [{}, ["socketPath"]],
    [{ socketPath: "run/qga.sock" }, ["socketPath"]],
    [{ socketPath: "/s", mountpoints: ["data"] }, ["mountpoints[0]"]],
    [{ socketPath: "/s", mountpoints: ["/data", "/data"] }, ["mountpoints[1]"]],
    [{ socketPath: "/s", mountpoints: [""] }, ["mountpoints[0]"]],
    [{ socketPath: "/s", mountpoints: "/data" }, ["mountpoints"]],
    [{ socketPath: "/s", disks: ["qdata1", "qdata1"] }, ["disks[1]"]],
    [{ socketPath: "/s", maxDurationSeconds: 0 }, ["maxDurationSeconds"]],
    [{ socketPath: "/s", maxDurationSeconds: 100_000 }, ["maxDurationSeconds"]],
    [{ socketPath: "/s", timeouts: { freezeSeconds: -1 } }, ["timeouts.freezeSeconds"]],
    [{ socketPath: "/s", thawOnDisconnect: "yes" }, ["thawOnDisconnect"]],
    [{ socketPath: "/s", connection: {} }, ["connection.host"]],
    [{ socketPath: "/s", connection: { host: "h", port: 70000 } }, ["connection.port"]],
    [{ socketPath: "/s", connection: { host: "h", knownHostsPath: "kh" } }, ["connection.knownHostsPath"]],
    [{ socketPath: "/s", connection: { host: "h", hostKey: "SHA256:x", insecureSkipHostKeyCheck: true } }, ["connection.insecureSkipHostKeyCheck"]],
    [{ socketPath: "/s", connection: { host: "h", proxy: { host: "" } } }, ["connection.proxy.host"]],
  ])("%j fails on %j", (inputs, expected) => {
    expect(props(inputs)).toEqual(expected);
  });

  test("one failure per bad field, all reported at once", () => {
    expect(props({ socketPath: "x", mountpoints: ["y"], maxDurationSeconds: -5, connection: { port: 0 } })).toEqual([
      "socketPath",
      "mountpoints[0]",
      "maxDurationSeconds",
      "connection.host",
      "connection.port",
    ]);
  });

  test("unknown values (preview) are tolerated", () => {
    expect(
      validateWindowInputs({
        socketPath: PULUMI_UNKNOWN,
        mountpoints: [PULUMI_UNKNOWN, "/data"],
        connection: { host: PULUMI_UNKNOWN, port: PULUMI_UNKNOWN },
        maxDurationSeconds: PULUMI_UNKNOWN,
      }),
    ).toEqual([]);
  });

  test("messages say what is wrong and show the bad value", () => {
    const [f] = validateWindowInputs({ socketPath: "relative.sock" });
    expect(f.reason).toContain('"relative.sock"');
    expect(f.reason).toMatch(/absolute/);
  });
});
