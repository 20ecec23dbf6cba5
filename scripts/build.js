// `npm run build`: compiles provider/ and sdk/ into dist/, ships the host daemon's scripts next to the built
// client, links node_modules/pulumi-quiesce (see link-self.js), and stamps dist/.built so that test tiers run
// on their own (test/globalSetup.js) can tell a stale build.
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const root = path.join(__dirname, "..");
execFileSync(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", "tsconfig.build.json"], { cwd: root, stdio: "inherit" });
require("./link-self.js");
fs.copyFileSync(path.join(root, "provider/host/daemon.py"), path.join(root, "dist/provider/host/daemon.py"));
fs.chmodSync(path.join(root, "dist/provider/cli/index.js"), 0o755);
fs.writeFileSync(path.join(root, "dist/.built"), new Date().toISOString() + "\n");
