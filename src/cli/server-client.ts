import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import type { Config } from '../config.ts';
import { configOrExit } from './context.ts';
import type { JsonOption } from './output.ts';

/**
 * Commands that ask a running server (rather than opening the stores themselves) use this: the
 * in-process cache, for one, exists only inside the server.
 */

/** Where the server is and which key proves the caller is an admin. */
export interface ServerOptions extends JsonOption {
  readonly url?: string;
  readonly keyFile?: string;
}

/** Adds `--url`, `--key-file` and `--json` to a command that talks to a running server. */
export function withServerOptions(command: Command): Command {
  return command
    .option('--url <url>', 'the databank server (default http://HOST:PORT from the environment)')
    .option('--key-file <file>', 'file holding an admin API key (default $DATABANK_DATA_DIR/admin-key)')
    .option('--json', 'machine-readable output');
}

/** `--url`, or http://HOST:PORT of the config (an IPv6 host in brackets). */
export function serverBase(opts: ServerOptions, config: Config): string {
  if (opts.url) return opts.url;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  return `http://${host}:${config.port}`;
}

/** The admin key from `--key-file` or the data dir, with a message that says what to do when there is none. */
export function readAdminKey(opts: ServerOptions, config: Config): string {
  const file = opts.keyFile ?? join(config.dataDir, 'admin-key');
  let key: string;
  try {
    key = readFileSync(file, 'utf8').trim();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'EACCES') throw err;
    throw new Error(
      `cannot read an admin key from ${file} (${code}): pass --key-file <file>, or set DATABANK_DATA_DIR ` +
        'to the data dir of the server (its first start saves the key there)',
    );
  }
  if (!key) throw new Error(`the admin key file ${file} is empty`);
  return key;
}

/**
 * Calls the running server's admin API with the admin key and returns the JSON body; an error
 * answer becomes an Error carrying its status, code and message.
 *
 * @example
 * const body = await callServer(opts, 'POST', '/cache/flush', { prefix: 'account:' });
 */
export async function callServer(
  opts: ServerOptions,
  method: 'GET' | 'POST' | 'DELETE',
  path: string,
  body?: unknown,
): Promise<unknown> {
  const config = configOrExit();
  const base = serverBase(opts, config);
  const key = readAdminKey(opts, config);
  let res: Response;
  try {
    res = await fetch(new URL(path, base), {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new Error(`no databank server answers at ${base} (${String((err as Error).cause ?? (err as Error).message)})`);
  }
  // 204 No Content (a DELETE): nothing to read.
  if (res.status === 204) return null;
  const text = await res.text();
  let json: { code?: string; message?: string };
  try {
    json = JSON.parse(text) as typeof json;
  } catch {
    // Something answered, but not databank (or a proxy's error page): say so rather than fail to parse.
    throw new Error(`${base} answered ${res.status} without JSON: is it a databank server?`);
  }
  if (!res.ok) throw new Error(`${res.status} ${json.code ?? ''}: ${json.message ?? ''}`);
  return json;
}

/** Whether anything answers HTTP at `base`. */
export async function answers(base: string): Promise<boolean> {
  try {
    await fetch(new URL('/healthz', base), { signal: AbortSignal.timeout(2_000) });
    return true;
  } catch {
    return false;
  }
}

/** Whether a command should go through the server: `--url` names one, or one answers at HOST:PORT. */
export async function serverRuns(opts: ServerOptions): Promise<boolean> {
  return Boolean(opts.url) || (await answers(serverBase(opts, configOrExit())));
}
