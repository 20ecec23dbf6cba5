/** Resolves with a file's content once it exists (fs.watch on its directory, no polling), or fails after `timeoutMs`. */
import * as fs from "node:fs";
import * as path from "node:path";

export function waitForFile(file: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const dir = path.dirname(file);
    const check = (): boolean => {
      if (!fs.existsSync(file)) return false;
      cleanup();
      resolve(fs.readFileSync(file, "utf8"));
      return true;
    };
    const watcher = fs.watch(dir, () => check());
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`${file} did not appear within ${timeoutMs} ms`));
    }, timeoutMs);
    function cleanup(): void {
      clearTimeout(timer);
      watcher.close();
    }
    check();
  });
}
