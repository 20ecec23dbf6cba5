import { AgentSession } from "../../provider/agent/session";
import { fsfreezeFreezeList, fsfreezeStatus, getFsinfo, ping } from "../../provider/agent/commands";
import type { QuiesceError } from "../../provider/errors";
import { failure } from "./failure";
import { openLocalChannel } from "../../provider/transport/local";
import { FakeAgent } from "./fakeAgent";
import { scriptedPeer, syncingResponder } from "./scriptedPeer";

async function expectCode(promise: Promise<unknown>, code: string): Promise<QuiesceError> {
  const err = await failure(promise);
  expect(err.code).toBe(code);
  return err;
}

describe("sync handshake", () => {
  test("discards stale replies, a stale sync reply and the parse-error reply until its own sentinel reply", async () => {
    const peer = scriptedPeer((request, p) => {
      if (request.kind === "reset") {
        // What an earlier client left unread, then the parse error the 0xFF itself causes.
        p.send('{"return": "stale-1"}\n{"return": 3}\n');
        p.send(Buffer.concat([Buffer.of(0xff), Buffer.from('{"return": 12345}\n')]));
        p.send(`{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\uFFFD'"}}\n`);
        return;
      }
      if (request.execute === "guest-sync-delimited") {
        p.send(Buffer.concat([Buffer.of(0xff), Buffer.from(JSON.stringify({ return: request.arguments?.id }) + "\n")]));
      } else if (request.execute === "guest-fsfreeze-status") p.sendReturn("thawed");
    });
    const session = await AgentSession.open(peer.stream, { target: "t" });
    expect(session.state).toBe("ready");
    await expect(fsfreezeStatus(session)).resolves.toBe("thawed");
    session.close();
  });

  test("a return equal to the sync id but without the 0xFF delimiter is not taken as the sync reply", async () => {
    let syncId: unknown;
    const peer = scriptedPeer((request, p) => {
      if (request.kind === "command" && request.execute === "guest-sync-delimited") {
        syncId = request.arguments?.id;
        p.sendReturn(syncId);
      }
    });
    await expectCode(AgentSession.open(peer.stream, { syncTimeoutMs: 200 }), "AGENT_TIMEOUT");
    expect(syncId).toBeDefined();
  });

  test("uses a fresh random id per handshake", async () => {
    const ids: unknown[] = [];
    const peer = scriptedPeer(
      syncingResponder((execute, _args, p) => {
        if (execute === "guest-ping") p.sendReturn({});
      }),
    );
    const session = await AgentSession.open(peer.stream);
    await session.resync();
    await session.resync();
    for (const r of peer.requests) if (r.kind === "command" && r.execute === "guest-sync-delimited") ids.push(r.arguments?.id);
    expect(ids).toHaveLength(3);
    expect(new Set(ids).size).toBe(3);
    session.close();
  });

  test("an agent that never answers fails the open with AGENT_TIMEOUT and a hint", async () => {
    const peer = scriptedPeer();
    const err = await expectCode(AgentSession.open(peer.stream, { syncTimeoutMs: 100, target: "hv:/s" }), "AGENT_TIMEOUT");
    expect(err.message).toMatch(/qemu-ga running/);
    expect(err.fields).toMatchObject({ target: "hv:/s", command: "guest-sync-delimited", timeoutMs: 100 });
    expect(peer.stream.destroyed).toBe(true);
  });
});

describe("commands", () => {
  test("a timed-out command's late reply is never taken as the answer to the next command", async () => {
    let pings = 0;
    const peer = scriptedPeer(
      syncingResponder((execute, _args, p) => {
        if (execute === "guest-fsfreeze-status") {
          // Answer far too late.
          setTimeout(() => p.sendReturn("frozen"), 150);
        } else if (execute === "guest-ping") {
          pings++;
          p.sendReturn({});
        }
      }),
    );
    const session = await AgentSession.open(peer.stream);
    await expectCode(fsfreezeStatus(session, { timeoutMs: 50 }), "AGENT_TIMEOUT");
    expect(session.state).toBe("desynced");
    // Wait until the late reply has arrived, then run another command.
    await new Promise((r) => setTimeout(r, 200));
    await expect(ping(session)).resolves.toBeUndefined();
    expect(pings).toBe(1);
    const syncs = peer.requests.filter((r) => r.kind === "command" && r.execute === "guest-sync-delimited");
    expect(syncs).toHaveLength(2); // open + re-sync after the timeout
    session.close();
  });

  test("one command in flight: a second call is written only after the first reply", async () => {
    const order: string[] = [];
    const peer = scriptedPeer(
      syncingResponder((execute, _args, p) => {
        order.push(`recv ${execute}`);
        setTimeout(() => p.sendReturn(execute === "guest-fsfreeze-status" ? "thawed" : {}), 30);
      }),
    );
    const session = await AgentSession.open(peer.stream);
    const a = fsfreezeStatus(session).then((v) => order.push(`done status ${v}`));
    const b = ping(session).then(() => order.push("done ping"));
    await Promise.all([a, b]);
    expect(order).toEqual(["recv guest-fsfreeze-status", "done status thawed", "recv guest-ping", "done ping"]);
    session.close();
  });

  test("closing the channel fails the pending call with AGENT_INTERRUPTED", async () => {
    const peer = scriptedPeer(
      syncingResponder((execute, _args, p) => {
        if (execute === "guest-fsfreeze-freeze") p.hangUp();
      }),
    );
    const session = await AgentSession.open(peer.stream);
    const err = await expectCode(session.execute("guest-fsfreeze-freeze"), "AGENT_INTERRUPTED");
    expect(err.message).toMatch(/may or may not have run/);
    expect(session.state).toBe("closed");
    await expectCode(ping(session), "AGENT_INTERRUPTED");
  });

  test("client close fails a pending call", async () => {
    const peer = scriptedPeer(syncingResponder(() => undefined));
    const session = await AgentSession.open(peer.stream);
    const pending = ping(session);
    session.close();
    await expectCode(pending, "AGENT_INTERRUPTED");
  });

  test("an AbortSignal aborts a sent call with ABORTED and the session re-syncs", async () => {
    let sawStatus!: () => void;
    const statusSent = new Promise<void>((r) => (sawStatus = r));
    const peer = scriptedPeer(
      syncingResponder((execute, _args, p) => {
        if (execute === "guest-ping") p.sendReturn({});
        if (execute === "guest-fsfreeze-status") sawStatus(); // and never answer
      }),
    );
    const session = await AgentSession.open(peer.stream);
    const controller = new AbortController();
    const pending = fsfreezeStatus(session, { signal: controller.signal });
    await statusSent;
    controller.abort(new Error("user pressed ctrl-c"));
    const err = await expectCode(pending, "ABORTED");
    expect((err.cause as Error).message).toBe("user pressed ctrl-c");
    expect(session.state).toBe("desynced");
    await expect(ping(session)).resolves.toBeUndefined();
    session.close();
  });

  test("an already-aborted signal sends nothing", async () => {
    const peer = scriptedPeer(syncingResponder(() => undefined));
    const session = await AgentSession.open(peer.stream);
    const before = peer.requests.length;
    await expectCode(ping(session, { signal: AbortSignal.abort() }), "ABORTED");
    expect(peer.requests.length).toBe(before);
    expect(session.state).toBe("ready");
    session.close();
  });

  test.each([
    "Command guest-get-fsinfo has been disabled: the agent is in frozen state",
    "Command guest-get-fsinfo has been disabled: the command is not allowed",
  ])("frozen-state refusal %j becomes AGENT_FROZEN", async (desc) => {
    const peer = scriptedPeer(
      syncingResponder((_execute, _args, p) => p.send(JSON.stringify({ error: { class: "CommandNotFound", desc } }) + "\n")),
    );
    const session = await AgentSession.open(peer.stream, { target: "hv:/s" });
    const err = await expectCode(getFsinfo(session), "AGENT_FROZEN");
    expect(err.fields).toMatchObject({ command: "guest-get-fsinfo", errorClass: "CommandNotFound", desc, target: "hv:/s" });
    expect(session.state).toBe("ready");
    session.close();
  });

  test("other agent errors are AGENT_COMMAND_FAILED with class and desc", async () => {
    const peer = scriptedPeer(
      syncingResponder((_e, _a, p) => p.send('{"error": {"class": "GenericError", "desc": "failed to freeze /data: EIO"}}\n')),
    );
    const session = await AgentSession.open(peer.stream);
    const err = await expectCode(session.execute("guest-fsfreeze-freeze"), "AGENT_COMMAND_FAILED");
    expect(err.fields.desc).toBe("failed to freeze /data: EIO");
    session.close();
  });

  test("a garbage reply is AGENT_PROTOCOL and the next command re-syncs", async () => {
    let first = true;
    const peer = scriptedPeer(
      syncingResponder((_e, _a, p) => {
        if (first) p.send("<html>this is not an agent</html>\n");
        else p.sendReturn({});
        first = false;
      }),
    );
    const session = await AgentSession.open(peer.stream);
    await expectCode(ping(session), "AGENT_PROTOCOL");
    await expect(ping(session)).resolves.toBeUndefined();
    session.close();
  });

  test("a reply of the wrong shape is AGENT_PROTOCOL", async () => {
    const peer = scriptedPeer(syncingResponder((_e, _a, p) => p.sendReturn("melting")));
    const session = await AgentSession.open(peer.stream);
    await expectCode(fsfreezeStatus(session), "AGENT_PROTOCOL");
    session.close();
  });

  test("freeze-list with [] is refused before anything is sent: [] never means all", async () => {
    const peer = scriptedPeer(syncingResponder(() => undefined));
    const session = await AgentSession.open(peer.stream);
    const before = peer.requests.length;
    await expectCode(fsfreezeFreezeList(session, []), "INVALID_INPUT");
    expect(peer.requests.length).toBe(before);
    session.close();
  });
});

describe("over the fake agent's UNIX socket", () => {
  let agent: FakeAgent;
  afterEach(async () => agent.stop());

  async function open(timeoutMs = 2000): Promise<AgentSession> {
    const channel = await openLocalChannel(agent.socketPath);
    return AgentSession.open(channel.stream, { target: channel.target, syncTimeoutMs: timeoutMs, commandTimeoutMs: timeoutMs });
  }

  test("garbage bytes before the sync are discarded", async () => {
    agent = await FakeAgent.start({ faults: { garbage: Buffer.from([0x00, 0x13, 0x37, 0x0a, 0x7b, 0x7b, 0x0a]) } });
    const session = await open();
    await expect(fsfreezeStatus(session)).resolves.toBe("thawed");
    session.close();
  });

  test("an endless line is a bounded failure, not unbounded memory", async () => {
    agent = await FakeAgent.start({ faults: { endlessLine: true } });
    const channel = await openLocalChannel(agent.socketPath);
    const err = await expectCode(
      AgentSession.open(channel.stream, { syncTimeoutMs: 1000, maxLineBytes: 256 * 1024 }),
      "AGENT_TIMEOUT",
    );
    expect(err.fields.command).toBe("guest-sync-delimited");
  });

  test("an agent that dies mid-command interrupts the call", async () => {
    agent = await FakeAgent.start({ faults: { dieOnCommand: "guest-fsfreeze-freeze" } });
    const session = await open();
    await expectCode(session.execute("guest-fsfreeze-freeze"), "AGENT_INTERRUPTED");
  });

  test("a silent agent times out, then answers once it resumes", async () => {
    agent = await FakeAgent.start({ faults: { silent: true } });
    await expectCode(open(200), "AGENT_TIMEOUT");
    agent.resume();
    const session = await open();
    await expect(fsfreezeStatus(session)).resolves.toBe("thawed");
    session.close();
  });

  test("missing socket is SOCKET_MISSING with the path", async () => {
    agent = await FakeAgent.start();
    const err = await expectCode(openLocalChannel("/nonexistent/qga.sock"), "SOCKET_MISSING");
    expect(err.message).toContain("/nonexistent/qga.sock");
  });
});
