/**
 * A throwaway OpenSSH server on 127.0.0.1 for the lab: its own host key, client keys, authorized_keys and
 * known_hosts files, all in a run dir. It serves streamlocal forwarding to the guest's agent socket, which
 * is on this same machine.
 */
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { createHash, createHmac, randomBytes } from "node:crypto";
import { ChildProcess } from "node:child_process";
import { createRunDir } from "./rundir";
import { descendants } from "./descendants";
import { LabError, delay, isRunning, run, signalIfAlive, spawnTracked, stopProcess, tail } from "./process";

/** A running lab sshd. Every path is absolute. */
export interface LabSshd {
  host: "127.0.0.1";
  port: number;
  user: "root";
  runDir: string;
  /** Unencrypted ed25519 private key (OpenSSH format), authorized for root. */
  privateKeyPath: string;
  privateKey: string;
  /** The same kind of key, encrypted with {@link passphrase} (bcrypt-pbkdf; parsing costs ~335 ms). */
  encryptedKeyPath: string;
  encryptedKey: string;
  passphrase: string;
  /** An authorized RSA key in PEM format, when started with `rsaKey: true`. */
  rsaKeyPath?: string;
  /** authorized_keys for root; tests may rewrite it (e.g. to add `restrict`), sshd reads it per login. */
  authorizedKeysPath: string;
  /** The server's host key, `"ssh-ed25519 AAAA..."` (no comment). */
  hostPublicKey: string;
  /** OpenSSH fingerprint of the host key: `"SHA256:" + base64(sha256(blob))` without `=` padding. */
  hostFingerprint: string;
  /** known_hosts with one plain entry, `[127.0.0.1]:PORT ssh-ed25519 AAAA...`. */
  knownHostsPath: string;
  /** known_hosts with the same entry hashed (`|1|salt|hmac-sha1`), as `HashKnownHosts yes` writes it. */
  hashedKnownHostsPath: string;
  /** The sshd_config used. */
  configPath: string;
  /** sshd's log (`-E`, LogLevel VERBOSE): one "Accepted publickey" line per authenticated connection. */
  logPath: string;
  /** PID of the listening sshd (the parent; per-connection children are its own). */
  pid: number;
  /** Number of "Accepted publickey" lines in the log so far. */
  acceptedConnections(): number;
  /** Sends a signal to the listening sshd, e.g. SIGSTOP to simulate a silent dead server (SIGCONT resumes). */
  kill(signal: NodeJS.Signals): void;
  /**
   * Stops sshd by its PID (SIGTERM + SIGCONT, then SIGKILL), after sending SIGTERM to its per-connection
   * processes, and removes the run dir unless kept. Idempotent.
   */
  stop(): Promise<void>;
}

/** Options of {@link startSshd}. */
export interface StartSshdOptions {
  /** `AllowStreamLocalForwarding yes|no` (default true). */
  allowStreamLocalForwarding?: boolean;
  /**
   * sshd_config lines placed before the lab's defaults. sshd keeps the first value it reads for a keyword,
   * so these override the defaults. `Match` blocks are not supported here.
   */
  extraConfig?: string;
  /** Listen port (default: a free port chosen at random). */
  port?: number;
  /** Also generate and authorize an RSA key in PEM format (default false). */
  rsaKey?: boolean;
  /** Readiness budget in milliseconds (default 15 000). */
  startTimeoutMs?: number;
  /**
   * Offer the sftp subsystem (default false: pulumi-quiesce needs none, and hardened hosts disable it, so the lab
   * runs every test without it).
   */
  sftpSubsystem?: boolean;
  /** Keep the run dir after stop() (also with env QUIESCE_LAB_KEEP=1). */
  keepRunDir?: boolean;
}

const SSHD = "/usr/sbin/sshd";

/**
 * Starts sshd on 127.0.0.1 and resolves when the port answers with an SSH banner.
 *
 * @example
 * const sshd = await startSshd();
 * // ssh -i sshd.privateKeyPath -o UserKnownHostsFile=sshd.knownHostsPath -p sshd.port root@127.0.0.1
 * await sshd.stop();
 */
export async function startSshd(options: StartSshdOptions = {}): Promise<LabSshd> {
  if (options.extraConfig && /^\s*Match\b/im.test(options.extraConfig)) {
    throw new LabError("extraConfig: Match blocks are not supported", "LAB_SSHD_FAILED");
  }
  const keepRunDir = options.keepRunDir ?? process.env.QUIESCE_LAB_KEEP === "1";
  const runDir = createRunDir("sshd");
  const file = (name: string): string => path.join(runDir, name);
  let sshd: ChildProcess | undefined;
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (sshd) {
        // Stopping the listener leaves its per-connection processes (and what they run) alive, as with
        // any sshd; they are ours too, so end them first, while they can still be found under it.
        for (const pid of sshd.pid !== undefined && isRunning(sshd) ? descendants(sshd.pid) : []) signalIfAlive(pid, "SIGTERM");
        await stopProcess(sshd);
      }
      if (!keepRunDir) fs.rmSync(runDir, { recursive: true, force: true });
    })());

  try {
    const passphrase = randomBytes(12).toString("hex");
    const keygen = (args: string[]): Promise<string> => run("ssh-keygen", ["-q", ...args], { timeoutMs: 30_000 });
    await Promise.all([
      keygen(["-t", "ed25519", "-N", "", "-C", "lab-host", "-f", file("ssh_host_ed25519_key")]),
      keygen(["-t", "ed25519", "-N", "", "-C", "lab-client", "-f", file("id_ed25519")]),
      keygen(["-t", "ed25519", "-N", passphrase, "-C", "lab-client-encrypted", "-f", file("id_ed25519_encrypted")]),
      ...(options.rsaKey ? [keygen(["-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-C", "lab-client-rsa", "-f", file("id_rsa")])] : []),
    ]);
    const clientKeys = ["id_ed25519", "id_ed25519_encrypted", ...(options.rsaKey ? ["id_rsa"] : [])];
    fs.writeFileSync(
      file("authorized_keys"),
      clientKeys.map((name) => fs.readFileSync(file(`${name}.pub`), "utf8").trim() + "\n").join(""),
    );
    const [keyType, keyBase64] = fs.readFileSync(file("ssh_host_ed25519_key.pub"), "utf8").trim().split(/\s+/);
    const hostPublicKey = `${keyType} ${keyBase64}`;
    const hostFingerprint =
      "SHA256:" + createHash("sha256").update(Buffer.from(keyBase64, "base64")).digest("base64").replace(/=+$/, "");
    // An empty home for the sessions (see sshdConfig): the lab must not run this machine's dotfiles.
    fs.mkdirSync(file("home"), { mode: 0o700 });
    // The privilege separation directory; sshd refuses to start without it.
    fs.mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });

    const logPath = file("sshd.log");
    const configPath = file("sshd_config");
    const startTimeoutMs = options.startTimeoutMs ?? 15_000;
    let port = 0;
    // A port picked free can be taken before sshd binds it; then pick another (bounded).
    for (let attempt = 1; ; attempt++) {
      port = options.port ?? (await freePort());
      fs.writeFileSync(configPath, sshdConfig(runDir, port, options));
      fs.writeFileSync(logPath, "");
      sshd = spawnTracked(SSHD, ["-D", "-f", configPath, "-E", logPath], { stdio: ["ignore", "ignore", "pipe"] });
      let stderr = "";
      sshd.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
      const outcome = await waitForBanner(port, sshd, startTimeoutMs);
      if (outcome === "ready") break;
      const log = fs.readFileSync(logPath, "utf8");
      await stopProcess(sshd);
      const bindFailed = /Bind to port|Cannot bind any address|Address already in use/.test(log + stderr);
      if (!bindFailed || options.port !== undefined || attempt >= 3) {
        throw new LabError(
          `sshd did not start (${outcome}) on 127.0.0.1:${port}:\n${tail(log + stderr, 15)}`,
          "LAB_SSHD_FAILED",
        );
      }
    }
    const child = sshd;

    const hostPattern = `[127.0.0.1]:${port}`;
    const knownHostsPath = file("known_hosts");
    fs.writeFileSync(knownHostsPath, `${hostPattern} ${hostPublicKey}\n`);
    const salt = randomBytes(20);
    const hashed = createHmac("sha1", salt).update(hostPattern).digest("base64");
    const hashedKnownHostsPath = file("known_hosts.hashed");
    fs.writeFileSync(hashedKnownHostsPath, `|1|${salt.toString("base64")}|${hashed} ${hostPublicKey}\n`);

    return {
      host: "127.0.0.1",
      port,
      user: "root",
      runDir,
      privateKeyPath: file("id_ed25519"),
      privateKey: fs.readFileSync(file("id_ed25519"), "utf8"),
      encryptedKeyPath: file("id_ed25519_encrypted"),
      encryptedKey: fs.readFileSync(file("id_ed25519_encrypted"), "utf8"),
      passphrase,
      ...(options.rsaKey ? { rsaKeyPath: file("id_rsa") } : {}),
      authorizedKeysPath: file("authorized_keys"),
      hostPublicKey,
      hostFingerprint,
      knownHostsPath,
      hashedKnownHostsPath,
      configPath,
      logPath,
      pid: child.pid as number,
      acceptedConnections: () => (fs.readFileSync(logPath, "utf8").match(/Accepted publickey for /g) ?? []).length,
      kill: (signal) => {
        if (isRunning(child)) child.kill(signal);
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

function sshdConfig(runDir: string, port: number, options: StartSshdOptions): string {
  const lines = [
    ...(options.extraConfig ? ["# extraConfig (first value wins)", options.extraConfig.trim()] : []),
    "# lab defaults",
    `Port ${port}`,
    "ListenAddress 127.0.0.1",
    `HostKey ${path.join(runDir, "ssh_host_ed25519_key")}`,
    `PidFile ${path.join(runDir, "sshd.pid")}`,
    `AuthorizedKeysFile ${path.join(runDir, "authorized_keys")}`,
    "PermitRootLogin prohibit-password",
    "PubkeyAuthentication yes",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "StrictModes no",
    "UsePAM no",
    `AllowStreamLocalForwarding ${options.allowStreamLocalForwarding === false ? "no" : "yes"}`,
    "AllowTcpForwarding yes",
    "LogLevel VERBOSE",
    "PrintMotd no",
    ...(options.sftpSubsystem ? ["Subsystem sftp internal-sftp"] : []),
    // sshd runs every command through the user's shell, and Debian's bash reads ~/.bashrc when started by
    // sshd. The lab logs in as root, whose ~/.bashrc on a build machine may be slow and serialized (`pyenv
    // init` takes a lock: 20 concurrent logins took 14 s here). A hypervisor host does not look like that, and
    // the lab must not depend on the machine it runs on, so sessions get an empty home of their own.
    `SetEnv HOME=${path.join(runDir, "home")}`,
  ];
  return lines.join("\n") + "\n";
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address() as net.AddressInfo;
      server.close(() => resolve(address.port));
    });
  });
}

/**
 * Connects until the port sends an SSH banner, sshd exits, or the deadline passes. A refused connection is
 * retried after 25 ms: sshd gives no other readiness signal.
 */
async function waitForBanner(port: number, sshd: ChildProcess, timeoutMs: number): Promise<"ready" | "exited" | "timeout"> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!isRunning(sshd)) return "exited";
    const banner = await readBanner(port, Math.max(100, deadline - Date.now()));
    if (banner?.startsWith("SSH-2.0-")) return "ready";
    await delay(25);
  }
  return "timeout";
}

function readBanner(port: number, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = net.createConnection({ host: "127.0.0.1", port });
    let received = "";
    const finish = (value: string | undefined): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(value);
    };
    const timer = setTimeout(() => finish(undefined), Math.min(timeoutMs, 2_000));
    timer.unref();
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      received += chunk;
      if (received.includes("\n")) finish(received);
    });
    // Refused or reset: not listening yet. The caller retries until its deadline.
    socket.on("error", () => finish(undefined));
    socket.on("close", () => finish(received || undefined));
  });
}
