/**
 * The package's version and the host daemon protocol it speaks, for `quiesce --version` and messages.
 */
import * as fs from "node:fs";
import * as path from "node:path";
export { DAEMON_PROTOCOL_VERSION } from "./host/daemon";

/**
 * The version in this package's package.json. Found by walking up from this module, since it sits one level
 * deeper when built (dist/provider/) than in the sources (provider/).
 */
export function packageVersion(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    const file = path.join(dir, "package.json");
    if (fs.existsSync(file)) {
      const pkg = JSON.parse(fs.readFileSync(file, "utf8")) as { name?: string; version?: string };
      if (pkg.name === "pulumi-quiesce" && typeof pkg.version === "string") return pkg.version;
    }
    if (path.dirname(dir) === dir) return "unknown";
  }
}
