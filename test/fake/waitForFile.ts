/**
 * Resolves with a file's content once it exists and `ready` accepts it (fs.watch on its directory, no
 * polling), or fails after `timeoutMs`.
 */
import * as fs from "node:fs";
import * as path from "node:path";

export function waitForFile(file: string, timeoutMs: number, ready: (content: string) => boolean = () => true): Promise<string> {
  return new Promise((resolve, reject) => {
    const dir = path.dirname(file);
    const check = (): boolean => {
      if (!fs.existsSync(file)) return false;
      const content = fs.readFileSync(file, "utf8");
      if (!ready(content)) return false;
      cleanup();
      resolve(content);
      return true;
    };
    const watcher = fs.watch(dir, () => check());
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`${file} did not appear (or never had the awaited content) within ${timeoutMs} ms`));
    }, timeoutMs);
    function cleanup(): void {
      clearTimeout(timer);
      watcher.close();
    }
    check();
  });
}
