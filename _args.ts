/**
 * The values behind option strings that the commands share beyond
 * `_cli.ts`'s basic ones (sizes, a host and port), typo suggestions, and
 * {@linkcode UsageError}. `_cli.ts` re-exports what commands use.
 *
 * @module
 */
import { quote } from "./io.ts";

/**
 * A bad command line: `main.ts` prints it with the usage line of the command
 * being run and exits 2.
 */
export class UsageError extends Error {
  /** `UsageError`, as stacks show it. */
  override name = "UsageError";
}

/**
 * The one of `candidates` closest to `word`, if it is a likely typo: at most
 * one edit away for words of up to 4 characters, else two (an edit is an
 * insertion, deletion, substitution or swap of two neighbours).
 */
export function suggest(
  word: string,
  candidates: readonly string[],
): string | undefined {
  let best: string | undefined;
  let bestDistance = word.length <= 4 ? 2 : 3;
  for (const candidate of candidates) {
    const d = editDistance(word, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best;
}

/** Edits from `a` to `b`, a swap of neighbours counting one (Damerau, OSA). */
function editDistance(a: string, b: string): number {
  const d = Array.from(
    { length: a.length + 1 },
    (_, i) => Array.from({ length: b.length + 1 }, (_, j) => i || j),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(
        d[i - 1][j] + 1,
        d[i][j - 1] + 1,
        d[i - 1][j - 1] + cost,
      );
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/** Size units, as `--help` shows them. */
export const SIZE_EXAMPLES =
  "64k, 1M, 1G (powers of 1024; a bare number is bytes)";
const SIZE = /^(\d+(?:\.\d+)?)(?:([kmg])(?:ib)?)?$/i;

/**
 * How a number option is read: option `name` of `values` as a number in
 * `[min, max]` (by default, any ≥ 0), `undefined` when not given, or a usage
 * error naming the option and what it takes.
 */
export type NumberOption = <K extends string>(
  values: { readonly [P in NoInfer<K>]?: string },
  name: K,
  range?: readonly [min: number, max: number],
) => number | undefined;

/**
 * A {@linkcode NumberOption} that reads a value with `parse` (`NaN` for one
 * it does not take) and, for a value out of range, says the option takes
 * `what(range)`, where range is `≥ MIN` or `from MIN to MAX`.
 */
export function numberOption(
  parse: (value: string) => number,
  what: (range: string) => string,
): NumberOption {
  return (values, name, [min, max] = [0, Number.MAX_SAFE_INTEGER]) => {
    const value = values[name];
    if (value === undefined) return undefined;
    const n = parse(value);
    if (!(n >= min && n <= max)) {
      const range = max === Number.MAX_SAFE_INTEGER
        ? `≥ ${min}`
        : `from ${min} to ${max}`;
      throw new UsageError(
        `--${name} takes ${what(range)}, not ${quote(value)}`,
      );
    }
    return n;
  };
}

/**
 * A size in bytes: a whole number, or a number with a unit (`64k`, `1.5M`,
 * `1G`, `1MiB`: powers of 1024) that comes to whole bytes, in `[min, max]`.
 * Else a usage error naming the option.
 */
export const bytes: NumberOption = numberOption((value) => {
  const [, number, unit = ""] = SIZE.exec(value) ?? [];
  const n = Number(number) * 1024 ** " kmg".indexOf(unit.toLowerCase() || " ");
  return Number.isInteger(n) ? n : NaN;
}, (range) => `a size ${range} bytes, such as 4096, 64k or 1M`);

/**
 * `HOST:PORT`, `[V6]:PORT`, `[V6]` or `HOST` (an IPv6 address without
 * brackets has more than one `:`) as its host and port strings, unchecked.
 */
export function splitHostPort(text: string): { host: string; port?: string } {
  const bracketed = /^\[([^\]]*)\](?::(.*))?$/.exec(text);
  if (bracketed) return { host: bracketed[1], port: bracketed[2] };
  const colon = text.indexOf(":");
  if (colon < 0 || colon !== text.lastIndexOf(":")) return { host: text };
  return { host: text.slice(0, colon), port: text.slice(colon + 1) };
}

/**
 * `values` with the host and port that a command's positional arguments give,
 * as `nc` takes them: `HOST PORT`, `HOST:PORT`, `[V6]:PORT`, `HOST`, `:PORT`
 * or a lone `PORT`. Giving one both ways, or with `--unix`, is a usage error.
 */
export function targetFromPositionals<
  V extends { host?: string; port?: string; unix?: string },
>(values: V, positionals: readonly string[]): V {
  if (positionals.length === 0) return values;
  if (positionals.length > 2) {
    throw new UsageError(
      `too many arguments: ${positionals.map(quote).join(" ")} ` +
        "(give HOST PORT or HOST:PORT)",
    );
  }
  const [first, second] = positionals;
  let { host, port } = positionals.length === 2
    ? { host: splitHostPort(first).host, port: second }
    : /^\d+$/.test(first)
    ? { host: undefined, port: first }
    : splitHostPort(first);
  if (host === "") host = undefined; // ":PORT"
  if (values.unix !== undefined) {
    throw new UsageError("--unix cannot go with HOST or PORT");
  }
  if (host !== undefined && values.host !== undefined) {
    throw new UsageError("give the host once: --host or HOST, not both");
  }
  if (port !== undefined && values.port !== undefined) {
    throw new UsageError("give the port once: --port or PORT, not both");
  }
  return { ...values, host: host ?? values.host, port: port ?? values.port };
}
