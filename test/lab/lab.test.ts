/**
 * Smoke test of the lab itself: the real guest agent answers on the chardev socket, the guest looks as the
 * other lab tests assume (two ext4 disks with serials, a running write load), and the real sshd accepts the
 * lab's keys and forwards to the agent socket. Uses only the lab's own probes, not the product's client.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { LabAgentProbe, inspectDataImage, run, runCommand, spawnTracked, stopProcess, withAgentProbe } from "./lab";
import { useLab } from "./shared";

const lab = useLab();

interface FsinfoEntry {
  name: string;
  mountpoint: string;
  type: string;
  "used-bytes"?: number;
  disk: { serial?: string; dev?: string; "bus-type": string }[];
}

interface GuestInfo {
  version: string;
  supported_commands: { name: string; enabled: boolean }[];
}

function sshArgs(keyPath: string, knownHostsPath: string, port: number): string[] {
  return [
    "-F", "/dev/null",
    "-i", keyPath,
    "-o", "IdentitiesOnly=yes",
    "-o", `UserKnownHostsFile=${knownHostsPath}`,
    "-o", "StrictHostKeyChecking=yes",
    "-o", "ConnectTimeout=10",
    "-p", String(port),
    "root@127.0.0.1",
  ];
}

test("the agent answers sync, ping and fsinfo with both ext4 disks and their serials", async () => {
  const { guest } = lab();
  const fsinfo = await withAgentProbe(guest.socketPath, async (agent) => {
    await expect(agent.execute("guest-ping")).resolves.toEqual({});
    return agent.execute<FsinfoEntry[]>("guest-get-fsinfo");
  });
  for (const disk of guest.disks) {
    const entry = fsinfo.find((e) => e.mountpoint === disk.mountpoint);
    expect(entry).toMatchObject({ type: "ext4" });
    expect(entry?.disk).toEqual([expect.objectContaining({ "bus-type": "virtio", serial: disk.serial, dev: disk.guestDev })]);
  }
  expect(guest.disk("/data").serial).toBe("qdata1");
  expect(guest.disk("/data2").serial).toBe("qdata2");
});

test("guest-info reports fsfreeze, guest-exec and guest-file-* as enabled, and they work", async () => {
  const { guest } = lab();
  await withAgentProbe(guest.socketPath, async (agent) => {
    const info = await agent.execute<GuestInfo>("guest-info");
    const enabled = new Set(info.supported_commands.filter((c) => c.enabled).map((c) => c.name));
    for (const name of [
      "guest-fsfreeze-freeze",
      "guest-fsfreeze-freeze-list",
      "guest-fsfreeze-thaw",
      "guest-fsfreeze-status",
      "guest-get-fsinfo",
      "guest-exec",
      "guest-exec-status",
      "guest-file-open",
      "guest-file-read",
      "guest-file-close",
    ]) {
      expect(enabled).toContain(name);
    }
    const mounts = await agent.exec("/bin/cat", ["/proc/mounts"]);
    expect(mounts.exitCode).toBe(0);
    expect(mounts.stdout).toMatch(/^\/dev\/\S+ \/data ext4 /m);
    const hostname = await agent.readFile("/etc/hostname");
    expect(hostname.toString("utf8").trim()).toBe("quiesce-lab");
  });
});

test("the write load keeps writing numbered files on /data", async () => {
  const { guest } = lab();
  const lastLogged = async (agent: LabAgentProbe): Promise<number> => {
    const log = (await agent.readFile("/data/load/log")).toString("utf8").trim().split("\n");
    return Number(log[log.length - 1]);
  };
  await withAgentProbe(guest.socketPath, async (agent) => {
    const first = await lastLogged(agent);
    expect(first).toBeGreaterThan(0);
    const file = (await agent.readFile(`/data/load/f${first}`)).toString("utf8");
    expect(file.startsWith(`quiesce-lab-load ${first}\n`)).toBe(true);
    expect(file.endsWith(`\nend ${first}\n`)).toBe(true);
    // Bounded poll: the load writes a file every few hundred ms under TCG.
    const deadline = Date.now() + 20_000;
    let latest = first;
    while (latest === first && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      latest = await lastLogged(agent);
    }
    expect(latest).toBeGreaterThan(first);
  });
});

test("a copy of the /data image taken while frozen is consistent", async () => {
  const { guest } = lab();
  const copy = path.join(guest.runDir, "frozen-copy.img");
  await withAgentProbe(guest.socketPath, async (agent) => {
    await expect(agent.execute("guest-fsfreeze-freeze-list", { mountpoints: ["/data"] })).resolves.toBe(1);
    try {
      await expect(agent.execute("guest-fsfreeze-status")).resolves.toBe("frozen");
      await run("cp", ["--sparse=always", guest.disk("/data").image, copy], { timeoutMs: 30_000 });
    } finally {
      await agent.execute("guest-fsfreeze-thaw");
    }
    await expect(agent.execute("guest-fsfreeze-status")).resolves.toBe("thawed");
  });
  const report = await inspectDataImage(copy);
  fs.rmSync(copy);
  expect(report.consistent).toBe(true);
  expect(report.needsRecovery).toBe(false);
  expect(report.fsck.exitCode).toBe(0);
  expect(report.loggedWrites.length).toBeGreaterThan(0);
  expect(report.brokenFiles).toEqual([]);
});

test("sshd accepts the plain key with plain and hashed known_hosts, and the encrypted key", async () => {
  const { sshd } = lab();
  const before = sshd.acceptedConnections();
  for (const knownHosts of [sshd.knownHostsPath, sshd.hashedKnownHostsPath]) {
    const result = await runCommand("ssh", [...sshArgs(sshd.privateKeyPath, knownHosts, sshd.port), "-o", "BatchMode=yes", "true"], {
      timeoutMs: 30_000,
    });
    expect({ exitCode: result.exitCode, stderr: result.stderr }).toEqual({ exitCode: 0, stderr: "" });
  }
  // The encrypted key, with its passphrase given through SSH_ASKPASS (OpenSSH >= 8.4).
  const askpass = path.join(sshd.runDir, "askpass.sh");
  fs.writeFileSync(askpass, `#!/bin/sh\necho '${sshd.passphrase}'\n`, { mode: 0o700 });
  const encrypted = await runCommand("ssh", [...sshArgs(sshd.encryptedKeyPath, sshd.knownHostsPath, sshd.port), "true"], {
    timeoutMs: 30_000,
    env: { ...process.env, SSH_ASKPASS: askpass, SSH_ASKPASS_REQUIRE: "force", DISPLAY: "none" },
  });
  expect(encrypted.exitCode).toBe(0);
  expect(sshd.acceptedConnections()).toBe(before + 3);
  expect(sshd.hostFingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
  const keygen = await run("ssh-keygen", ["-l", "-f", `${sshd.runDir}/ssh_host_ed25519_key.pub`], { timeoutMs: 10_000 });
  expect(keygen).toContain(sshd.hostFingerprint);
});

test("sshd forwards a local UNIX socket to the agent socket (streamlocal)", async () => {
  const { guest, sshd } = lab();
  const forwarded = path.join(sshd.runDir, "fwd.sock");
  const ssh = spawnTracked(
    "ssh",
    [...sshArgs(sshd.privateKeyPath, sshd.knownHostsPath, sshd.port), "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
      "-N", "-L", `${forwarded}:${guest.socketPath}`],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  ssh.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  try {
    // Bounded poll for the forwarded socket: ssh prints nothing when the forward is up.
    const deadline = Date.now() + 15_000;
    while (!fs.existsSync(forwarded)) {
      if (Date.now() > deadline || ssh.exitCode !== null) throw new Error(`ssh -L did not come up: ${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const pong = await withAgentProbe(forwarded, (agent) => agent.execute("guest-ping"));
    expect(pong).toEqual({});
  } finally {
    await stopProcess(ssh);
  }
});
