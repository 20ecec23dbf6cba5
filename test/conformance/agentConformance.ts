/**
 * The agent conformance suite: one set of scenarios, run against the fake agent
 * (test/conformance/fake.test.ts) and the real qemu-ga in the lab guest
 * (test/lab/conformance.test.ts). The fake is trusted only because both pass.
 *
 * Every scenario is a behaviour from AGENT-FACTS.md that the product relies on.
 */
import * as net from "node:net";
import { AgentSession } from "../../provider/agent/session";
import {
  fsfreezeFreezeAll,
  fsfreezeFreezeList,
  fsfreezeStatus,
  fsfreezeThaw,
  getFsinfo,
  getInfo,
  ping,
} from "../../provider/agent/commands";
import { encodeCommand, encodeSyncDelimited, AgentDecoder, DecodedEvent } from "../../provider/agent/codec";
import { openLocalChannel } from "../../provider/transport/local";
import { isQuiesceError } from "../../provider/errors";

/** What a conformance target provides. */
export interface ConformanceTarget {
  /** Absolute path of the agent's UNIX socket on this machine. */
  socketPath: string;
  /**
   * Bind-mounts the guest's `source` at `target` (no agent session may be open meanwhile); resolves with
   * the function that undoes it.
   */
  bindMount(source: string, target: string): Promise<() => Promise<void>>;
}

const TIMEOUT_MS = 10_000;

async function openSession(socketPath: string): Promise<AgentSession> {
  const channel = await openLocalChannel(socketPath);
  return AgentSession.open(channel.stream, {
    target: channel.target,
    syncTimeoutMs: TIMEOUT_MS,
    commandTimeoutMs: TIMEOUT_MS,
  });
}

/** Reads raw events from a socket until `until` says stop; bounded by a timeout. */
function collectUntil(
  socket: net.Socket,
  until: (events: DecodedEvent[]) => boolean,
  timeoutMs = TIMEOUT_MS,
): Promise<DecodedEvent[]> {
  const decoder = new AgentDecoder();
  const events: DecodedEvent[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.removeListener("data", onData);
      reject(new Error(`timed out; got ${JSON.stringify(events)}`));
    }, timeoutMs);
    timer.unref();
    function onData(chunk: Buffer): void {
      events.push(...decoder.push(chunk));
      if (until(events)) {
        clearTimeout(timer);
        socket.removeListener("data", onData);
        resolve(events);
      }
    }
    socket.on("data", onData);
  });
}

function connectRaw(socketPath: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path: socketPath });
    socket.once("error", reject);
    socket.once("connect", () => {
      socket.removeListener("error", reject);
      resolve(socket);
    });
  });
}

function closeRaw(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    if (socket.destroyed) return resolve();
    socket.once("close", () => resolve());
    socket.destroy();
  });
}

/** Registers the suite under `describe(name)`; `getTarget` is called after the target's beforeAll. */
export function agentConformance(name: string, getTarget: () => ConformanceTarget): void {
  describe(`agent conformance: ${name}`, () => {
    let session: AgentSession | undefined;

    beforeEach(async () => {
      session = await openSession(getTarget().socketPath);
      // Every scenario starts thawed.
      await fsfreezeThaw(session);
    });

    afterEach(async () => {
      // Leave the guest thawed whatever happened, on a fresh session.
      session?.close();
      const cleanup = await openSession(getTarget().socketPath);
      await fsfreezeThaw(cleanup);
      expect(await fsfreezeStatus(cleanup)).toBe("thawed");
      cleanup.close();
    });

    function s(): AgentSession {
      if (!session) throw new Error("no session");
      return session;
    }

    test("ping answers and guest-info lists the fsfreeze commands as enabled", async () => {
      await ping(s());
      const info = await getInfo(s());
      expect(info.version).toMatch(/^\d+\.\d+/);
      for (const cmd of ["guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw", "guest-fsfreeze-status", "guest-get-fsinfo"]) {
        expect(info.commands.find((c) => c.name === cmd)).toEqual({ name: cmd, enabled: true });
      }
    });

    test("fsinfo shape: /data and /data2 are ext4 on virtio disks; /data's disk has serial qdata1", async () => {
      const filesystems = await getFsinfo(s());
      const data = filesystems.find((f) => f.mountpoint === "/data");
      const data2 = filesystems.find((f) => f.mountpoint === "/data2");
      expect(data).toMatchObject({ type: "ext4" });
      expect(data2).toMatchObject({ type: "ext4" });
      expect(data?.disks[0]).toMatchObject({ busType: "virtio", serial: "qdata1" });
      expect(data2?.disks[0]?.busType).toBe("virtio");
      expect(typeof data?.name).toBe("string");
    });

    test("freeze-list of one mount point returns 1 and status is frozen; thaw returns 1", async () => {
      expect(await fsfreezeFreezeList(s(), ["/data"])).toBe(1);
      expect(await fsfreezeStatus(s())).toBe("frozen");
      expect(await fsfreezeThaw(s())).toBe(1);
      expect(await fsfreezeStatus(s())).toBe("thawed");
    });

    test("freeze-list of an unknown mount point returns 0 without error and stays thawed", async () => {
      expect(await fsfreezeFreezeList(s(), ["/nope"])).toBe(0);
      expect(await fsfreezeStatus(s())).toBe("thawed");
    });

    test("freeze-list of [] returns 0 and freezes nothing", async () => {
      // Sent raw: the typed API refuses [] on purpose.
      expect(await s().execute("guest-fsfreeze-freeze-list", { mountpoints: [] })).toBe(0);
      expect(await fsfreezeStatus(s())).toBe("thawed");
    });

    test("thaw when thawed returns 0, not an error", async () => {
      expect(await fsfreezeThaw(s())).toBe(0);
    });

    test("freeze-all freezes every filesystem fsinfo lists", async () => {
      const count = (await getFsinfo(s())).length;
      expect(await fsfreezeFreezeAll(s())).toBe(count);
      expect(await fsfreezeThaw(s())).toBe(count);
    });

    test("while frozen, fsinfo and a second freeze are refused as AGENT_FROZEN; ping, info and status still work", async () => {
      expect(await fsfreezeFreezeList(s(), ["/data"])).toBe(1);
      for (const attempt of [() => getFsinfo(s()), () => fsfreezeFreezeList(s(), ["/data2"]), () => fsfreezeFreezeAll(s())]) {
        const err = await attempt().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(isQuiesceError(err, "AGENT_FROZEN")).toBe(true);
      }
      await ping(s());
      // guest-info still answers, and reports the refused commands as disabled while frozen.
      const info = await getInfo(s());
      expect(info.commands.find((c) => c.name === "guest-fsfreeze-freeze-list")?.enabled).toBe(false);
      expect(info.commands.find((c) => c.name === "guest-get-fsinfo")?.enabled).toBe(false);
      expect(info.commands.find((c) => c.name === "guest-fsfreeze-thaw")?.enabled).toBe(true);
      expect(await fsfreezeStatus(s())).toBe("frozen");
      expect(await fsfreezeThaw(s())).toBe(1);
    });

    test("stale replies left by an earlier client arrive first on the next connection, and the sync discards them", async () => {
      s().close();
      session = undefined;
      // An earlier client writes commands and leaves without reading.
      const early = await connectRaw(getTarget().socketPath);
      early.write(Buffer.concat([encodeCommand("guest-ping"), encodeCommand("guest-fsfreeze-status"), encodeCommand("guest-ping")]));
      await new Promise<void>((resolve) => early.end(resolve));
      await closeRaw(early);
      // The next client sees those replies before the reply to its own sync.
      const next = await connectRaw(getTarget().socketPath);
      const id = 424242;
      next.write(encodeSyncDelimited(id));
      const events = await collectUntil(next, (ev) => ev.some((e) => e.kind === "return" && e.value === id));
      await closeRaw(next);
      const beforeSentinel = events.slice(0, events.findIndex((e) => e.kind === "sentinel"));
      const staleReturns = beforeSentinel.filter((e) => e.kind === "return");
      expect(staleReturns.length).toBeGreaterThanOrEqual(1);
      expect(staleReturns).toContainEqual({ kind: "return", value: "thawed" });
      // And the session layer copes: it syncs and the next answer is its own.
      session = await openSession(getTarget().socketPath);
      expect(await fsfreezeStatus(s())).toBe("thawed");
    });

    test("a second mount point of a device already frozen (a bind mount) is listed by fsinfo but never counted", async () => {
      const target = getTarget();
      s().close();
      const unbind = await target.bindMount("/data", "/bindtest");
      try {
        session = await openSession(target.socketPath);
        const filesystems = await getFsinfo(s());
        const data = filesystems.find((f) => f.mountpoint === "/data");
        expect(filesystems.find((f) => f.mountpoint === "/bindtest")).toMatchObject({ type: "ext4", name: data?.name });
        // FIFREEZE on the second mount point of a frozen device says EBUSY: skipped, not counted.
        expect(await fsfreezeFreezeList(s(), ["/data", "/bindtest"])).toBe(1);
        expect(await fsfreezeStatus(s())).toBe("frozen");
        await fsfreezeThaw(s());
        // Freezing everything counts each device once.
        expect(await fsfreezeFreezeAll(s())).toBe(new Set(filesystems.map((f) => f.name)).size);
        await fsfreezeThaw(s());
      } finally {
        s().close();
        await unbind();
        session = await openSession(target.socketPath);
      }
    });

    test("one client at a time: a second client is answered only after the first closes", async () => {
      let secondReady = false;
      const second = openSession(getTarget().socketPath).then((x) => {
        secondReady = true;
        return x;
      });
      // The first client keeps working while the second waits.
      for (let i = 0; i < 3; i++) await ping(s());
      expect(secondReady).toBe(false);
      s().close();
      session = await second;
      expect(await fsfreezeStatus(s())).toBe("thawed");
    });
  });
}
