// Several tiers run the built package (dist/): child processes that create windows, the CLI binary, and the
// serialized providers, which require("pulumi-quiesce/...") by name. `npm test` builds first (pretest); a tier
// run on its own (`npx jest test/fake`) gets the same guarantee here: dist/ is rebuilt when any source of it
// is newer than its stamp, so no tier ever tests a stale or missing build.
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const root = path.join(__dirname, "..");

function newestMtime(entry) {
  const stat = fs.statSync(entry);
  if (!stat.isDirectory()) return stat.mtimeMs;
  let newest = 0;
  for (const name of fs.readdirSync(entry)) {
    if (name === "__pycache__") continue;
    newest = Math.max(newest, newestMtime(path.join(entry, name)));
  }
  return newest;
}

module.exports = async function globalSetup() {
  const stamp = path.join(root, "dist/.built");
  const built = fs.existsSync(stamp) ? fs.statSync(stamp).mtimeMs : 0;
  const sources = ["provider", "sdk", "package.json", "tsconfig.json", "tsconfig.build.json"].map((p) => path.join(root, p));
  if (Math.max(...sources.map(newestMtime)) > built) {
    process.stderr.write("\ntest/globalSetup: dist/ is missing or older than its sources; building (npm run build)\n");
    execFileSync(process.execPath, [path.join(root, "scripts/build.js")], { cwd: root, stdio: "inherit" });
  }
};
