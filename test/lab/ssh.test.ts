/**
 * The SSH transport against the lab's real OpenSSH sshd and the real guest agent.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { utils } from "ssh2";
import { AgentSession } from "../../provider/agent/session";
import { fsfreezeStatus, ping } from "../../provider/agent/commands";
import { encodeCommand } from "../../provider/agent/codec";
import { SshPool, type SshConnectionConfig } from "../../provider/transport/ssh";
import { failure } from "../fake/failure";
import { FakeAgent } from "../fake/fakeAgent";
import { descendants } from "./descendants";
import { startSshd, type LabSshd } from "./lab";
import { useLab } from "./shared";

const lab = useLab({ guest: { load: false } });
const pools: SshPool[] = [];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ssh-test-"));

afterEach(() => {
  for (const p of pools.splice(0)) p.closeAll();
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function newPool(options?: ConstructorParameters<typeof SshPool>[0]): SshPool {
  const pool = new SshPool(options);
  pools.push(pool);
  return pool;
}

function config(extra: Partial<SshConnectionConfig> = {}, sshd: LabSshd = lab().sshd): SshConnectionConfig {
  return {
    host: sshd.host,
    port: sshd.port,
    user: "root",
    privateKey: sshd.privateKey,
    knownHostsPath: sshd.knownHostsPath,
    dialErrorLimit: 1,
    perDialTimeout: 10,
    ...extra,
  };
}

async function session(pool: SshPool, cfg: SshConnectionConfig, socketPath = lab().guest.socketPath): Promise<AgentSession> {
  const channel = await pool.openAgentChannel(cfg, socketPath);
  return AgentSession.open(channel.stream, { target: channel.target, syncTimeoutMs: 15_000, commandTimeoutMs: 15_000 });
}

async function pingThrough(pool: SshPool, cfg: SshConnectionConfig): Promise<void> {
  const s = await session(pool, cfg);
  try {
    await ping(s);
  } finally {
    s.close();
  }
}


function writeFile(name: string, text: string): string {
  const file = path.join(tmp, name);
  fs.writeFileSync(file, text);
  return file;
}

function otherKey(): { privateKey: string; publicKey: string } {
  const pair = utils.generateKeyPairSync("ed25519");
  return { privateKey: pair.private, publicKey: pair.public };
}

describe("authentication", () => {
  test("an unencrypted key authenticates and the real agent answers through the tunnel", async () => {
    await pingThrough(newPool(), config());
  });

  test("an encrypted key with its passphrase authenticates", async () => {
    await pingThrough(newPool(), config({ privateKey: lab().sshd.encryptedKey, privateKeyPassword: lab().sshd.passphrase }));
  });

  test("ssh-agent authentication works", async () => {
    const sock = path.join(tmp, "agent.sock");
    const agent: ChildProcess = spawn("ssh-agent", ["-D", "-a", sock], { stdio: "ignore" });
    try {
      // ssh-add retries are bounded: the agent socket appears within a moment of spawning.
      let added = 1;
      for (let i = 0; i < 50 && added !== 0; i++) {
        added = spawnSync("ssh-add", [lab().sshd.privateKeyPath], { env: { ...process.env, SSH_AUTH_SOCK: sock }, stdio: "ignore" }).status ?? 1;
        if (added !== 0) await new Promise((r) => setTimeout(r, 50));
      }
      expect(added).toBe(0);
      await pingThrough(newPool(), config({ privateKey: undefined, agentSocketPath: sock }));
    } finally {
      agent.kill("SIGTERM");
    }
  });

  test("a key the server does not know fails with SSH_AUTH_FAILED naming what was tried", async () => {
    const err = await failure(pingThrough(newPool(), config({ privateKey: otherKey().privateKey, agentSocketPath: "/nonexistent" })));
    expect(err.code).toBe("SSH_AUTH_FAILED");
    expect(err.message).toMatch(/tried publickey/);
    expect(err.message).toMatch(/authorized_keys/);
  });

  test("a wrong passphrase fails with SSH_KEY_PASSPHRASE, and a missing one says to set it", async () => {
    const wrong = await failure(pingThrough(newPool(), config({ privateKey: lab().sshd.encryptedKey, privateKeyPassword: "not-it" })));
    expect(wrong.code).toBe("SSH_KEY_PASSPHRASE");
    const missing = await failure(pingThrough(newPool(), config({ privateKey: lab().sshd.encryptedKey })));
    expect(missing.code).toBe("SSH_KEY_PASSPHRASE");
    expect(missing.message).toMatch(/set privateKeyPassword/);
  });

  test("text that is not a key fails with SSH_KEY_INVALID", async () => {
    const err = await failure(pingThrough(newPool(), config({ privateKey: "/root/.ssh/id_ed25519" })));
    expect(err.code).toBe("SSH_KEY_INVALID");
  });
});

describe("host key verification", () => {
  test.each([
    ["a pinned public key", () => ({ hostKey: lab().sshd.hostPublicKey, knownHostsPath: undefined })],
    ["a pinned SHA256 fingerprint", () => ({ hostKey: lab().sshd.hostFingerprint, knownHostsPath: undefined })],
    ["a plain known_hosts entry", () => ({ knownHostsPath: lab().sshd.knownHostsPath })],
    ["a hashed known_hosts entry", () => ({ knownHostsPath: lab().sshd.hashedKnownHostsPath })],
  ])("%s is accepted", async (_name, extra) => {
    await pingThrough(newPool(), config(extra()));
  });

  test("a different pinned key is refused with both fingerprints", async () => {
    const err = await failure(pingThrough(newPool(), config({ hostKey: otherKey().publicKey, knownHostsPath: undefined })));
    expect(err.code).toBe("SSH_HOST_KEY_MISMATCH");
    expect(err.message).toContain(lab().sshd.hostFingerprint);
  });

  test("a host missing from known_hosts is refused as unknown, with how to add it", async () => {
    const err = await failure(pingThrough(newPool(), config({ knownHostsPath: writeFile("empty_known_hosts", "") })));
    expect(err.code).toBe("SSH_HOST_KEY_UNKNOWN");
    expect(err.message).toContain(lab().sshd.hostFingerprint);
    expect(err.message).toMatch(/ssh-keyscan/);
  });

  test("a revoked host key is refused", async () => {
    const revoked = writeFile("revoked_known_hosts", `${fs.readFileSync(lab().sshd.knownHostsPath, "utf8")}@revoked * ${lab().sshd.hostPublicKey}\n`);
    const err = await failure(pingThrough(newPool(), config({ knownHostsPath: revoked })));
    expect(err.code).toBe("SSH_HOST_KEY_REVOKED");
  });

  test("with no verification configured (no pin, no known_hosts) the connection is refused", () => {
    // os.homedir() reads the real process environment, so this runs in a child process with an empty HOME.
    const home = fs.mkdtempSync(path.join(tmp, "home-"));
    const script = `
      const { SshPool } = require("./dist/provider/transport/ssh");
      const pool = new SshPool();
      pool.openAgentChannel(JSON.parse(process.argv[1]), process.argv[2]).then(
        () => { console.log(JSON.stringify({ ok: true })); pool.closeAll(); },
        (e) => { console.log(JSON.stringify({ code: e.code, message: e.message })); pool.closeAll(); });`;
    const cfg = config({ knownHostsPath: undefined });
    const child = spawnSync(process.execPath, ["-e", script, JSON.stringify(cfg), lab().guest.socketPath], {
      cwd: path.resolve(__dirname, "../.."),
      env: { ...process.env, HOME: home },
      encoding: "utf8",
      timeout: 30_000,
    });
    const result = JSON.parse(child.stdout.trim().split("\n").pop() ?? "{}") as { code?: string; message?: string };
    expect(["SSH_HOST_KEY_UNKNOWN", "SSH_HOST_KEY_UNVERIFIED"]).toContain(result.code);
    expect(result.message).toMatch(/hostKey/);
    expect(result.message).toContain(path.join(home, ".ssh/known_hosts"));
  });
});

describe("bastion", () => {
  let bastion: LabSshd;
  beforeAll(async () => {
    bastion = await startSshd();
  });
  afterAll(async () => bastion?.stop());

  test("the real guest's agent answers through a bastion", async () => {
    const before = bastion.acceptedConnections();
    await pingThrough(newPool(), config({ proxy: config({}, bastion) }));
    expect(bastion.acceptedConnections()).toBe(before + 1);
  });

  test("a bastion that cannot be reached fails with SSH_BASTION_FAILED", async () => {
    const err = await failure(pingThrough(newPool(), config({ proxy: config({ port: 1 }, bastion) })));
    expect(err.code).toBe("SSH_BASTION_FAILED");
    expect(err.message).toMatch(/bastion/);
  });
});

describe("process lifetime", () => {
  let bastion: LabSshd;
  beforeAll(async () => {
    bastion = await startSshd();
  });
  afterAll(async () => bastion?.stop());

  /** A separate process uses a pool whose idle close is 10 minutes away, and does not close it. */
  function useAndLeave(cfg: SshConnectionConfig): Promise<{ code: number | null; stdout: string }> {
    const script = `
      const { SshPool } = require("./dist/provider/transport/ssh");
      const { AgentSession } = require("./dist/provider/agent/session");
      const { ping } = require("./dist/provider/agent/commands");
      const [cfg, socketPath] = JSON.parse(process.argv[1]);
      const pool = new SshPool({ idleTimeoutMs: 600000 });
      (async () => {
        const channel = await pool.openAgentChannel(cfg, socketPath);
        const s = await AgentSession.open(channel.stream, { target: channel.target, syncTimeoutMs: 15000, commandTimeoutMs: 15000 });
        await ping(s);
        s.close();
        const r = await pool.exec(cfg, "echo done");
        console.log(r.stdout.trim());
      })().catch((e) => { console.error(e); process.exit(1); });`;
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, ["-e", script, JSON.stringify([cfg, lab().guest.socketPath])], {
        cwd: path.resolve(__dirname, "../.."),
        stdio: ["ignore", "pipe", "inherit"],
      });
      let stdout = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      child.on("error", reject);
      child.on("close", (code) => resolve({ code, stdout: stdout.trim() }));
    });
  }

  test("an idle pooled connection never keeps the process alive: it exits when its work is done, long before the idle close", async () => {
    expect(await useAndLeave(config())).toEqual({ code: 0, stdout: "done" });
  }, 60_000);

  test("nor does one through a bastion (the bastion's connection is idle too)", async () => {
    expect(await useAndLeave(config({ proxy: config({}, bastion) }))).toEqual({ code: 0, stdout: "done" });
  }, 60_000);
});

describe("agent socket diagnosis", () => {
  test("a missing socket, a path that is not a socket, and a relative path each get their own error", async () => {
    const pool = newPool();
    expect((await failure(pool.openAgentChannel(config(), "/nonexistent/qga.sock"))).code).toBe("SOCKET_MISSING");
    expect((await failure(pool.openAgentChannel(config(), "/etc/hostname"))).code).toBe("SOCKET_NOT_A_SOCKET");
    expect((await failure(pool.openAgentChannel(config(), "qga.sock"))).code).toBe("INVALID_INPUT");
  });

  test("streamlocal forwarding disabled on the server is STREAMLOCAL_REFUSED", async () => {
    const closed = await startSshd({ allowStreamLocalForwarding: false });
    try {
      const err = await failure(newPool().openAgentChannel(config({}, closed), lab().guest.socketPath, { busyTimeoutMs: 1_000 }));
      expect(err.code).toBe("STREAMLOCAL_REFUSED");
      expect(err.message).toMatch(/AllowStreamLocalForwarding/);
    } finally {
      await closed.stop();
    }
  });

  test("connection refused is SSH_CONNECTION_REFUSED", async () => {
    const err = await failure(pingThrough(newPool(), config({ port: 1 })));
    expect(err.code).toBe("SSH_CONNECTION_REFUSED");
  });
});

describe("dead servers and reconnects", () => {
  function waitForClose(s: AgentSession, stream: NodeJS.EventEmitter): Promise<void> {
    return new Promise((resolve) => {
      if (s.state === "closed") return resolve();
      stream.once("close", () => resolve());
    });
  }

  test("a killed sshd connection fails open channels at once, and the next use reconnects", async () => {
    const sshd = await startSshd();
    try {
      const pool = newPool();
      const cfg = config({}, sshd);
      const channel = await pool.openAgentChannel(cfg, lab().guest.socketPath);
      const s = await AgentSession.open(channel.stream, { target: channel.target, syncTimeoutMs: 15_000 });
      const closed = waitForClose(s, channel.stream);
      for (const pid of descendants(sshd.pid)) process.kill(pid, "SIGKILL");
      await closed;
      const err = await failure(ping(s));
      expect(err.code).toBe("AGENT_INTERRUPTED");
      await pingThrough(pool, cfg);
      expect(pool.connectionsMade).toBe(2);
    } finally {
      await sshd.stop();
    }
  });

  test("a SIGSTOPped sshd is detected by keepalive; the pending call fails and the next use reconnects", async () => {
    const sshd = await startSshd();
    const stopped: number[] = [];
    try {
      const pool = newPool({ keepaliveIntervalMs: 500, keepaliveCountMax: 3 });
      const cfg = config({}, sshd);
      const s = await session(pool, cfg, lab().guest.socketPath);
      stopped.push(...descendants(sshd.pid));
      for (const pid of stopped) process.kill(pid, "SIGSTOP");
      // The command can never be answered; keepalive (3 x 0.5 s) must end the wait well before the command timeout.
      const err = await failure(s.execute("guest-ping", undefined, { timeoutMs: 60_000 }));
      expect(err.code).toBe("AGENT_INTERRUPTED");
      expect(String((err.cause as Error | undefined)?.message)).toMatch(/SSH connection lost \(Keepalive timeout: no answer to 3 keepalives/);
      // The stopped sshd child still holds the agent chardev (one client at a time): end it, as an
      // operator would, before the next use.
      for (const pid of stopped.splice(0)) process.kill(pid, "SIGKILL");
      await pingThrough(pool, cfg);
      expect(pool.connectionsMade).toBe(2);
    } finally {
      // If the test failed early, end what it stopped (only processes that still exist).
      for (const pid of stopped) if (fs.existsSync(`/proc/${pid}`)) process.kill(pid, "SIGKILL");
      await sshd.stop();
    }
  }, 30_000);
});

describe("pooling", () => {
  test("200 concurrent agent channels over one pooled connection all succeed, with one SSH connection", async () => {
    const agents = await Promise.all(Array.from({ length: 200 }, () => FakeAgent.start()));
    try {
      const pool = newPool();
      const before = lab().sshd.acceptedConnections();
      const statuses = await Promise.all(
        agents.map(async (agent) => {
          const s = await session(pool, config(), agent.socketPath);
          try {
            return await fsfreezeStatus(s);
          } finally {
            s.close();
          }
        }),
      );
      expect(statuses).toEqual(Array(200).fill("thawed"));
      expect(pool.connectionsMade).toBe(1);
      expect(lab().sshd.acceptedConnections() - before).toBe(1);
    } finally {
      await Promise.all(agents.map((a) => a.stop()));
    }
  });

  test("the real agent answers through the tunnel after stale replies were left in its channel", async () => {
    const pool = newPool();
    const early = await pool.openAgentChannel(config(), lab().guest.socketPath);
    early.stream.write(Buffer.concat([encodeCommand("guest-ping"), encodeCommand("guest-fsfreeze-status")]));
    await new Promise<void>((resolve) => {
      early.stream.once("close", () => resolve());
      early.stream.end();
      early.stream.resume();
    });
    const s = await session(pool, config());
    try {
      expect(await fsfreezeStatus(s)).toBe("thawed");
    } finally {
      s.close();
    }
  });
});
