/**
 * The bounded I/O tick of worker isolates: Deno's runtime takes at most
 * `DENO_TOKIO_MAX_IO_EVENTS_PER_TICK` I/O events per tick (default 1024),
 * read once when a runtime starts. A `Worker`'s runtime starts when it is
 * created, so the main isolate sets the variable before creating workers;
 * at 128 ready sockets are served in turn instead of the same ones winning.
 *
 * @module
 */

/** The variable Deno's runtime reads at its start. */
export const IO_EVENTS_ENV = "DENO_TOKIO_MAX_IO_EVENTS_PER_TICK";

/** The bound we set: measured fair at c=500 (see the README). */
export const IO_EVENTS_PER_TICK = 128;

/** What Deno's runtime takes when the variable is not set. */
const DENO_EVENTS_PER_TICK = 1024;

/** What {@linkcode boundIoTick} found or did. */
export interface IoTick {
  /** Events per tick the next worker runtime will use (1024: Deno's default). */
  value: number;
  /** `environment`: already set (it wins); `set`: we set it; `default`: not set (no permission to set it). */
  source: "environment" | "set" | "default";
}

/**
 * Makes worker runtimes created after this call take at most
 * {@linkcode IO_EVENTS_PER_TICK} I/O events per tick, unless the variable is
 * already in the environment (it wins). Without permission to read and write
 * that variable nothing is changed.
 *
 * @throws {RangeError} when the environment holds a value Deno cannot parse
 *   (Deno would panic starting the worker): it must be a whole number ≥ 1.
 */
export function boundIoTick(): IoTick {
  const permission = Deno.permissions.querySync({
    name: "env",
    variable: IO_EVENTS_ENV,
  });
  if (permission.state !== "granted") {
    return { value: DENO_EVENTS_PER_TICK, source: "default" };
  }
  const existing = Deno.env.get(IO_EVENTS_ENV);
  if (existing !== undefined) {
    const value = /^\d{1,9}$/.test(existing) ? Number(existing) : 0;
    if (value < 1) {
      throw new RangeError(
        `invalid ${IO_EVENTS_ENV} "${existing}": expected a whole number ≥ 1`,
      );
    }
    return { value, source: "environment" };
  }
  Deno.env.set(IO_EVENTS_ENV, `${IO_EVENTS_PER_TICK}`);
  // Read back: what is reported is what the workers' runtimes will read.
  const held = Deno.env.get(IO_EVENTS_ENV);
  if (held === undefined) {
    return { value: DENO_EVENTS_PER_TICK, source: "default" };
  }
  return { value: Number(held), source: "set" };
}
