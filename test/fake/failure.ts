/** Test helper: the QuiesceError a promise rejects with (fails the test if it resolves or rejects otherwise). */
import { isQuiesceError, type QuiesceError } from "../../provider/errors";

export async function failure(p: Promise<unknown>): Promise<QuiesceError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!isQuiesceError(err)) throw new Error(`expected a QuiesceError, got ${String(err)}`);
  return err;
}
