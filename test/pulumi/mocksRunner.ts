/**
 * Test harness that runs a real Pulumi program under `pulumi.runtime.setMocks` and *executes* its dynamic
 * resources' serialized providers, standing in for `pulumi up` / `pulumi destroy` (the CLI cannot be installed on
 * these machines; AGENT-FACTS, "Pulumi dynamic providers").
 *
 * For each dynamic resource (type `pulumi-nodejs:dynamic…`), the mock `newResource` does what the engine and the
 * dynamic-provider host (`cmd/dynamic-provider/index.js`) do:
 * 1. strips secret markers from the inputs (the host answers Configure with `acceptSecrets: false`);
 * 2. loads the `__provider` text as the host does: a CommonJS module compiled with Node's own loader and
 *    filename `""`, whose `require()` searches only `programDir`'s `node_modules` chain (no self-reference by
 *    package name, no relative paths from your source tree), cached per distinct text, `configure`d once;
 * 3. calls `check({}, inputs)`, then `create(checkedInputs)`; outputs are `outs` plus `__provider`;
 * 4. marks outputs secret the way the engine does: an output is secret when the same-named input contained a
 *    secret (recursing into objects, `annotateSecrets` in the engine's provider_plugin.go), or when it is listed
 *    in the resource's `additionalSecretOutputs` (the mock monitor never applies that option itself).
 * The SDK holds each registration until its `dependsOn` and input dependencies are registered, so creates run in
 * dependency order. Other resources (components, custom resources of real providers) just echo their inputs.
 *
 * Failure: when a check or create fails, the run is aborted as the engine aborts an update. The error is recorded
 * in `errors`, the SDK is told the monitor is gone (gRPC UNAVAILABLE, so it raises no unhandled rejections, which
 * would fail the jest test), nothing more is created, and outputs that depended on the failure stay unresolved.
 *
 * Process-global state: `setMocks` and the Pulumi runtime are global. Run one program at a time (enforced);
 * sequential runs in one test file are fine because each run calls `setMocks` again, which resets the runtime's
 * settings. A program *file* is `require`d through jest's module registry, so it runs once per test file: to run
 * the same program twice, export a function and pass `() => main()`. After an aborted run, that run's pending
 * registrations are abandoned (their promises never settle); they do not affect later runs.
 *
 * Provider code runs in Node's main realm, not jest's sandbox: its errors fail `instanceof Error` in the test, and
 * packages it `require`s load as plain JS (the product's `dist/`, not its TypeScript). This harness wraps every
 * provider error in a test-realm {@link MockResourceError}.
 *
 * @packageDocumentation
 */
import Module from "module";
import * as path from "path";
import * as grpc from "@grpc/grpc-js";
import * as pulumi from "@pulumi/pulumi";
import { Config as DynamicProviderConfig } from "@pulumi/pulumi/cmd/dynamic-provider/config";

/** Plain-JS property bag. */
export type PropertyMap = Record<string, unknown>;

/** The property under which the SDK passes the serialized dynamic provider. */
const PROVIDER_KEY = "__provider";

/** A program: a module path (TS or JS, loaded with `require`) or a function (its resolved value is the outputs). */
export type Program = string | (() => unknown);

/** Options for {@link runProgram}. */
export interface RunProgramOptions {
  /** Project name (URNs, unqualified config keys, `pulumi.getProject()`). Default: `"project"`. */
  readonly project?: string;
  /** Stack name (URNs, `pulumi.getStack()`). Default: `"stack"`. */
  readonly stack?: string;
  /** Stack config. Keys without a namespace get `"<project>:"` prepended. Values are strings, as in Pulumi.<stack>.yaml. */
  readonly config?: Readonly<Record<string, string>>;
  /** Config keys (namespaced or not) that are secrets, so `config.requireSecret` etc. see them as secret. */
  readonly secretConfigKeys?: readonly string[];
  /**
   * The program's directory: `require()` inside `__provider` resolves from its `node_modules` chain, as the host
   * does from its working directory. Default: the program file's directory, or `process.cwd()` for a function.
   */
  readonly programDir?: string;
  /** Milliseconds to wait for the whole program (registrations and creates). Default: 30000. */
  readonly timeoutMs?: number;
}

/** One resource the run registered (and, for a dynamic resource, created). */
export interface RecordedResource {
  /** URN as the mock monitor computes it: `urn:pulumi:<stack>::<project>::<parentType$type>::<name>`. */
  readonly urn: string;
  readonly type: string;
  readonly name: string;
  /** URN of the parent, or `""`. */
  readonly parent: string;
  /** URNs of the resources this one waited for (`dependsOn` and input dependencies), as the SDK sent them. */
  readonly dependencies: readonly string[];
  readonly custom: boolean;
  /** True for a `pulumi.dynamic.Resource`, whose provider this harness ran. */
  readonly dynamic: boolean;
  /** The id the provider's create returned (`""` for components). */
  readonly id: string;
  /** The inputs with secret markers removed and without `__provider`: what the program passed. */
  readonly inputs: PropertyMap;
  /** Dynamic only: what `check` returned, i.e. what `create` received (without `__provider`). */
  readonly checkedInputs?: PropertyMap;
  /** Plain outputs (create's `outs`, or echoed inputs), without `__provider`. */
  readonly outputs: PropertyMap;
  /** Dotted paths of inputs that were secret (`"token"`, `"connection.privateKey"`). */
  readonly secretInputPaths: readonly string[];
  /** Dotted paths of outputs the engine would store as secret (encrypted in state, `[secret]` in the CLI); may include `__provider`. */
  readonly secretOutputPaths: readonly string[];
  /** The resource's `additionalSecretOutputs` option. */
  readonly additionalSecretOutputs: readonly string[];
  /** Dynamic only: the serialized provider text, as stored in state. */
  readonly providerText?: string;
  /** Whether `__provider` itself was secret (the closure captured a secret; its plaintext is inside the text). */
  readonly providerTextIsSecret: boolean;
  /** True when create threw an error carrying an `id`: the object exists, and destroy will delete it. */
  readonly initFailed: boolean;
  /** False once {@link ProgramRun.destroyAll} has deleted it (or it needed no delete). */
  readonly live: boolean;
}

/** The result of {@link runProgram}. */
export interface ProgramRun {
  /** Every registered resource, in registration-completion order (creation order for dynamic ones). */
  readonly resources: readonly RecordedResource[];
  /** The program's stack outputs, fully resolved to plain values (keys whose value never resolved are absent). */
  readonly outputs: PropertyMap;
  /** Stack output keys whose value is secret. */
  readonly secretOutputs: readonly string[];
  /** Errors that failed the run: provider check/create failures, program exceptions. Empty on success. */
  readonly errors: readonly Error[];
  /**
   * `pulumi destroy`: calls `delete(id, outputs)` of each live dynamic resource in reverse creation order, with
   * the provider text it was created with. Stops at the first failure and throws it (as the engine does); the
   * failed resource and those created before it stay live, so calling again retries. Skips `retainOnDelete`.
   */
  destroyAll(): Promise<void>;
}

/** A provider operation failed. `message` contains the provider's own message; `cause` is the original error. */
export class MockResourceError extends Error {
  /** Stable error code. */
  readonly code = "MOCK_RESOURCE_FAILED";
  /** Which step failed. */
  readonly operation: "check" | "create" | "delete" | "load";
  /** The resource's type and name. */
  readonly resourceType: string;
  readonly resourceName: string;
  /** Check failures, when `operation` is `"check"` and the provider reported failures rather than throwing. */
  readonly failures: readonly { property: string; reason: string }[];

  /** @param operation the step. @param type resource type. @param name resource name. @param detail the provider's message. */
  constructor(
    operation: MockResourceError["operation"],
    type: string,
    name: string,
    detail: string,
    options: { cause?: unknown; failures?: readonly { property: string; reason: string }[] } = {},
  ) {
    super(`${operation} of ${type} "${name}" failed: ${detail}`, { cause: options.cause });
    this.name = "MockResourceError";
    this.operation = operation;
    this.resourceType = type;
    this.resourceName = name;
    this.failures = options.failures ?? [];
  }
}

let activeRun = false;
const loadedProgramFiles = new Set<string>();

/**
 * Runs a Pulumi program under mocks, creating its dynamic resources for real.
 *
 * @example
 * ```ts
 * const run = await runProgram(path.join(__dirname, "program.ts"), { project: "demo", stack: "dev" });
 * try {
 *   expect(run.errors).toEqual([]);
 *   expect(run.resources.map((r) => r.name)).toEqual(["window", "snapshot", "release"]);
 * } finally {
 *   await run.destroyAll();
 * }
 * ```
 * @throws Only for misuse (overlapping runs, a program file loaded twice) or the overall timeout; failures of the
 *   program or its resources are returned in `errors`.
 */
export async function runProgram(program: Program, options: RunProgramOptions = {}): Promise<ProgramRun> {
  if (activeRun) {
    throw new Error("runProgram: another run is in progress; Pulumi mocks are process-global, so run programs one at a time");
  }
  activeRun = true;
  try {
    return await runExclusive(program, options);
  } finally {
    activeRun = false;
  }
}

async function runExclusive(program: Program, options: RunProgramOptions): Promise<ProgramRun> {
  const project = options.project ?? "project";
  const stack = options.stack ?? "stack";
  const timeoutMs = options.timeoutMs ?? 30_000;
  const programFile = typeof program === "string" ? path.resolve(program) : undefined;
  const programDir = options.programDir ?? (programFile ? path.dirname(programFile) : process.cwd());
  if (programFile) {
    if (loadedProgramFiles.has(programFile)) {
      throw new Error(`runProgram: ${programFile} was already run in this test file; jest caches modules, so export a function and pass () => main() instead`);
    }
    loadedProgramFiles.add(programFile);
  }

  const qualify = (key: string): string => (key.includes(":") ? key : `${project}:${key}`);
  const rawConfig: Record<string, string> = {};
  for (const [k, v] of Object.entries(options.config ?? {})) rawConfig[qualify(k)] = v;
  pulumi.runtime.setAllConfig(rawConfig, (options.secretConfigKeys ?? []).map(qualify));

  const deployment = new MockDeployment(project, stack, programDir, rawConfig);
  await pulumi.runtime.setMocks(deployment.mocks(), project, stack, false);
  deployment.interceptMonitor();

  const outputs: PropertyMap = {};
  const secretOutputs: string[] = [];
  // Never rejects: a failure of the program is a result of the run (`errors`), not an exception of the harness,
  // and this promise may be abandoned (after an abort) where a rejection would go unhandled.
  const programDone = (async (): Promise<void> => {
    try {
      const exported = await invokeProgram(program, programFile);
      // A failed output does not abort: the rest of the program still runs, as under the engine.
      await resolveStackOutputs(exported, outputs, secretOutputs, (err) => deployment.errors.push(err));
      await waitForRegistrations();
    } catch (err) {
      deployment.fail(toTestRealmError(err, "the program threw"));
    }
  })();

  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), timeoutMs);
    timer.unref();
  });
  try {
    const outcome = await Promise.race([programDone.then(() => "done" as const), deployment.aborted.then(() => "aborted" as const), timedOut]);
    if (outcome === "timeout") {
      throw new Error(
        `runProgram: the program did not finish within ${timeoutMs} ms; ${deployment.inFlight} provider call(s) in flight, ` +
          `${deployment.records.length} resource(s) registered`,
      );
    }
  } finally {
    clearTimeout(timer);
  }

  // Copies: after an aborted run, abandoned work must not change the result.
  return {
    resources: deployment.records,
    outputs: { ...outputs },
    secretOutputs: [...secretOutputs],
    errors: deployment.errors,
    destroyAll: () => deployment.destroyAll(),
  };
}

/** Loads/calls the program and returns what it exports (the stack outputs). */
async function invokeProgram(program: Program, programFile: string | undefined): Promise<unknown> {
  if (typeof program === "function") return await program();
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- a Pulumi program is loaded as a CommonJS module, as the language host does
  const exported: unknown = require(programFile ?? program);
  // The Node.js language host calls a program that exports a function (or a default function) and uses its result.
  if (typeof exported === "function") return await (exported as () => unknown)();
  if (isPlainOrModuleObject(exported) && typeof exported.default === "function") {
    return await (exported.default as () => unknown)();
  }
  return exported;
}

/** Resolves each export independently; a key whose value rejects is reported through `onError` and left out. */
async function resolveStackOutputs(exported: unknown, into: PropertyMap, secretKeys: string[], onError: (err: Error) => void): Promise<void> {
  if (typeof exported !== "object" || exported === null) return;
  await Promise.all(
    Object.entries(exported)
      .filter(([key, value]) => key !== "__esModule" && value !== undefined)
      .map(async ([key, value]) => {
        const lifted = pulumi.output(value);
        observeCompanionPromises(lifted);
        const [resolved, secret] = await Promise.allSettled([outputPromise(lifted), pulumi.isSecret(lifted)]);
        if (resolved.status === "rejected") {
          onError(toTestRealmError(resolved.reason, `stack output ${key} failed`));
          return;
        }
        into[key] = resolved.value;
        if (secret.status === "fulfilled" && secret.value) secretKeys.push(key);
      }),
  );
}

/** The SDK's (internal, but stable since 1.x) `Output.promise()`: unlike `apply`, it also delivers rejections. */
function outputPromise(output: pulumi.Output<unknown>): Promise<unknown> {
  const candidate: unknown = (output as unknown as { promise?: unknown }).promise;
  if (typeof candidate !== "function") {
    throw new Error("this @pulumi/pulumi has no Output.promise(); update mocksRunner.ts");
  }
  return (candidate as (this: pulumi.Output<unknown>) => Promise<unknown>).call(output);
}

/**
 * An Output carries companion promises (isKnown, isSecret, allResources) that reject together with its value, e.g.
 * when an `apply` callback throws. Nothing in a program observes them, and once this harness has returned, their
 * rejection would reach Node's default handler after the jest test ended and crash the worker. The error itself is
 * reported through the value promise, so here they only get a handler.
 */
function observeCompanionPromises(output: pulumi.Output<unknown>): void {
  const internals = output as unknown as { isKnown?: unknown; isSecret?: unknown; allResources?: unknown };
  const companions: unknown[] = [internals.isKnown, internals.isSecret];
  if (typeof internals.allResources === "function") {
    companions.push((internals.allResources as (this: unknown) => unknown).call(output));
  }
  for (const companion of companions) {
    if (companion instanceof Promise) companion.catch(reportedThroughValuePromise);
  }
}

function reportedThroughValuePromise(_err: unknown): void {
  // Intentionally nothing: the same error is recorded from the Output's value promise.
  return undefined;
}

/** Waits for every registration the SDK started (`settings.waitForRPCs`, exported at runtime but marked internal). */
async function waitForRegistrations(): Promise<void> {
  const wait: unknown = (pulumi.runtime as unknown as { waitForRPCs?: unknown }).waitForRPCs;
  if (typeof wait !== "function") {
    throw new Error("this @pulumi/pulumi has no runtime.waitForRPCs(); update mocksRunner.ts");
  }
  await (wait as () => Promise<void>)();
}

/** What the mock monitor's RegisterResource request carries that `newResource` does not get. */
interface RegistrationDetails {
  readonly type: string;
  readonly name: string;
  readonly parent: string;
  readonly dependencies: readonly string[];
  readonly additionalSecretOutputs: readonly string[];
  readonly retainOnDelete: boolean;
}

interface RegisterRequestLike {
  getType(): string;
  getName(): string;
  getParent(): string;
  getDependenciesList(): string[];
  getAdditionalsecretoutputsList(): string[];
  getRetainondelete(): boolean | undefined;
}

interface MutableRecord extends RecordedResource {
  live: boolean;
  readonly retainOnDelete: boolean;
}

interface LoadedProvider {
  readonly provider: pulumi.dynamic.ResourceProvider;
}

/** Engine stand-in for one run: the mocks, the provider cache, the created resources. */
class MockDeployment {
  readonly records: MutableRecord[] = [];
  readonly errors: Error[] = [];
  inFlight = 0;
  /** Resolves when the run failed and no provider call is still running. */
  readonly aborted: Promise<void>;
  private abortRequested = false;
  private resolveAborted: () => void = () => undefined;
  private readonly providers = new Map<string, Promise<LoadedProvider>>();
  private pendingDetails: RegistrationDetails | undefined;

  constructor(
    private readonly project: string,
    private readonly stack: string,
    private readonly programDir: string,
    private readonly rawConfig: Record<string, string>,
  ) {
    this.aborted = new Promise<void>((resolve) => {
      this.resolveAborted = resolve;
    });
  }

  mocks(): pulumi.runtime.Mocks {
    return {
      newResource: (args) => this.newResource(args),
      call: (args) => {
        throw new Error(`runProgram: invoke ${args.token} is not mocked`);
      },
    };
  }

  /**
   * Wraps the mock monitor's RegisterResource to capture parent, dependencies, additionalSecretOutputs and
   * retainOnDelete. The mock monitor calls `newResource` synchronously from RegisterResource, so handing the
   * details over through one field is exact.
   */
  interceptMonitor(): void {
    const monitor: unknown = pulumi.runtime.getMonitor();
    const original: unknown = (monitor as { registerResource?: unknown } | undefined)?.registerResource;
    if (typeof monitor !== "object" || monitor === null || typeof original !== "function") {
      throw new Error("runProgram: the mock monitor has no registerResource; update mocksRunner.ts");
    }
    const register = original as (this: unknown, req: RegisterRequestLike, callback: unknown) => unknown;
    (monitor as { registerResource: unknown }).registerResource = (req: RegisterRequestLike, callback: unknown): unknown => {
      this.pendingDetails = {
        type: req.getType(),
        name: req.getName(),
        parent: req.getParent(),
        dependencies: req.getDependenciesList(),
        additionalSecretOutputs: req.getAdditionalsecretoutputsList(),
        retainOnDelete: req.getRetainondelete() ?? false,
      };
      try {
        return register.call(monitor, req, callback);
      } finally {
        this.pendingDetails = undefined;
      }
    };
  }

  /** Records a failure that aborts the run. */
  fail(err: Error): void {
    this.errors.push(err);
    this.abortRequested = true;
    this.settleAbortIfIdle();
  }

  private settleAbortIfIdle(): void {
    if (this.abortRequested && this.inFlight === 0) this.resolveAborted();
  }

  private async newResource(args: pulumi.runtime.MockResourceArgs): Promise<pulumi.runtime.MockResourceResult> {
    const details = this.takeDetails(args);
    if (this.abortRequested) {
      // The engine starts no new steps once an update has failed.
      throw monitorTerminated();
    }
    const rawProvider = args.inputs[PROVIDER_KEY];
    const dynamic = args.type.startsWith("pulumi-nodejs:dynamic") && rawProvider !== undefined;
    // `id` is set for `Resource.get` and `import`, which the engine serves with Read, never Create.
    if (!dynamic || args.id) return this.echo(args, details);
    this.inFlight++;
    try {
      return await this.createDynamic(args, details);
    } catch (err) {
      this.fail(err instanceof Error ? err : toTestRealmError(err, "create failed"));
      throw monitorTerminated();
    } finally {
      this.inFlight--;
      this.settleAbortIfIdle();
    }
  }

  private takeDetails(args: pulumi.runtime.MockResourceArgs): RegistrationDetails {
    const details = this.pendingDetails;
    if (details && details.type === args.type && details.name === args.name) return details;
    return { type: args.type, name: args.name, parent: "", dependencies: [], additionalSecretOutputs: [], retainOnDelete: false };
  }

  private echo(args: pulumi.runtime.MockResourceArgs, details: RegistrationDetails): pulumi.runtime.MockResourceResult {
    const { plain, secretPaths } = unwrapSecrets(args.inputs);
    const id = args.id || (args.custom ? `${args.name}-id` : "");
    this.records.push({
      ...this.base(args, details),
      custom: args.custom ?? false,
      dynamic: false,
      id,
      inputs: plain,
      outputs: plain,
      secretInputPaths: secretPaths,
      secretOutputPaths: secretPaths,
      providerTextIsSecret: false,
      initFailed: false,
      live: false,
    });
    // Echo as received, secret markers included.
    return { id: args.custom ? id : undefined, state: args.inputs };
  }

  private base(args: pulumi.runtime.MockResourceArgs, details: RegistrationDetails): Pick<MutableRecord, "urn" | "type" | "name" | "parent" | "dependencies" | "additionalSecretOutputs" | "retainOnDelete"> {
    return {
      urn: this.urn(details.parent, args.type, args.name),
      type: args.type,
      name: args.name,
      parent: details.parent,
      dependencies: details.dependencies,
      additionalSecretOutputs: details.additionalSecretOutputs,
      retainOnDelete: details.retainOnDelete,
    };
  }

  /** Same rule as the mock monitor's `newUrn`. */
  private urn(parent: string, type: string, name: string): string {
    let qualified = type;
    if (parent) {
      const parentType = (parent.split("::")[2] ?? "").split("$").pop() ?? "";
      qualified = `${parentType}$${type}`;
    }
    return `urn:pulumi:${this.stack}::${this.project}::${qualified}::${name}`;
  }

  private async createDynamic(args: pulumi.runtime.MockResourceArgs, details: RegistrationDetails): Promise<pulumi.runtime.MockResourceResult> {
    const { plain: inputs, secretPaths: secretInputPaths } = unwrapSecrets(args.inputs);
    const providerText = inputs[PROVIDER_KEY];
    if (typeof providerText !== "string") {
      throw new MockResourceError("load", args.type, args.name, "__provider is not a string");
    }
    const { provider } = await this.loadProvider(providerText, args.type, args.name);

    // Check, as checkRPC does: no check means the inputs pass through; __provider is always the new one.
    let checked: PropertyMap = inputs;
    if (provider.check) {
      const result: unknown = await callProvider("check", args, () => provider.check?.({}, inputs));
      const { inputs: checkedInputs, failures } = checkResultParts(result);
      if (failures.length > 0) {
        const detail = failures.map((f) => `${f.property}: ${f.reason}`).join("; ");
        throw new MockResourceError("check", args.type, args.name, detail, { failures });
      }
      if (checkedInputs) checked = checkedInputs;
    }
    checked = { ...checked, [PROVIDER_KEY]: providerText };

    // Create, as createRPC does: outputs are `outs` plus the __provider the resource was created with.
    let id: string;
    let outs: PropertyMap;
    let initFailure: unknown;
    try {
      const result: unknown = await callProvider("create", args, () => provider.create(checked));
      ({ id, outs } = createResultParts(result, args));
    } catch (err) {
      const partial = partialFailure(err);
      if (!partial) throw err;
      // An error carrying `id` (ErrorResourceInitFailed): the engine keeps the object in state, then fails.
      ({ id, outs } = partial);
      initFailure = err;
    }
    const outputs: PropertyMap = { ...clonePlain(outs), [PROVIDER_KEY]: providerText };
    assertStructCompatible(outputs, args);

    const secretOutputPaths = annotateSecrets(outputs, inputs, new Set(secretInputPaths));
    for (const key of details.additionalSecretOutputs) {
      if (key in outputs && !secretOutputPaths.includes(key)) secretOutputPaths.push(key);
    }
    this.records.push({
      ...this.base(args, details),
      custom: true,
      dynamic: true,
      id,
      inputs: withoutProvider(inputs),
      checkedInputs: withoutProvider(checked),
      outputs: withoutProvider(outputs),
      secretInputPaths,
      secretOutputPaths,
      additionalSecretOutputs: details.additionalSecretOutputs,
      providerText,
      providerTextIsSecret: secretInputPaths.includes(PROVIDER_KEY),
      initFailed: initFailure !== undefined,
      live: true,
    });
    if (initFailure !== undefined) {
      throw new MockResourceError("create", args.type, args.name, errorMessage(initFailure), { cause: initFailure });
    }
    return { id, state: wrapSecrets(outputs, secretOutputPaths) };
  }

  /** Loads a provider text once per run, like the host's `getProvider` (which caches per process). */
  private loadProvider(text: string, type: string, name: string): Promise<LoadedProvider> {
    let loaded = this.providers.get(text);
    if (!loaded) {
      loaded = (async (): Promise<LoadedProvider> => {
        let provider: pulumi.dynamic.ResourceProvider;
        try {
          provider = loadProviderText(text, this.programDir);
        } catch (err) {
          throw new MockResourceError("load", type, name, errorMessage(err), { cause: err });
        }
        if (provider.configure) {
          const config = new DynamicProviderConfig(this.rawConfig, this.project);
          await provider.configure({ config });
        }
        return { provider };
      })();
      this.providers.set(text, loaded);
    }
    return loaded;
  }

  async destroyAll(): Promise<void> {
    for (const record of [...this.records].reverse()) {
      if (!record.live) continue;
      if (record.retainOnDelete) {
        record.live = false;
        continue;
      }
      const providerText = record.providerText;
      if (providerText === undefined) {
        record.live = false;
        continue;
      }
      const { provider } = await this.loadProvider(providerText, record.type, record.name);
      if (provider.delete) {
        const props = { ...record.outputs, [PROVIDER_KEY]: providerText };
        try {
          await provider.delete(record.id, props);
        } catch (err) {
          throw new MockResourceError("delete", record.type, record.name, errorMessage(err), { cause: err });
        }
      }
      record.live = false;
    }
  }
}

/** The error the SDK treats as "the monitor is shutting down": it rejects nothing and reports nothing. */
function monitorTerminated(): Error {
  return Object.assign(new Error("the deployment was aborted by an earlier failure"), { code: grpc.status.UNAVAILABLE });
}

async function callProvider(operation: "check" | "create", args: pulumi.runtime.MockResourceArgs, call: () => unknown): Promise<unknown> {
  try {
    return await call();
  } catch (err) {
    if (operation === "create" && partialFailure(err)) throw err;
    throw new MockResourceError(operation, args.type, args.name, errorMessage(err), { cause: err });
  }
}

interface NodeModuleInternals {
  _nodeModulePaths(dir: string): string[];
}

interface CompilableModule {
  exports: unknown;
  paths: string[];
  filename: string;
  _compile(code: string, filename: string): void;
}

/**
 * Loads `__provider` text as the host does (`requireFromString(text).handler()`): filename `""`, so no
 * self-reference and no relative requires; module search paths are the `node_modules` chain of `programDir` (the
 * host uses its cwd, which the engine sets to the program directory).
 */
function loadProviderText(text: string, programDir: string): pulumi.dynamic.ResourceProvider {
  const internals = Module as unknown as NodeModuleInternals;
  const mod = new Module("", undefined) as unknown as CompilableModule;
  mod.filename = "";
  mod.paths = internals._nodeModulePaths(path.resolve(programDir));
  mod._compile(text, "");
  const handler: unknown = (mod.exports as { handler?: unknown } | undefined)?.handler;
  if (typeof handler !== "function") {
    throw new Error("the __provider text does not export handler()");
  }
  const provider: unknown = (handler as () => unknown)();
  if (typeof provider !== "object" || provider === null || typeof (provider as { create?: unknown }).create !== "function") {
    throw new Error("handler() in the __provider text did not return a provider with create()");
  }
  return provider as pulumi.dynamic.ResourceProvider;
}

function checkResultParts(result: unknown): { inputs?: PropertyMap; failures: { property: string; reason: string }[] } {
  if (typeof result !== "object" || result === null) return { failures: [] };
  const { inputs, failures } = result as { inputs?: unknown; failures?: unknown };
  const parsedFailures: { property: string; reason: string }[] = [];
  if (Array.isArray(failures)) {
    for (const f of failures as unknown[]) {
      const { property, reason } = (f ?? {}) as { property?: unknown; reason?: unknown };
      parsedFailures.push({ property: String(property), reason: String(reason) });
    }
  }
  return { inputs: isRecord(inputs) ? clonePlain(inputs) : undefined, failures: parsedFailures };
}

function createResultParts(result: unknown, args: pulumi.runtime.MockResourceArgs): { id: string; outs: PropertyMap } {
  const { id, outs } = (result ?? {}) as { id?: unknown; outs?: unknown };
  if (typeof id !== "string" || id === "") {
    // The engine rejects a create that returns no id.
    throw new MockResourceError("create", args.type, args.name, `provider returned ${JSON.stringify(id)} as the id`);
  }
  return { id, outs: isRecord(outs) ? outs : {} };
}

/** The host turns an error with an `id` into ErrorResourceInitFailed (`grpcResponseFromError`). */
function partialFailure(err: unknown): { id: string; outs: PropertyMap } | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const { id, properties } = err as { id?: unknown; properties?: unknown };
  if (typeof id !== "string" || id === "") return undefined;
  return { id, outs: isRecord(properties) ? properties : {} };
}

/** The host serializes outputs with `Struct.fromJavaScript`, which throws on `undefined` and other non-JSON values. */
function assertStructCompatible(value: unknown, args: pulumi.runtime.MockResourceArgs, where = "outputs"): void {
  if (value === null || typeof value === "string" || typeof value === "boolean" || typeof value === "number") return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => assertStructCompatible(v, args, `${where}[${i}]`));
    return;
  }
  if (isRecord(value)) {
    for (const [k, v] of Object.entries(value)) assertStructCompatible(v, args, `${where}.${k}`);
    return;
  }
  throw new MockResourceError("create", args.type, args.name, `${where} is ${typeof value}: the provider host fails with "Unexpected struct type."`);
}

/** Removes the SDK's secret markers, returning plain values and the dotted paths that were secret. */
function unwrapSecrets(inputs: PropertyMap): { plain: PropertyMap; secretPaths: string[] } {
  const secretPaths: string[] = [];
  const visit = (value: unknown, at: string): unknown => {
    if (isSecretWrapper(value)) {
      secretPaths.push(at);
      return visit(value.value, at);
    }
    if (Array.isArray(value)) return value.map((v, i) => visit(v, `${at}[${i}]`));
    if (isRecord(value)) {
      const out: PropertyMap = {};
      for (const [k, v] of Object.entries(value)) out[k] = visit(v, at ? `${at}.${k}` : k);
      return out;
    }
    return value;
  };
  const plain = visit(inputs, "") as PropertyMap;
  return { plain, secretPaths: [...new Set(secretPaths)] };
}

function isSecretWrapper(value: unknown): value is { value: unknown } {
  return isRecord(value) && value[pulumi.runtime.specialSigKey] === pulumi.runtime.specialSecretSig;
}

/**
 * The engine's rule for providers that do not accept secrets (`annotateSecrets`, provider_plugin.go): an output is
 * secret if the same-named input contains a secret; when both are objects, recurse instead of tainting the whole.
 */
function annotateSecrets(outs: PropertyMap, ins: PropertyMap, secretInputPaths: ReadonlySet<string>, prefix = ""): string[] {
  const marked: string[] = [];
  for (const [key, inValue] of Object.entries(ins)) {
    if (!(key in outs)) continue;
    const at = prefix ? `${prefix}.${key}` : key;
    const outValue = outs[key];
    if (!secretInputPaths.has(at) && isRecord(outValue) && isRecord(inValue)) {
      marked.push(...annotateSecrets(outValue, inValue, secretInputPaths, at));
    } else if ([...secretInputPaths].some((p) => p === at || p.startsWith(`${at}.`) || p.startsWith(`${at}[`))) {
      marked.push(at);
    }
  }
  return marked;
}

/** Re-applies secret markers at dotted object paths, so the SDK sees those outputs as secret. */
function wrapSecrets(outputs: PropertyMap, secretPaths: readonly string[]): PropertyMap {
  const wrap = (value: unknown, at: string): unknown => {
    if (secretPaths.includes(at)) {
      return { [pulumi.runtime.specialSigKey]: pulumi.runtime.specialSecretSig, value };
    }
    if (isRecord(value) && secretPaths.some((p) => p.startsWith(`${at}.`))) {
      const out: PropertyMap = {};
      for (const [k, v] of Object.entries(value)) out[k] = wrap(v, `${at}.${k}`);
      return out;
    }
    return value;
  };
  const out: PropertyMap = {};
  for (const [k, v] of Object.entries(outputs)) out[k] = wrap(v, k);
  return out;
}

function withoutProvider(props: PropertyMap): PropertyMap {
  const { [PROVIDER_KEY]: _provider, ...rest } = props;
  return rest;
}

/** Deep-copies plain data into this realm (provider code runs in Node's main realm, not jest's sandbox). */
function clonePlain<T>(value: T): T {
  // Array.from, not map: map builds its result with the source array's own constructor (the provider's realm), and
  // the SDK (in this realm) serializes an array of another realm as an object keyed "0", "1"... (found when one
  // resource's array output was another's input).
  if (Array.isArray(value)) return Array.from(value as unknown[], (v: unknown) => clonePlain(v)) as T;
  if (isRecord(value)) {
    const out: PropertyMap = {};
    for (const [k, v] of Object.entries(value)) out[k] = clonePlain(v);
    return out as T;
  }
  return value;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const proto: unknown = Object.getPrototypeOf(value);
  // Objects made in another realm (the provider's) have that realm's Object.prototype.
  return proto === null || Object.getPrototypeOf(proto) === null;
}

function isPlainOrModuleObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

function errorMessage(err: unknown): string {
  if (typeof err === "object" && err !== null && typeof (err as { message?: unknown }).message === "string") {
    return (err as { message: string }).message;
  }
  return String(err);
}

function toTestRealmError(err: unknown, fallback: string): Error {
  if (err instanceof Error) return err;
  return new Error(`${fallback}: ${errorMessage(err)}`, { cause: err });
}

/**
 * Lists where `needle` (e.g. a private key given as `pulumi.secret`) appears in plaintext, i.e. somewhere the engine
 * would *not* encrypt: non-secret outputs of any resource, a `__provider` text that is not secret, non-secret stack
 * outputs. An empty list is what a "no secret leaks" test asserts.
 *
 * @param run The finished run.
 * @param needle The secret's plaintext.
 * @returns Human-readable locations, e.g. `resource "w" output connection.privateKey`.
 */
export function findPlaintext(run: ProgramRun, needle: string): string[] {
  const found: string[] = [];
  for (const r of run.resources) {
    for (const [at, text] of flattenStrings(r.outputs)) {
      const secret = r.secretOutputPaths.some((p) => at === p || at.startsWith(`${p}.`) || at.startsWith(`${p}[`));
      if (!secret && text.includes(needle)) found.push(`resource "${r.name}" output ${at}`);
    }
    if (r.providerText?.includes(needle) && !r.providerTextIsSecret) found.push(`resource "${r.name}" __provider`);
  }
  for (const [at, text] of flattenStrings(run.outputs)) {
    const top = at.split(/[.[]/)[0] ?? at;
    if (!run.secretOutputs.includes(top) && text.includes(needle)) found.push(`stack output ${at}`);
  }
  return found;
}

function flattenStrings(value: unknown, at = ""): [string, string][] {
  if (typeof value === "string") return [[at, value]];
  if (Array.isArray(value)) return value.flatMap((v, i) => flattenStrings(v, `${at}[${i}]`));
  if (isRecord(value)) return Object.entries(value).flatMap(([k, v]) => flattenStrings(v, at ? `${at}.${k}` : k));
  return [];
}
