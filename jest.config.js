/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: "node",
  transform: { "^.+\\.ts$": ["ts-jest", { tsconfig: "tsconfig.json" }] },
  testMatch: ["<rootDir>/test/**/*.test.ts"],
  // Tiers run in this order: fast unit tests, in-process fakes, then the real lab.
  testSequencer: "<rootDir>/test/sequencer.js",
  // A tier run on its own still tests a fresh build of dist/ (see the file).
  globalSetup: "<rootDir>/test/globalSetup.js",
  testTimeout: 60000,
  setupFilesAfterEnv: ["<rootDir>/test/dropHolds.ts"],
};
