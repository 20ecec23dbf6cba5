/**
 * Where the host daemon keeps its files in a lease directory, for tests that look at them directly
 * (provider/host/daemon.py): a claim per guest, named by the socket's device and inode; an ended record per window.
 */
import * as fs from "node:fs";
import * as path from "node:path";

/** The ended record of `windowId`. */
export function endedPath(leaseDir: string, windowId: string): string {
  return path.join(leaseDir, `ended-${windowId}.json`);
}

/** The claim file of the guest whose agent socket is `socketPath` (any spelling of it). */
export function claimPath(leaseDir: string, socketPath: string): string {
  const st = fs.statSync(fs.realpathSync(socketPath));
  return path.join(leaseDir, `claim-${st.dev}-${st.ino}.json`);
}

/** The claim of that guest, or undefined. */
export function readClaim(leaseDir: string, socketPath: string): { windowId: string; owner: string; selection: string[] } | undefined {
  try {
    return JSON.parse(fs.readFileSync(claimPath(leaseDir, socketPath), "utf8")) as { windowId: string; owner: string; selection: string[] };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/** Every claim file in the directory (agent sockets' `claim-DEV-INO.json`, libvirt domains' `claim-lv-UUID.json`); none if it does not exist. */
export function claimFiles(leaseDir: string): string[] {
  if (!fs.existsSync(leaseDir)) return [];
  return fs.readdirSync(leaseDir).filter((n) => /^claim-(\d+-\d+|lv-[0-9a-f-]{36})\.json$/.test(n));
}

/**
 * Removes a test's lease directory. The daemon may still be writing an ended record into it (it ends a window
 * whose agent just stopped within milliseconds), so a removal that races it is tried again, for at most 5 s.
 */
export async function removeLeaseDir(leaseDir: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      fs.rmSync(leaseDir, { recursive: true, force: true });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOTEMPTY" || attempt >= 100) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}
