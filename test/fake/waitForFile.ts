/**
 * Waits for a path in its directory with fs.watch (no polling), or fails after `timeoutMs`.
 */
import * as fs from "node:fs";
import * as path from "node:path";

/** Resolves with `probe`'s value once it returns one (checked now and on every change in `file`'s directory). */
function watchFor<T>(file: string, timeoutMs: number, probe: () => T | undefined, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const check = (): boolean => {
      let value: T | undefined;
      try {
        value = probe();
      } catch (err) {
        cleanup();
        reject(err);
        return true;
      }
      if (value === undefined) return false;
      cleanup();
      resolve(value);
      return true;
    };
    const watcher = fs.watch(path.dirname(file), () => check());
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`${file} ${what} within ${timeoutMs} ms`));
    }, timeoutMs);
    function cleanup(): void {
      clearTimeout(timer);
      watcher.close();
    }
    check();
  });
}

/** Resolves with a file's content once it exists and `ready` accepts it. */
export function waitForFile(file: string, timeoutMs: number, ready: (content: string) => boolean = () => true): Promise<string> {
  return watchFor(
    file,
    timeoutMs,
    () => {
      if (!fs.existsSync(file)) return undefined;
      const content = fs.readFileSync(file, "utf8");
      return ready(content) ? content : undefined;
    },
    "did not appear (or never had the awaited content)",
  );
}

/** Resolves once `file` exists, of any type (a socket cannot be read as a file). */
export function waitForPath(file: string, timeoutMs: number): Promise<void> {
  return watchFor(file, timeoutMs, () => (fs.existsSync(file) ? true : undefined), "did not appear").then(() => undefined);
}
