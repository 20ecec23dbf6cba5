// Makes `require("pulumi-quiesce")` resolve from this repository's own programs (the root Pulumi.yaml
// program, the examples and the tests): Pulumi's dynamic-provider host loads `__provider` with an empty
// filename, so only node_modules/pulumi-quiesce works, never the package's self-reference.
const fs = require("node:fs");
const path = require("node:path");

const link = path.join(__dirname, "..", "node_modules", "pulumi-quiesce");
fs.mkdirSync(path.dirname(link), { recursive: true });
let current;
try {
  current = fs.readlinkSync(link);
} catch (err) {
  if (err.code !== "ENOENT" && err.code !== "EINVAL") throw err;
}
if (current !== "..") {
  fs.rmSync(link, { recursive: true, force: true });
  fs.symlinkSync("..", link, "dir");
}
