/** The lab's cache directory and per-run directories. */
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";

const projectRoot = path.resolve(__dirname, "..", "..");

/** The lab's cache directory: `$QUIESCE_LAB_DIR`, or `.lab/` at the project root. */
export function labDir(): string {
  return path.resolve(process.env.QUIESCE_LAB_DIR ?? path.join(projectRoot, ".lab"));
}

/** Creates a run dir under `<labDir>/runs`, first removing run dirs whose owning process is gone. */
export function createRunDir(kind: "guest" | "sshd" | "libvirt"): string {
  const runs = path.join(labDir(), "runs");
  fs.mkdirSync(runs, { recursive: true });
  for (const name of fs.readdirSync(runs)) {
    const ownerFile = path.join(runs, name, "owner.pid");
    let owner: number;
    try {
      owner = Number(fs.readFileSync(ownerFile, "utf8"));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") continue;
      throw error;
    }
    if (!isAlive(owner)) fs.rmSync(path.join(runs, name), { recursive: true, force: true });
  }
  const dir = path.join(runs, `${kind}-${process.pid}-${randomBytes(3).toString("hex")}`);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, "owner.pid"), String(process.pid));
  return dir;
}

function isAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

