/**
 * The lease record: one small JSON file per agent socket, in a lease directory on the host that holds
 * the socket (DESIGN.md, "The lease and the watchdog"). It says which window owns the guest's freeze and
 * until when. Writes are atomic (write a temp file, then rename over), so a reader never sees half a record.
 *
 * Exclusivity does not come from the file: the agent's chardev serves one client at a time
 * (AGENT-FACTS.md), and create holds its agent channel from the status check through the lease write,
 * so no other window can freeze or claim the same guest in between.
 */
import { createHash, randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import * as path from "node:path";
import type { SFTPWrapper } from "ssh2";
import { QuiesceError } from "../errors";
import type { SshConnectionConfig, SshPool } from "../transport/ssh";

/** Default lease directory on the host (tmpfs on most systems: a host reboot ends every VM and lease). */
export const DEFAULT_LEASE_DIR = "/run/pulumi-quiesce";

/** The record of a held freeze. Times are ISO 8601 UTC strings. */
export interface LeaseRecord {
  /** Record format version. */
  readonly version: 1;
  /** The window that owns the freeze. */
  readonly windowId: string;
  /** Who made it: `pulumi:project/stack/resource`, `cli:user@host`, or a caller-chosen label. */
  readonly owner: string;
  /** The agent socket on the host. */
  readonly socketPath: string;
  /** Guest mount points frozen (empty when everything was frozen with freeze-all). */
  readonly mountpoints: readonly string[];
  /** When the freeze was issued. */
  readonly frozenAt: string;
  /** The deadline: the guest is thawed by then whatever happens. */
  readonly expiresAt: string;
}

/** Where lease records live. One implementation per transport; the lifecycle uses only this. */
export interface LeaseStore {
  /** Human label, e.g. `root@hv1:22:/run/pulumi-quiesce`. */
  readonly label: string;
  /** The lease of `socketPath`, or undefined when there is none. */
  read(socketPath: string): Promise<LeaseRecord | undefined>;
  /** Writes (replaces) the lease of `record.socketPath` atomically. */
  write(record: LeaseRecord): Promise<void>;
  /** Removes the lease of `socketPath`. */
  remove(socketPath: string): Promise<void>;
  /** How the socket's last window ended (released, expired or disconnected), if recorded. */
  readEnded(socketPath: string): Promise<EndedRecord | undefined>;
  /** Records how a window ended (release writes `released`; the watchdog writes the others). */
  writeEnded(socketPath: string, record: EndedRecord): Promise<void>;
}

/** How a window ended, written next to the lease as `<lease>.ended.json`. */
export interface EndedRecord {
  readonly windowId: string;
  /**
   * `released`: by its owner; `expired`: thawed by the watchdog at the deadline; `disconnected`: thawed by the
   * watchdog because the process holding it went away.
   */
  readonly how: "released" | "expired" | "disconnected";
  /** When (ISO 8601 UTC). */
  readonly at: string;
  readonly thawedCount?: number;
}

/** The file name of a socket's ended record. */
export function endedFileName(socketPath: string): string {
  return leaseFileName(socketPath).replace(/\.json$/, ".ended.json");
}

function parseEnded(text: string, where: string): EndedRecord {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new QuiesceError("LEASE_IO", `ended record ${where} is not JSON`, { path: where }, { cause: err });
  }
  const r = value as Partial<EndedRecord>;
  if (typeof r?.windowId !== "string" || !["released", "expired", "disconnected"].includes(r.how as string) || typeof r.at !== "string") {
    throw new QuiesceError("LEASE_IO", `ended record ${where} is not a pulumi-quiesce ended record`, { path: where });
  }
  return r as EndedRecord;
}

/** The file name of a socket's lease: a hash, so any socket path maps to one safe name. */
export function leaseFileName(socketPath: string): string {
  return createHash("sha256").update(socketPath).digest("hex").slice(0, 32) + ".json";
}

/** Parses a lease file; a damaged file is an error, never "no lease". */
export function parseLease(text: string, where: string): LeaseRecord {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new QuiesceError("INVALID_INPUT", `lease file ${where} is not JSON; inspect it, and remove it only if no freeze is held`, { path: where }, { cause: err });
  }
  const r = value as Partial<LeaseRecord>;
  if (
    typeof r !== "object" || r === null || r.version !== 1 || typeof r.windowId !== "string" || typeof r.owner !== "string" ||
    typeof r.socketPath !== "string" || !Array.isArray(r.mountpoints) || typeof r.frozenAt !== "string" || typeof r.expiresAt !== "string"
  ) {
    throw new QuiesceError("INVALID_INPUT", `lease file ${where} is not a pulumi-quiesce lease record`, { path: where });
  }
  return r as LeaseRecord;
}

/** Leases in a directory on this machine (for the `local` transport). */
export class LocalLeaseStore implements LeaseStore {
  readonly label: string;
  constructor(readonly dir: string = DEFAULT_LEASE_DIR) {
    this.label = `local:${dir}`;
  }

  async read(socketPath: string): Promise<LeaseRecord | undefined> {
    const file = path.join(this.dir, leaseFileName(socketPath));
    const text = await this.readText(file);
    return text === undefined ? undefined : parseLease(text, file);
  }

  async readEnded(socketPath: string): Promise<EndedRecord | undefined> {
    const file = path.join(this.dir, endedFileName(socketPath));
    const text = await this.readText(file);
    return text === undefined ? undefined : parseEnded(text, file);
  }

  private async readText(file: string): Promise<string | undefined> {
    try {
      return await fsp.readFile(file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw this.ioError("read", file, err);
    }
  }

  async write(record: LeaseRecord): Promise<void> {
    await this.writeJson(path.join(this.dir, leaseFileName(record.socketPath)), record);
  }

  async writeEnded(socketPath: string, record: EndedRecord): Promise<void> {
    await this.writeJson(path.join(this.dir, endedFileName(socketPath)), record);
  }

  private async writeJson(file: string, record: unknown): Promise<void> {
    const tmp = `${file}.${randomBytes(6).toString("hex")}.tmp`;
    try {
      await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
      await fsp.writeFile(tmp, JSON.stringify(record) + "\n", { mode: 0o600 });
      await fsp.rename(tmp, file);
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw this.ioError("write", file, err);
    }
  }

  async remove(socketPath: string): Promise<void> {
    const file = path.join(this.dir, leaseFileName(socketPath));
    try {
      await fsp.rm(file, { force: true });
    } catch (err) {
      throw this.ioError("remove", file, err);
    }
  }

  private ioError(op: string, file: string, err: unknown): QuiesceError {
    return new QuiesceError(
      "LEASE_IO",
      `cannot ${op} the lease file ${file}: ${(err as Error).message}. The lease directory must be writable ` +
        "(set leaseDir, or run as a user that can write it).",
      { path: file, op },
      { cause: err },
    );
  }
}

/** SFTP status code for "no such file" (draft-ietf-secsh-filexfer-02, SSH_FX_NO_SUCH_FILE). */
const SFTP_NO_SUCH_FILE = 2;

/** Leases on the SSH host, through the pooled connection's one SFTP session (no exec per window). */
export class SftpLeaseStore implements LeaseStore {
  readonly label: string;
  constructor(
    private readonly pool: SshPool,
    private readonly config: SshConnectionConfig,
    readonly dir: string = DEFAULT_LEASE_DIR,
  ) {
    this.label = `${config.user ?? "root"}@${config.host}:${config.port ?? 22}:${dir}`;
  }

  async read(socketPath: string): Promise<LeaseRecord | undefined> {
    const file = path.posix.join(this.dir, leaseFileName(socketPath));
    const text = await this.readText(file);
    return text === undefined ? undefined : parseLease(text, `${this.label}/${path.posix.basename(file)}`);
  }

  async readEnded(socketPath: string): Promise<EndedRecord | undefined> {
    const file = path.posix.join(this.dir, endedFileName(socketPath));
    const text = await this.readText(file);
    return text === undefined ? undefined : parseEnded(text, `${this.label}/${path.posix.basename(file)}`);
  }

  private async readText(file: string): Promise<string | undefined> {
    return this.pool.withSftp(
      this.config,
      (sftp) =>
        new Promise<string | undefined>((resolve, reject) =>
          sftp.readFile(file, "utf8", (err, data) => {
            if (!err) resolve(typeof data === "string" ? data : data.toString("utf8"));
            else if ((err as Error & { code?: number }).code === SFTP_NO_SUCH_FILE) resolve(undefined);
            else reject(this.ioError("read", file, err));
          }),
        ),
    );
  }

  async write(record: LeaseRecord): Promise<void> {
    await this.writeJson(path.posix.join(this.dir, leaseFileName(record.socketPath)), record);
  }

  async writeEnded(socketPath: string, record: EndedRecord): Promise<void> {
    await this.writeJson(path.posix.join(this.dir, endedFileName(socketPath)), record);
  }

  private async writeJson(file: string, record: unknown): Promise<void> {
    const tmp = `${file}.${randomBytes(6).toString("hex")}.tmp`;
    await this.pool.withSftp(this.config, (sftp) => this.writeVia(sftp, file, tmp, record));
  }

  private async writeVia(sftp: SFTPWrapper, file: string, tmp: string, record: unknown): Promise<void> {
    await this.ensureDir(sftp);
    await call((cb) => sftp.writeFile(tmp, JSON.stringify(record) + "\n", { mode: 0o600 }, cb)).catch((err: unknown) => {
      throw this.ioError("write", tmp, err);
    });
    // posix-rename@openssh.com replaces atomically; plain SFTP rename fails when the target exists.
    await call((cb) => sftp.ext_openssh_rename(tmp, file, cb)).catch(async (err: unknown) => {
      await call((cb) => sftp.unlink(tmp, cb)).catch((cleanupErr: unknown) => {
        throw this.ioError("write", file, new AggregateError([err, cleanupErr]));
      });
      throw this.ioError("write", file, err);
    });
  }

  async remove(socketPath: string): Promise<void> {
    const file = path.posix.join(this.dir, leaseFileName(socketPath));
    await this.pool.withSftp(this.config, (sftp) =>
      call((cb) => sftp.unlink(file, cb)).catch((err: unknown) => {
        if ((err as Error & { code?: number }).code === SFTP_NO_SUCH_FILE) return;
        throw this.ioError("remove", file, err);
      }),
    );
  }

  private async ensureDir(sftp: SFTPWrapper): Promise<void> {
    await call((cb) => sftp.mkdir(this.dir, { mode: 0o700 }, cb)).catch(async (mkdirErr: unknown) => {
      // mkdir fails when the directory exists; only that case is fine.
      const isDir = await new Promise<boolean>((resolve) => sftp.stat(this.dir, (err, stats) => resolve(!err && stats.isDirectory())));
      if (!isDir) throw this.ioError("create the lease directory for", this.dir, mkdirErr);
    });
  }

  private ioError(op: string, file: string, err: unknown): QuiesceError {
    return new QuiesceError(
      "LEASE_IO",
      `cannot ${op} the lease file ${file} on ${this.config.host}: ${(err as Error).message}. The SSH user must be ` +
        "able to write the lease directory (leaseDir).",
      { path: file, op, target: this.label },
      { cause: err },
    );
  }
}

function call(fn: (cb: (err?: Error | null) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => fn((err) => (err ? reject(err) : resolve())));
}
