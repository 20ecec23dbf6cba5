/**
 * Transpiles a part of the repository to plain JavaScript in a temporary tree, so a benchmark child process
 * can run under plain `node`: ts-node keeps the TypeScript compiler resident (~80 MB of RSS), which would be
 * charged to the code being measured.
 *
 * The tree lives under bench/results/ (gitignored), inside the repository, so `require` of packages still
 * finds the repository's node_modules by walking up.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import * as ts from "typescript";
import { repoRoot } from "./common";

/** A transpiled tree. */
export interface JsTree {
  /** The tree's root (mirrors the repository layout). */
  readonly root: string;
  /** Absolute path of the transpiled `relativeTs` (e.g. "bench/fanoutClient.ts"). */
  file(relativeTs: string): string;
  /** Removes the tree. */
  remove(): void;
}

function walk(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    return entry.isDirectory() ? walk(full) : [full];
  });
}

/**
 * Transpiles every .ts file (not .d.ts, not tests) under the given repository directories and single files,
 * and copies other files found there (e.g. provider/quiesce/watchdog.py) as they are.
 */
export function buildJsTree(entries: readonly string[]): JsTree {
  const resultsDir = path.join(repoRoot, "bench", "results");
  fs.mkdirSync(resultsDir, { recursive: true });
  const root = fs.mkdtempSync(path.join(resultsDir, ".js-"));
  const options: ts.CompilerOptions = {
    module: ts.ModuleKind.CommonJS,
    target: ts.ScriptTarget.ES2022,
    esModuleInterop: true,
    sourceMap: false,
  };
  for (const entry of entries) {
    const absolute = path.join(repoRoot, entry);
    const files = fs.statSync(absolute).isDirectory() ? walk(absolute) : [absolute];
    for (const file of files) {
      const relative = path.relative(repoRoot, file);
      const out = path.join(root, relative);
      fs.mkdirSync(path.dirname(out), { recursive: true });
      if (file.endsWith(".test.ts") || file.endsWith(".d.ts")) continue;
      if (file.endsWith(".ts")) {
        const output = ts.transpileModule(fs.readFileSync(file, "utf8"), { compilerOptions: options, fileName: file });
        fs.writeFileSync(out.replace(/\.ts$/, ".js"), output.outputText);
      } else {
        fs.copyFileSync(file, out);
      }
    }
  }
  return {
    root,
    file: (relativeTs) => path.join(root, relativeTs.replace(/\.ts$/, ".js")),
    remove: () => fs.rmSync(root, { recursive: true, force: true }),
  };
}
