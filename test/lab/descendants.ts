/** Processes descended from a PID we started (read from /proc), e.g. sshd's per-connection children. */
import * as fs from "node:fs";

/** PIDs of every descendant of `pid` (not `pid` itself). */
export function descendants(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
    } catch (err) {
      // The process exited between readdir and read: it has no descendants to report.
      if ((err as NodeJS.ErrnoException).code === "ENOENT" || (err as NodeJS.ErrnoException).code === "ESRCH") continue;
      throw err;
    }
    // Field 4 is the PPID; the command name (field 2) may contain spaces, so split after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    parentOf.set(Number(entry), ppid);
  }
  const out: number[] = [];
  const frontier = [pid];
  while (frontier.length > 0) {
    const p = frontier.pop() as number;
    for (const [child, parent] of parentOf) {
      if (parent === p) {
        out.push(child);
        frontier.push(child);
      }
    }
  }
  return out;
}
