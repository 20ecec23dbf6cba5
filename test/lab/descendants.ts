/** Processes descended from a PID we started (read from /proc), e.g. sshd's per-connection children. */
import * as fs from "node:fs";

/**
 * `/proc/PID/<file>` of every process on this machine, by PID. A process that exits between the listing and
 * the read is left out.
 */
export function readEachProcess(file: "stat" | "cmdline"): Map<number, string> {
  const texts = new Map<number, string>();
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      texts.set(Number(entry), fs.readFileSync(`/proc/${entry}/${file}`, "utf8"));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT" || (err as NodeJS.ErrnoException).code === "ESRCH") continue;
      throw err;
    }
  }
  return texts;
}

/** PIDs of every descendant of `pid` (not `pid` itself). */
export function descendants(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const [entry, stat] of readEachProcess("stat")) {
    // Field 4 is the PPID; the command name (field 2) may contain spaces, so split after the last ')'.
    parentOf.set(entry, Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
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
