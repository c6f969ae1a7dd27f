/**
 * One way for every command to print its result: the value as one line of JSON with `--json`
 * (for scripts), otherwise text for a person. Commands build the text only when it is wanted.
 */

/** The option every command that prints a result accepts. */
export interface JsonOption {
  readonly json?: boolean;
}

/**
 * Prints `value` as JSON when `opts.json` is set, otherwise the text `text` gives.
 *
 * @example
 * printResult(opts, { applied }, () => applied.map((n) => `applied ${n}`).join('\n'));
 */
export function printResult(opts: JsonOption, value: unknown, text: string | (() => string)): void {
  if (opts.json) process.stdout.write(`${JSON.stringify(value)}\n`);
  else process.stdout.write(`${typeof text === 'function' ? text() : text}\n`);
}

/** Prints a line of text; for commands that have no machine-readable result. */
export function printText(text: string): void {
  process.stdout.write(`${text}\n`);
}

/**
 * Two columns, name and value, the names padded to `width` characters so that the values line
 * up; a missing value (null or undefined) shows as `-`.
 *
 * @example
 * table({ entries: 1, bytes: null }) // "entries    1\nbytes      -"
 */
export function table(rows: Readonly<Record<string, unknown>>, width = 10): string {
  return Object.entries(rows)
    .map(([name, value]) => `${name.padEnd(width)} ${value ?? '-'}`)
    .join('\n');
}

