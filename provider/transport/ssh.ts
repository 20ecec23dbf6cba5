/**
 * The `ssh` transport: agent channels as OpenSSH streamlocal channels (`direct-streamlocal@openssh.com`)
 * over one pooled ssh2 connection per (host, port, user, credentials, host key policy, proxy).
 *
 * Facts this relies on (AGENT-FACTS.md, "OpenSSH and ssh2"):
 * - Streamlocal channels are nearly free and are not capped by MaxSessions; an exec costs 110-170 ms
 *   and counts against MaxSessions, so execs stay off the hot path (only failure probes and the lease).
 * - `setNoDelay(true)` after connect avoids a ~43 ms Nagle/delayed-ACK stall between channels.
 * - ssh2 sends no keepalive by default; with keepalive a SIGSTOPped sshd is detected in seconds. ssh2's own
 *   keepalive timer is not unref'd, so the pool runs its own (a global request the server must answer) and
 *   refs the socket only while a connection is in use: an idle pooled connection never keeps the process alive.
 * - A failed streamlocal open says only "open failed" whatever the cause; a probe exec tells them apart.
 * - Parsing an encrypted key costs ~335 ms: parse once and reuse.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import * as net from "node:net";
import type { Duplex } from "node:stream";
import { Client, utils, type AuthenticationType, type ClientChannel, type ConnectConfig, type ParsedKey } from "ssh2";
import { QuiesceError, abortError, isQuiesceError } from "../errors";
import { createHostVerifier, type HostKeyVerifier } from "./hostKey";
import { busyBackoff, DEFAULT_BUSY_TIMEOUT_MS, type AgentChannel, type OpenOptions } from "./types";

/** SSH connection settings, shaped like @pulumi/command's `remote.Connection` plus host key options. */
export interface SshConnectionConfig {
  /** Host name or address of the hypervisor host. Required. */
  readonly host: string;
  /** TCP port. Default 22. */
  readonly port?: number;
  /** User name. Default `"root"`. */
  readonly user?: string;
  /** Password, for password authentication. Secret. */
  readonly password?: string;
  /** Private key in OpenSSH or PEM format (the text, not a path). Secret. */
  readonly privateKey?: string;
  /** Passphrase of an encrypted `privateKey`. Secret. */
  readonly privateKeyPassword?: string;
  /** ssh-agent socket. Default: the `SSH_AUTH_SOCK` environment variable, when set. */
  readonly agentSocketPath?: string;
  /** How many times to dial before giving up (only transient failures are retried). Default 10. */
  readonly dialErrorLimit?: number;
  /** Seconds for each dial attempt, TCP connect through authentication. Default 15. */
  readonly perDialTimeout?: number;
  /** Pinned host key (`ssh-ed25519 AAAA...`) or `SHA256:` fingerprint. Wins over known_hosts. */
  readonly hostKey?: string;
  /** known_hosts file. Default `~/.ssh/known_hosts`. Hashed entries, `[host]:port`, `@revoked` supported. */
  readonly knownHostsPath?: string;
  /** Accept any host key. Explicit opt-in only; never the default. Default false. */
  readonly insecureSkipHostKeyCheck?: boolean;
  /** A bastion to connect through. */
  readonly proxy?: SshConnectionConfig;
}

/** Options of an {@link SshPool}. */
export interface SshPoolOptions {
  /** Close a connection this many milliseconds after its last channel closed. Default 5000 (5 s). */
  readonly idleTimeoutMs?: number;
  /** Milliseconds between SSH keepalive probes. Default 1000 (1 s). */
  readonly keepaliveIntervalMs?: number;
  /** Unanswered keepalives before the connection is declared dead. Default 5 (so ~6 s; fewer misfire on a loaded host). */
  readonly keepaliveCountMax?: number;
}

/** Result of {@link SshPool.exec}. */
export interface ExecResult {
  /** Exit code, or null when the command died by a signal. */
  readonly code: number | null;
  /** Standard output, truncated to `maxOutputBytes`. */
  readonly stdout: string;
  /** Standard error, truncated to `maxOutputBytes`. */
  readonly stderr: string;
}

/** Options of {@link SshPool.exec}. */
export interface ExecOptions extends OpenOptions {
  /** Milliseconds before the command is abandoned (its channel closed). Default 30000. */
  readonly timeoutMs?: number;
  /** Bytes written to the command's standard input, which is then closed (unless {@link keepStdinOpen}). */
  readonly stdin?: string | Buffer;
  /**
   * Keep stdin open after writing `stdin`, until the command exits or the channel closes: the remote side can
   * then treat end-of-input as "the client is gone" (see hostCommand.ts). Default false.
   */
  readonly keepStdinOpen?: boolean;
  /** Keep at most this many bytes of each output stream. Default 65536. */
  readonly maxOutputBytes?: number;
  /** What the command is for, in a few words ("starting the host daemon"); names it in errors. Default "command". */
  readonly purpose?: string;
}

/** Default seconds per dial attempt. */
export const DEFAULT_PER_DIAL_TIMEOUT_S = 15;
/** Default dial attempts. */
export const DEFAULT_DIAL_ERROR_LIMIT = 10;

/** Quotes `value` as one POSIX sh word. User data never reaches a shell any other way. */
export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/**
 * The probe that tells why a streamlocal open failed, printing one word:
 * - `socket`, `not-socket`: what is at the path;
 * - `missing`: proven absent: the deepest existing ancestor of the path is a directory this user can search,
 *   so the next component does not exist (ENOENT, not EACCES);
 * - `no-access`: this user cannot tell: an ancestor is not searchable, or the path is a symbolic link this
 *   user cannot resolve (a dangling link it can resolve is judged by its target). `[ -e ]` alone says "no" in
 *   both cases, and "missing" is what lets a caller conclude that the VM is gone (and remove its lease), so
 *   it must only mean absent.
 */
export function socketProbeCommand(socketPath: string): string {
  const p = shellQuote(socketPath);
  // A dangling link is judged by where it points; a chain of links is not resolved ("cannot tell").
  return (
    `p=${p}; case $p in /*) ;; *) echo no-access; exit 0 ;; esac; ` +
    `if [ -S "$p" ]; then echo socket; elif [ -e "$p" ]; then echo not-socket; else ` +
    `if [ -L "$p" ]; then t=$(readlink -- "$p") || { echo no-access; exit 0; }; case $t in /*) p=$t ;; *) p=\${p%/*}/$t ;; esac; [ -L "$p" ] && { echo no-access; exit 0; }; fi; d=$p; ` +
    `while :; do d=\${d%/*}; [ -n "$d" ] || d=/; [ -e "$d" ] && break; [ "$d" = / ] && break; done; ` +
    `if [ -d "$d" ] && [ -x "$d" ]; then echo missing; else echo no-access; fi; fi`
  );
}

/** `user@host:port`, for messages. */
export function sshLabel(config: SshConnectionConfig): string {
  const via = config.proxy ? ` via ${sshLabel(config.proxy)}` : "";
  return `${config.user ?? "root"}@${config.host}:${config.port ?? 22}${via}`;
}

const parsedKeys = new Map<string, ParsedKey>();

/** Parses a private key once per process (an encrypted key costs ~335 ms to parse). */
export function parsePrivateKey(privateKey: string, passphrase: string | undefined, label: string): ParsedKey {
  const cacheKey = digest([privateKey, passphrase ?? ""]);
  const cached = parsedKeys.get(cacheKey);
  if (cached) return cached;
  const result = utils.parseKey(privateKey, passphrase);
  const parsed = Array.isArray(result) ? result[0] : result;
  if (parsed instanceof Error || parsed === undefined) {
    const message = parsed instanceof Error ? parsed.message : "no key found";
    if (/passphrase|decrypt/i.test(message)) {
      throw new QuiesceError(
        "SSH_KEY_PASSPHRASE",
        passphrase === undefined
          ? `${label}: privateKey is encrypted; set privateKeyPassword (as a secret) to its passphrase.`
          : `${label}: privateKeyPassword does not decrypt privateKey (${message}). Check the passphrase.`,
        { field: "privateKeyPassword" },
        { cause: parsed },
      );
    }
    throw new QuiesceError(
      "SSH_KEY_INVALID",
      `${label}: privateKey is not a usable private key (${message}). Give the key text in OpenSSH ` +
        "(-----BEGIN OPENSSH PRIVATE KEY-----) or PEM format, not a path or a public key.",
      { field: "privateKey" },
      { cause: parsed },
    );
  }
  if (!parsed.isPrivateKey()) {
    throw new QuiesceError("SSH_KEY_INVALID", `${label}: privateKey holds a public key; give the private key.`, {
      field: "privateKey",
    });
  }
  parsedKeys.set(cacheKey, parsed);
  return parsed;
}

function digest(parts: readonly string[]): string {
  const hash = createHash("sha256");
  for (const part of parts) hash.update(part).update("\u0000");
  return hash.digest("hex");
}

/** The pool key: equal configs share one connection. Secrets enter only as a hash. */
function poolKey(config: SshConnectionConfig): string {
  return JSON.stringify([
    config.host,
    config.port ?? 22,
    config.user ?? "root",
    digest([config.password ?? "", config.privateKey ?? "", config.privateKeyPassword ?? "", agentSocket(config) ?? ""]),
    config.hostKey ?? "",
    config.knownHostsPath ?? "",
    config.insecureSkipHostKeyCheck === true,
    config.proxy ? poolKey(config.proxy) : "",
  ]);
}

function agentSocket(config: SshConnectionConfig): string | undefined {
  return config.agentSocketPath ?? process.env.SSH_AUTH_SOCK ?? undefined;
}

function abortableDelay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError(signal as AbortSignal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

const RETRYABLE = new Set(["SSH_CONNECTION_REFUSED", "SSH_CONNECT_TIMEOUT", "SSH_CONNECT_FAILED", "SSH_BASTION_FAILED"]);

/**
 * What keeps the process alive while a connection is in use, and only then: the TCP socket of a direct
 * connection, or a claim on the bastion's connection for one that runs through a bastion.
 */
interface Liveness {
  ref(): void;
  unref(): void;
}

/** The address of the keepalive probe: cancelling a forward nobody asked for, which the server always answers. */
const KEEPALIVE_PROBE_HOST = "127.0.0.1";

/** One pooled SSH connection. */
class PooledConnection {
  readonly channels = new Set<Duplex>();
  /** Channels that carry another connection (a bastion's forwardOut): they keep this one open, not the process alive. */
  private readonly carriers = new Set<Duplex>();
  /** Requests in flight that are not tracked channels yet (channel opens, execs). */
  private pending = 0;
  private refd = true;
  private idleTimer: NodeJS.Timeout | undefined;
  private keepaliveTimer: NodeJS.Timeout | undefined;
  private lostReason: QuiesceError | undefined;
  closed = false;

  constructor(
    readonly client: Client,
    readonly label: string,
    private readonly options: Required<SshPoolOptions>,
    private readonly onGone: () => void,
    private readonly liveness: Liveness,
  ) {
    client.on("error", (err: Error) => {
      this.lostReason = new QuiesceError(
        "SSH_CONNECTION_LOST",
        `${label}: SSH connection lost (${err.message}). Open agent channels were closed; the next use reconnects.`,
        { target: label },
        { cause: err },
      );
      // Fail the channels with the reason now (ssh2 would otherwise just end them when the socket closes),
      // and leave the pool, so the next use dials a new connection.
      this.gone();
    });
    client.on("close", () => this.gone());
    this.startKeepalive();
    this.armIdle();
    this.updateRef();
  }

  track(channel: Duplex, options: { carrier?: boolean } = {}): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    this.channels.add(channel);
    if (options.carrier) this.carriers.add(channel);
    this.updateRef();
    channel.once("close", () => {
      this.channels.delete(channel);
      this.carriers.delete(channel);
      this.armIdle();
      this.updateRef();
    });
  }

  /** Keeps the process alive while `work` runs on this connection (a request not yet a tracked channel). */
  async using<T>(work: () => Promise<T>): Promise<T> {
    this.retain();
    try {
      return await work();
    } finally {
      this.release();
    }
  }

  retain(): void {
    this.pending++;
    this.updateRef();
  }

  release(): void {
    this.pending--;
    this.updateRef();
  }

  /** Ref'd while in use; an idle connection never keeps the process alive (nor do its timers). */
  private updateRef(): void {
    const wanted = !this.closed && (this.pending > 0 || this.channels.size > this.carriers.size);
    if (wanted === this.refd) return;
    this.refd = wanted;
    if (wanted) this.liveness.ref();
    else this.liveness.unref();
  }

  /**
   * Our own keepalive, on an unref'd timer (ssh2's would keep the process alive): a global request the server
   * must answer, every keepaliveIntervalMs; keepaliveCountMax unanswered in a row end the connection.
   */
  private startKeepalive(): void {
    let unanswered = 0;
    this.keepaliveTimer = setInterval(() => {
      if (unanswered >= this.options.keepaliveCountMax) {
        this.lostReason ??= new QuiesceError(
          "SSH_CONNECTION_LOST",
          `${this.label}: SSH connection lost (Keepalive timeout: no answer to ${unanswered} keepalives, one every ` +
            `${this.options.keepaliveIntervalMs} ms). Open agent channels were closed; the next use reconnects.`,
          { target: this.label },
        );
        this.client.destroy();
        this.gone();
        return;
      }
      unanswered++;
      try {
        this.client.unforwardIn(KEEPALIVE_PROBE_HOST, 0, () => {
          unanswered = 0; // answered: a failure reply ("no such forward") is the expected answer
        });
      } catch (err) {
        // ssh2 throws "Not connected" once the socket is gone; its 'close' ends this connection.
        this.lostReason ??= new QuiesceError("SSH_CONNECTION_LOST", `${this.label}: SSH connection lost (${(err as Error).message})`, { target: this.label }, { cause: err });
        this.gone();
      }
    }, this.options.keepaliveIntervalMs);
    this.keepaliveTimer.unref();
  }

  private armIdle(): void {
    if (this.channels.size > 0 || this.closed) return;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.end(), this.options.idleTimeoutMs);
    this.idleTimer.unref();
  }

  end(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.client.end();
    this.gone();
  }

  private gone(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    // Let go of the socket or the bastion.
    if (this.refd) {
      this.refd = false;
      this.liveness.unref();
    }
    this.onGone();
    const reason =
      this.lostReason ??
      new QuiesceError("SSH_CONNECTION_LOST", `${this.label}: SSH connection closed`, { target: this.label });
    this.failChannels(reason);
  }

  private failChannels(reason: QuiesceError): void {
    for (const channel of this.channels) {
      // ssh2's Channel.destroy() ignores its argument, so the reason is delivered as an 'error' event first.
      if (channel.listenerCount("error") > 0) channel.emit("error", reason);
      channel.destroy();
    }
    this.channels.clear();
  }
}

/**
 * A pool of SSH connections: one per distinct {@link SshConnectionConfig}, shared by every concurrent user
 * in this process. A dropped connection is replaced on next use.
 */
export class SshPool {
  private readonly options: Required<SshPoolOptions>;
  private readonly connections = new Map<string, Promise<PooledConnection>>();
  /** SSH connections this pool has established (handshake and authentication done), for tests and benchmarks. */
  connectionsMade = 0;

  constructor(options: SshPoolOptions = {}) {
    this.options = {
      idleTimeoutMs: options.idleTimeoutMs ?? 5_000,
      keepaliveIntervalMs: options.keepaliveIntervalMs ?? 1_000,
      keepaliveCountMax: options.keepaliveCountMax ?? 5,
    };
  }

  /**
   * Opens a streamlocal channel to the absolute `socketPath` on the host.
   * @throws QuiesceError SOCKET_MISSING, SOCKET_NOT_A_SOCKET, STREAMLOCAL_REFUSED, SOCKET_UNREACHABLE, or any
   *   connect error (SSH_AUTH_FAILED, SSH_HOST_KEY_*, SSH_CONNECT_TIMEOUT, SSH_CONNECTION_REFUSED, ...).
   */
  async openAgentChannel(
    config: SshConnectionConfig,
    socketPath: string,
    options: OpenOptions & { /** Probe the host to explain a refused channel (costs an exec). Default true. */ diagnose?: boolean } = {},
  ): Promise<AgentChannel> {
    const target = `${sshLabel(config)}:${socketPath}`;
    if (!socketPath.startsWith("/")) {
      throw new QuiesceError(
        "INVALID_INPUT",
        `socketPath ${JSON.stringify(socketPath)} is not absolute. Give the full path of the guest agent socket on ` +
          "the host, e.g. /run/libvirt/qemu/channel/1-vm/org.qemu.guest_agent.0 or /var/lib/vms/vm1/qga.sock.",
        { field: "socketPath", target },
      );
    }
    const deadline = Date.now() + (options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS);
    let stream: ClientChannel | undefined;
    let diagnosis: QuiesceError | undefined;
    let connection = await this.connection(config, options.signal);
    for (let attempt = 0; !stream; attempt++) {
      // The connection may have died while we waited for the socket: each attempt takes a live one.
      if (connection.closed) connection = await this.connection(config, options.signal);
      try {
        let abandoned = false;
        const opening = new Promise<ClientChannel>((resolve, reject) =>
          connection.client.openssh_forwardOutStreamLocal(socketPath, (err, channel) => {
            if (err) return reject(err);
            // Opened after we gave up on it: close it at once, or it would hold the agent (one client at a time).
            if (abandoned) return channel.close();
            resolve(channel);
          }),
        );
        const current = connection; // `connection` may be replaced by a later attempt
        stream = await current.using(() => this.withTimeout(opening, (config.perDialTimeout ?? DEFAULT_PER_DIAL_TIMEOUT_S) * 1000, options.signal, target)).catch(
          (err: unknown) => {
            abandoned = true;
            throw err;
          },
        );
      } catch (err) {
        // A slow open on a loaded host is worth another try while the busy deadline allows.
        if (isQuiesceError(err, "SSH_CONNECT_TIMEOUT") && (await busyBackoff(attempt, deadline, options.signal))) continue;
        if (isQuiesceError(err)) throw err;
        if (options.diagnose === false) {
          // No probe, but a busy socket (full accept queue) still gets retried until the deadline.
          if (await busyBackoff(attempt, deadline, options.signal)) continue;
          throw new QuiesceError("SOCKET_UNREACHABLE", `${target}: the SSH server refused a channel to ${socketPath}`, { target, socketPath }, { cause: err });
        }
        // A socket that exists may refuse only because its accept queue is full (the agent serves one client
        // and queues very few), so retry until the busy deadline before blaming the server. The probe that
        // tells the causes apart costs an exec: run it once, and only if a few quick retries did not help.
        const retry = attempt < 3 || diagnosis?.code === "STREAMLOCAL_REFUSED";
        if (retry && (await busyBackoff(attempt, deadline, options.signal))) continue;
        diagnosis ??= await this.diagnoseOpenFailure(connection, config, socketPath, target, err);
        if (diagnosis.fields.probeFailed === true) {
          // The probe itself failed (a loaded host, a dropped connection): no conclusion yet, keep trying.
          const inconclusive = diagnosis;
          diagnosis = undefined;
          if (await busyBackoff(attempt, deadline, options.signal)) continue;
          throw inconclusive;
        }
        if (diagnosis.code !== "STREAMLOCAL_REFUSED" || !(await busyBackoff(attempt, deadline, options.signal))) throw diagnosis;
      }
    }
    connection.track(stream);
    return { stream, target };
  }

  /**
   * Runs `command` (passed to the remote user's shell as is: quote user data with {@link shellQuote}).
   * Costs an SSH session (110-170 ms, counts against MaxSessions): keep it off hot paths.
   */
  async exec(config: SshConnectionConfig, command: string, options: ExecOptions = {}): Promise<ExecResult> {
    const connection = await this.connection(config, options.signal);
    return this.execOn(connection, command, options);
  }

  /** Closes every connection now. Open channels fail with SSH_CONNECTION_LOST. */
  closeAll(): void {
    const pending = [...this.connections.values()];
    this.connections.clear();
    for (const p of pending) {
      p.then(
        (c) => c.end(),
        () => undefined /* a failed connect has nothing to close; its error went to its caller */,
      );
    }
  }

  private execOn(connection: PooledConnection, command: string, options: ExecOptions): Promise<ExecResult> {
    const limit = options.maxOutputBytes ?? 65_536;
    const timeoutMs = options.timeoutMs ?? 30_000;
    const label = connection.label;
    return connection.using(() => new Promise<ExecResult>((resolve, reject) => {
      connection.client.exec(command, (err, channel) => {
        if (err) {
          reject(new QuiesceError("SSH_CONNECT_FAILED", `${label}: cannot start a command: ${err.message}`, { target: label }, { cause: err }));
          return;
        }
        connection.track(channel);
        let stdout = "";
        let stderr = "";
        let code: number | null = null;
        const timer = setTimeout(() => {
          channel.destroy();
          reject(
            new QuiesceError(
              "SSH_COMMAND_TIMEOUT",
              `${label}: ${options.purpose ?? "command"} did not finish within ${timeoutMs} ms. The host is overloaded, or ` +
                "the login shell is slow: sshd runs every command through the user's shell, which reads its startup " +
                "files (~/.bashrc) first.",
              { target: label, timeoutMs },
            ),
          );
        }, timeoutMs);
        timer.unref();
        const onAbort = (): void => {
          clearTimeout(timer);
          channel.destroy();
          reject(abortError(options.signal as AbortSignal, { target: label }));
        };
        options.signal?.addEventListener("abort", onAbort, { once: true });
        channel.on("data", (d: Buffer) => {
          if (stdout.length < limit) stdout += d.toString("utf8").slice(0, limit - stdout.length);
        });
        channel.stderr.on("data", (d: Buffer) => {
          if (stderr.length < limit) stderr += d.toString("utf8").slice(0, limit - stderr.length);
        });
        channel.on("error", (channelErr: Error) => {
          clearTimeout(timer);
          options.signal?.removeEventListener("abort", onAbort);
          reject(channelErr);
        });
        channel.on("exit", (exitCode: number | null) => {
          code = exitCode;
          if (options.keepStdinOpen) channel.end();
        });
        channel.on("close", () => {
          clearTimeout(timer);
          options.signal?.removeEventListener("abort", onAbort);
          resolve({ code, stdout, stderr });
        });
        if (options.stdin !== undefined && options.keepStdinOpen) channel.write(options.stdin);
        else if (options.stdin !== undefined) channel.end(options.stdin);
        else if (!options.keepStdinOpen) channel.end();
      });
    }));
  }

  private async diagnoseOpenFailure(
    connection: PooledConnection,
    config: SshConnectionConfig,
    socketPath: string,
    target: string,
    cause: unknown,
  ): Promise<QuiesceError> {
    // ssh2 reports "(SSH) Channel open failure: open failed" for every cause; ask the host which it is.
    let probe: ExecResult;
    try {
      probe = await this.execOn(connection, socketProbeCommand(socketPath), {
        timeoutMs: (config.perDialTimeout ?? DEFAULT_PER_DIAL_TIMEOUT_S) * 1000,
        purpose: "probing the agent socket",
      });
    } catch (probeErr) {
      return new QuiesceError(
        "SOCKET_UNREACHABLE",
        `${target}: the SSH server refused a channel to the agent socket, and probing the host failed too ` +
          `(${(probeErr as Error).message}). Causes: the socket is missing, AllowStreamLocalForwarding is off in ` +
          "sshd_config, or the key is `restrict`ed in authorized_keys.",
        { target, socketPath, probeFailed: true },
        { cause },
      );
    }
    const answer = probe.stdout.trim();
    const fields = { target, socketPath };
    if (answer === "missing") {
      return new QuiesceError(
        "SOCKET_MISSING",
        `${target}: ${socketPath} does not exist on ${config.host}. Check the path of the guest's ` +
          "org.qemu.guest_agent.0 chardev socket, and that the VM is running.",
        fields,
        { cause },
      );
    }
    if (answer === "no-access") {
      return new QuiesceError(
        "SOCKET_NO_ACCESS",
        `${target}: ${config.user ?? "root"} on ${config.host} cannot see whether ${socketPath} exists: a directory on ` +
          "the way is not searchable by that user (or the path is a symbolic link it cannot follow). Connect as a user " +
          "that can reach the socket (root, or the VM's owner), or make its directory searchable.",
        fields,
        { cause },
      );
    }
    if (answer === "not-socket") {
      return new QuiesceError(
        "SOCKET_NOT_A_SOCKET",
        `${target}: ${socketPath} exists on ${config.host} but is not a UNIX socket. Give the agent's chardev socket path.`,
        fields,
        { cause },
      );
    }
    if (answer === "socket") {
      return new QuiesceError(
        "STREAMLOCAL_REFUSED",
        `${target}: ${socketPath} is a socket, but the SSH server refused to forward to it. Either streamlocal ` +
          "forwarding is off (set `AllowStreamLocalForwarding yes` or `local` in sshd_config, and check that the key is not " +
          "`restrict`ed, or add `port-forwarding` in authorized_keys), or the socket stayed busy: other clients were " +
          "using the guest agent, which serves one at a time. The server log says which.",
        fields,
        { cause },
      );
    }
    return new QuiesceError(
      "SOCKET_UNREACHABLE",
      `${target}: the SSH server refused a channel to the agent socket and the probe answered ${JSON.stringify(answer)} ` +
        `(exit ${probe.code}; stderr: ${probe.stderr.trim().split("\n").slice(-3).join(" | ")}).`,
      fields,
      { cause },
    );
  }

  private withTimeout<T>(promise: Promise<T>, ms: number, signal: AbortSignal | undefined, target: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (signal?.aborted) return reject(abortError(signal, { target }));
      const onAbort = (): void => {
        clearTimeout(timer);
        reject(abortError(signal as AbortSignal, { target }));
      };
      const timer = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        reject(new QuiesceError("SSH_CONNECT_TIMEOUT", `${target}: no answer within ${ms} ms`, { target, timeoutMs: ms }));
      }, ms);
      timer.unref();
      signal?.addEventListener("abort", onAbort, { once: true });
      promise.then(
        (v) => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          resolve(v);
        },
        (e: unknown) => {
          clearTimeout(timer);
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      );
    });
  }

  /** The pooled connection for `config`, dialling (with retries) when there is none or it was lost. */
  private async connection(config: SshConnectionConfig, signal: AbortSignal | undefined): Promise<PooledConnection> {
    const key = poolKey(config);
    const existing = this.connections.get(key);
    if (existing) {
      // Callers that join a dial in progress share its outcome, error included.
      const pooled = await existing;
      if (!pooled.closed) return pooled;
      // A connection that died since: dial a new one.
      if (this.connections.get(key) === existing) this.connections.delete(key);
      return this.connection(config, signal);
    }
    const created = this.dialWithRetries(config, key, signal);
    this.connections.set(key, created);
    created.catch(() => {
      // A failed dial must not stay pooled; the error itself reaches the caller through `created`.
      if (this.connections.get(key) === created) this.connections.delete(key);
    });
    return created;
  }

  private async dialWithRetries(config: SshConnectionConfig, key: string, signal: AbortSignal | undefined): Promise<PooledConnection> {
    const label = sshLabel(config);
    if (!config.host) {
      throw new QuiesceError("INVALID_INPUT", "connection.host is empty: give the hypervisor host's name or address.", {
        field: "host",
      });
    }
    // Built once per connection: invalid pins and missing explicit known_hosts fail here, before any dial.
    const verifier = createHostVerifier({
      host: config.host,
      port: config.port ?? 22,
      hostKey: config.hostKey,
      knownHostsPath: config.knownHostsPath,
      insecureSkipHostKeyCheck: config.insecureSkipHostKeyCheck,
    });
    const key0 = config.privateKey ? parsePrivateKey(config.privateKey, config.privateKeyPassword, label) : undefined;
    const limit = Math.max(1, config.dialErrorLimit ?? DEFAULT_DIAL_ERROR_LIMIT);
    for (let attempt = 1; ; attempt++) {
      try {
        const { client, liveness } = await this.dialOnce(config, verifier, key0, signal);
        this.connectionsMade++;
        return new PooledConnection(client, label, this.options, () => {
          if (this.connections.get(key) !== undefined) {
            // Only forget it if the map still holds this connection's promise (not a newer one).
            void this.connections.get(key)?.then((c) => {
              if (c.client === client) this.connections.delete(key);
            }, () => undefined /* a failed newer dial removes itself */);
          }
        }, liveness);
      } catch (err) {
        if (!isQuiesceError(err) || !RETRYABLE.has(err.code) || attempt >= limit) throw err;
        // Backoff: 250 ms, 500 ms, 1 s, 2 s, then 4 s between attempts.
        await abortableDelay(Math.min(250 * 2 ** (attempt - 1), 4_000), signal);
      }
    }
  }

  private async dialOnce(
    config: SshConnectionConfig,
    verifier: HostKeyVerifier,
    privateKey: ParsedKey | undefined,
    signal: AbortSignal | undefined,
  ): Promise<{ client: Client; liveness: Liveness }> {
    const label = sshLabel(config);
    const user = config.user ?? "root";
    // Credentials first: nothing is dialled for a config that cannot authenticate.
    const methods: { type: AuthenticationType; describe: string; make: () => object }[] = [];
    if (privateKey) methods.push({ type: "publickey", describe: `publickey (${privateKey.type})`, make: () => ({ type: "publickey", username: user, key: privateKey }) });
    const agentPath = agentSocket(config);
    const skipped: string[] = [];
    if (agentPath && !existsSync(agentPath)) skipped.push(`agent (no socket at ${agentPath})`);
    else if (agentPath) methods.push({ type: "agent", describe: `agent (${agentPath})`, make: () => ({ type: "agent", username: user, agent: agentPath }) });
    if (config.password !== undefined) methods.push({ type: "password", describe: "password", make: () => ({ type: "password", username: user, password: config.password }) });
    if (methods.length === 0) {
      throw new QuiesceError(
        "SSH_AUTH_FAILED",
        `${label}: no credentials: give privateKey, password, or an ssh-agent (agentSocketPath or SSH_AUTH_SOCK).`,
        { target: label, tried: [] },
      );
    }
    let sock: Duplex;
    let liveness: Liveness;
    if (config.proxy) {
      const bastion = await this.connection(config.proxy, signal).catch((err: unknown) => {
        throw new QuiesceError(
          "SSH_BASTION_FAILED",
          `${label}: cannot reach the bastion ${sshLabel(config.proxy as SshConnectionConfig)}: ${(err as Error).message}`,
          { target: label, ...(isQuiesceError(err) ? { bastionCode: err.code } : {}) },
          { cause: err },
        );
      });
      sock = await bastion.using(() => new Promise<Duplex>((resolve, reject) =>
        bastion.client.forwardOut("127.0.0.1", 0, config.host, config.port ?? 22, (err, stream) => {
          if (err) {
            reject(
              new QuiesceError(
                "SSH_BASTION_FAILED",
                `${label}: the bastion ${bastion.label} could not open a TCP connection to ${config.host}:${config.port ?? 22} ` +
                  `(${err.message}). Check that the bastion can reach the host and allows TCP forwarding.`,
                { target: label },
                { cause: err },
              ),
            );
          } else {
            // The bastion stays open while it carries this connection, and keeps the process alive only
            // while this connection is in use (liveness below).
            bastion.track(stream, { carrier: true });
            bastion.retain();
            resolve(stream);
          }
        }),
      ));
      liveness = { ref: () => bastion.retain(), unref: () => bastion.release() };
    } else {
      // Our own socket, so that an idle connection can be unref'd (ssh2 keeps its socket to itself).
      const tcp = net.connect({ host: config.host, port: config.port ?? 22 });
      sock = tcp;
      liveness = tcp;
    }
    const tried: string[] = [];
    let serverAllows: string[] | undefined;
    const client = new Client();
    return new Promise<{ client: Client; liveness: Liveness }>((resolve, reject) => {
      let settled = false;
      const onAbort = (): void => fail(abortError(signal as AbortSignal, { target: label }));
      const fail = (err: QuiesceError): void => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener("abort", onAbort);
        client.end();
        sock.destroy();
        if (config.proxy) liveness.unref(); // the claim on the bastion taken when its channel opened
        reject(err);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      client.once("ready", () => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener("abort", onAbort);
        client.setNoDelay(true);
        resolve({ client, liveness });
      });
      client.on("error", (err: Error & { level?: string; code?: string }) => {
        if (settled) return;
        fail(this.classifyConnectError(err, config, verifier, [...tried, ...skipped], serverAllows));
      });
      client.once("close", () =>
        fail(new QuiesceError("SSH_CONNECT_FAILED", `${label}: the server closed the connection during the handshake`, { target: label })),
      );
      const connectConfig: ConnectConfig = {
        // Always our socket: ssh2 dials nothing itself.
        sock,
        username: user,
        readyTimeout: (config.perDialTimeout ?? DEFAULT_PER_DIAL_TIMEOUT_S) * 1000,
        // ssh2's keepalive timer would keep the process alive: PooledConnection runs an unref'd one instead.
        keepaliveInterval: 0,
        hostVerifier: verifier.hostVerifier,
        ...(verifier.serverHostKeyAlgorithms
          ? { algorithms: { serverHostKey: [...verifier.serverHostKeyAlgorithms] } as ConnectConfig["algorithms"] }
          : {}),
        authHandler: (methodsLeft: AuthenticationType[] | null, _partial: boolean | null, next: (auth: never) => void) => {
          if (methodsLeft) serverAllows = methodsLeft;
          const method = methods.shift();
          if (!method) return false;
          tried.push(method.describe);
          next(method.make() as never);
          return undefined;
        },
      } as ConnectConfig;
      client.connect(connectConfig);
    });
  }

  private classifyConnectError(
    err: Error & { level?: string; code?: string },
    config: SshConnectionConfig,
    verifier: HostKeyVerifier,
    tried: readonly string[],
    serverAllows: readonly string[] | undefined,
  ): QuiesceError {
    const label = sshLabel(config);
    const fields = { target: label, host: config.host, port: config.port ?? 22 };
    if (verifier.failure) return new QuiesceError(verifier.failure.code, verifier.failure.message, verifier.failure.fields, { cause: err });
    if (err.level === "client-authentication") {
      return new QuiesceError(
        "SSH_AUTH_FAILED",
        `${label}: authentication failed as ${config.user ?? "root"}; tried ${tried.join(", ") || "nothing"}` +
          `${serverAllows ? `; the server accepts ${serverAllows.join(", ")}` : ""}. Check that the public key is in ` +
          `~${config.user ?? "root"}/.ssh/authorized_keys on ${config.host}, or the password.`,
        { ...fields, tried: [...tried], serverAllows: serverAllows ? [...serverAllows] : undefined },
        { cause: err },
      );
    }
    if (err.code === "ECONNREFUSED") {
      return new QuiesceError(
        "SSH_CONNECTION_REFUSED",
        `${label}: connection refused. Is sshd running on ${config.host} port ${config.port ?? 22}?`,
        fields,
        { cause: err },
      );
    }
    if (err.level === "client-timeout" || err.code === "ETIMEDOUT") {
      return new QuiesceError(
        "SSH_CONNECT_TIMEOUT",
        `${label}: no SSH handshake within ${config.perDialTimeout ?? DEFAULT_PER_DIAL_TIMEOUT_S} s (perDialTimeout). ` +
          "Check the address, port and firewall, and that the server is not overloaded.",
        fields,
        { cause: err },
      );
    }
    return new QuiesceError("SSH_CONNECT_FAILED", `${label}: SSH connection failed: ${err.message}`, fields, { cause: err });
  }
}

/** The process-wide pool used by default. */
export const defaultSshPool = new SshPool();
