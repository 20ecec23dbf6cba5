/**
 * Proves the provider-host harness against `@pulumi/pulumi`'s real dynamic-provider host, using the throwaway
 * counter provider (fixtures/). One host process serves the whole file, as one serves a whole `pulumi up`.
 */
import * as fs from "fs";
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import * as counterBackend from "./fixtures/counter";
import { COUNTER_TYPE, counterProvider, makeProgramDir, ProgramDir } from "./fixtures/counterProvider";
import {
  makeUrn,
  PropertyMap,
  PROVIDER_KEY,
  ProviderHost,
  ProviderHostError,
  serializeDynamicProvider,
  startProviderHost,
  UNKNOWN,
} from "./providerHost";

let program: ProgramDir;
let host: ProviderHost;
let providerText: string;

beforeAll(async () => {
  program = makeProgramDir();
  providerText = await serializeDynamicProvider(counterProvider);
  host = await startProviderHost({ cwd: program.dir, project: "harness", stack: "test" });
}, 30_000);

afterAll(async () => {
  await host?.stop();
  program?.cleanup();
});

const urn = (name: string): string => makeUrn(COUNTER_TYPE, name, "harness", "test");

/** The engine's create step for a new resource: Check with empty olds, then Create with the checked inputs. */
async function createCounter(name: string, args: PropertyMap): Promise<{ id: string; inputs: PropertyMap; outputs: PropertyMap }> {
  const checked = await host.check(urn(name), {}, { ...args, [PROVIDER_KEY]: providerText });
  expect(checked.failures).toEqual([]);
  const created = await host.create(urn(name), checked.inputs);
  return { id: created.id, inputs: checked.inputs, outputs: created.properties };
}

describe("serializeDynamicProvider", () => {
  it("produces a module whose handler() returns the provider, requiring the backend by name", () => {
    expect(providerText).toContain("exports.handler");
    expect(providerText).toContain('require("pulumi-quiesce-counter-fixture")');
  });
});

describe("provider host harness", () => {
  it("starts the real host and configures it the way the engine does", async () => {
    expect(host.port).toBeGreaterThan(0);
    const configured = await host.configure({ "harness:unused": "x" });
    // The dynamic-provider host's own answer: the engine must strip secrets and must not call Create in preview.
    expect(configured).toMatchObject({ acceptSecrets: false, supportsPreview: false });
  });

  it("check returns the provider's normalized inputs with __provider, and its failures", async () => {
    const ok = await host.check(urn("c1"), {}, { stateDir: program.stateDir, label: "c1", [PROVIDER_KEY]: providerText });
    expect(ok.failures).toEqual([]);
    expect(ok.inputs).toEqual({ stateDir: program.stateDir, label: "c1", start: 0, [PROVIDER_KEY]: providerText });

    const bad = await host.check(urn("c2"), {}, { stateDir: program.stateDir, label: "", start: "ten", [PROVIDER_KEY]: providerText });
    expect(bad.failures).toEqual([
      { property: "label", reason: "label must be a non-empty string" },
      { property: "start", reason: "start must be a number" },
    ]);
  });

  it("check and diff accept the engine's unknown sentinel at preview time", async () => {
    const checked = await host.check(urn("u"), {}, { stateDir: program.stateDir, label: "u", start: UNKNOWN, [PROVIDER_KEY]: providerText });
    expect(checked.failures).toEqual([]);
    expect(checked.inputs.start).toBe(UNKNOWN);

    // When the new __provider is itself unknown, the host loads the provider from olds.
    const olds = { stateDir: program.stateDir, label: "u", value: 1, [PROVIDER_KEY]: providerText };
    const diff = await host.diff("u-id", urn("u"), olds, { stateDir: program.stateDir, label: UNKNOWN, start: 1, [PROVIDER_KEY]: UNKNOWN });
    expect(diff).toEqual({ changes: "some", replaces: ["label"], deleteBeforeReplace: true });
  });

  it("create runs the provider in the host process and returns id and outputs including __provider", async () => {
    const { id, outputs } = await createCounter("created", { stateDir: program.stateDir, label: "created", start: 5 });
    expect(counterBackend.exists(program.stateDir, id)).toBe(true);
    expect(outputs).toEqual({
      label: "created",
      stateDir: program.stateDir,
      value: 5,
      createdBy: host.pid,
      generation: 1,
      [PROVIDER_KEY]: providerText,
    });
  });

  it("diff distinguishes replace, update and no change", async () => {
    const { id, outputs } = await createCounter("d", { stateDir: program.stateDir, label: "d", start: 1 });
    const news = (args: PropertyMap): PropertyMap => ({ stateDir: program.stateDir, label: "d", start: 1, ...args, [PROVIDER_KEY]: providerText });

    await expect(host.diff(id, urn("d"), outputs, news({}))).resolves.toEqual({ changes: "none", replaces: [], deleteBeforeReplace: false });
    await expect(host.diff(id, urn("d"), outputs, news({ start: 2 }))).resolves.toEqual({ changes: "some", replaces: [], deleteBeforeReplace: false });
    await expect(host.diff(id, urn("d"), outputs, news({ label: "d2" }))).resolves.toEqual({
      changes: "some",
      replaces: ["label"],
      deleteBeforeReplace: true,
    });
  });

  it("update returns the new outputs and keeps outputs carried over from the old state", async () => {
    const { id, outputs } = await createCounter("up", { stateDir: program.stateDir, label: "up", start: 1 });
    const checked = await host.check(urn("up"), { stateDir: program.stateDir, label: "up", start: 1, [PROVIDER_KEY]: providerText }, {
      stateDir: program.stateDir,
      label: "up",
      start: 7,
      [PROVIDER_KEY]: providerText,
    });
    const updated = await host.update(id, urn("up"), outputs, checked.inputs);
    expect(updated.properties).toEqual({ ...outputs, value: 7, generation: 2 });
    expect(counterBackend.readJournal(program.stateDir)).toEqual(expect.arrayContaining(["create up", "update up"]));
  });

  it("read refreshes outputs from the real state", async () => {
    const { id, outputs } = await createCounter("rd", { stateDir: program.stateDir, label: "rd", start: 3 });
    // Drift made outside Pulumi: refresh must see it.
    const file = path.join(program.stateDir, `${id}.json`);
    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, "utf8")), value: 42 }));
    const read = await host.read(id, urn("rd"), outputs);
    expect(read.id).toBe(id);
    expect(read.properties).toEqual({ ...outputs, value: 42 });
    expect(read.inputs).toBeUndefined();
  });

  it("delete runs the provider with the old outputs", async () => {
    const { id, outputs } = await createCounter("del", { stateDir: program.stateDir, label: "del", start: 0 });
    await host.delete(id, urn("del"), outputs);
    expect(counterBackend.exists(program.stateDir, id)).toBe(false);
    expect(counterBackend.readJournal(program.stateDir).filter((l) => l.endsWith(" del"))).toEqual(["create del", "delete del"]);
  });

  it.each([
    ["Check", "check refused"],
    ["Create", "create refused"],
  ] as const)("an error thrown by the provider in %s surfaces with its message", async (method, message) => {
    const failOn = method === "Check" ? "check" : "create";
    const attempt = createCounter(`err-${failOn}`, { stateDir: program.stateDir, label: `err-${failOn}`, failOn });
    const err: unknown = await attempt.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ProviderHostError);
    const hostErr = err as ProviderHostError;
    expect(hostErr.method).toBe(method);
    expect(hostErr.grpcCode).toBe(2); // UNKNOWN
    expect(hostErr.details).toBe(`counter err-${failOn}: ${message} (failOn=${failOn})`);
    expect(hostErr.message).toContain(message);
    expect(hostErr.initFailure).toBeUndefined();
  });

  it("errors from update and delete surface too", async () => {
    const { id, outputs } = await createCounter("ud", { stateDir: program.stateDir, label: "ud", failOn: "delete" });
    await expect(host.update(id, urn("ud"), outputs, { ...outputs, start: 1, failOn: "update" })).rejects.toThrow(/Update failed.*update refused/);
    await expect(host.delete(id, urn("ud"), outputs)).rejects.toThrow(/Delete failed.*delete refused/);
    expect(counterBackend.exists(program.stateDir, id)).toBe(true);
  });

  it("a partial failure (error carrying an id) is decoded from ErrorResourceInitFailed", async () => {
    const checked = await host.check(urn("init"), {}, { stateDir: program.stateDir, label: "init", failOn: "init", [PROVIDER_KEY]: providerText });
    const err: unknown = await host.create(urn("init"), checked.inputs).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ProviderHostError);
    const { initFailure, message } = err as ProviderHostError;
    expect(message).toContain("created but failed to initialise");
    expect(initFailure).toBeDefined();
    expect(initFailure?.reasons).toEqual(["the counter did not become ready"]);
    expect(initFailure?.properties).toEqual({ label: "init", stateDir: program.stateDir, value: 0 });
    // The object exists although Create failed: the engine records it so a later delete can clean it up.
    expect(counterBackend.exists(program.stateDir, initFailure?.id ?? "")).toBe(true);
  });

  it("the host ignores preview: Create really runs, which is why the engine never calls it in preview", async () => {
    const checked = await host.check(urn("pv"), {}, { stateDir: program.stateDir, label: "pv", [PROVIDER_KEY]: providerText });
    const created = await host.create(urn("pv"), checked.inputs, { preview: true });
    expect(counterBackend.exists(program.stateDir, created.id)).toBe(true);
  });

  it("a provider returning undefined in its outputs fails in the host (Struct cannot carry undefined)", async () => {
    const undefinedOutputs: pulumi.dynamic.ResourceProvider = {
      async create() {
        return { id: "u1", outs: { computed: undefined } };
      },
    };
    const text = await serializeDynamicProvider(undefinedOutputs);
    await expect(host.create(urn("undef"), { [PROVIDER_KEY]: text })).rejects.toThrow(/Create failed.*Unexpected struct type/);
  });

  it("configure passes stack config (project from the host env) to the provider's configure", async () => {
    // Not annotated as ResourceProvider, so the extra `greeting` field is allowed; `this` is the provider object.
    const configured = {
      greeting: "unset",
      async configure(req: pulumi.dynamic.ConfigureRequest): Promise<void> {
        this.greeting = req.config.require("greeting");
      },
      async create(): Promise<pulumi.dynamic.CreateResult> {
        return { id: "g", outs: { greeting: this.greeting } };
      },
    };
    const text = await serializeDynamicProvider(configured);
    // The host keeps whatever Configure sent last and configures each provider text once, when it first loads it.
    await host.configure({ "harness:greeting": "hello" });
    const created = await host.create(urn("g"), { [PROVIDER_KEY]: text });
    expect(created.properties.greeting).toBe("hello");
  });

  it("stop kills the host and later calls fail fast", async () => {
    const extra = await startProviderHost({ cwd: program.dir });
    await extra.stop();
    await extra.stop(); // idempotent
    expect(() => process.kill(extra.pid, 0)).toThrow();
    await expect(extra.configure()).rejects.toThrow(/stopped/);
  });
});
