import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { REQUIRE_SERVICES } from './engines.ts';
import { freePort } from './cli.ts';
import { spawnTracked } from './processes.ts';

/**
 * A real nginx in front of a test app, run from the shipped `deploy/cdn/nginx.conf` with only
 * its `# site-specific` lines rewritten: pid, logs, temporary and cache folders into a fresh
 * temporary folder, the upstream to the app's port and the listener to a free port on 127.0.0.1.
 * Everything else (cache key, bypass rules, headers) is the shipped file, so a change to it is
 * tested. With REQUIRE_SERVICES=1 a missing nginx fails the run instead of skipping.
 */
export const SHIPPED_CONFIG = resolve(dirname(fileURLToPath(import.meta.url)), '../../deploy/cdn/nginx.conf');

/** NGINX_BIN when set (a path that does not exist counts as no nginx), else the usual places, else PATH. */
function findNginx(): string | null {
  const given = process.env.NGINX_BIN;
  if (given) return existsSync(given) ? given : null;
  for (const c of ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx']) if (existsSync(c)) return c;
  const which = spawnSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8' });
  const found = which.status === 0 ? which.stdout.trim() : '';
  return found ? found : null;
}

export const NGINX_BIN: string | null = findNginx();
export const HAVE_NGINX = NGINX_BIN !== null;
if (!HAVE_NGINX) {
  const missing = process.env.NGINX_BIN
    ? `NGINX_BIN=${process.env.NGINX_BIN} does not exist`
    : 'nginx is not installed (apt-get install nginx-light, or set NGINX_BIN)';
  if (REQUIRE_SERVICES) throw new Error(`REQUIRE_SERVICES=1 but ${missing}`);
  console.warn(`CDN suites skipped: ${missing}`);
}

const MARK = /#\s*site-specific\b.*$/;

/** The code part of a config line: comments and surrounding blanks removed (the file uses no quotes). */
function codeOf(line: string): string {
  return line.replace(/#.*$/, '').trim();
}

export interface RenderOptions {
  /** Folder under which every file and folder path of the config is placed. */
  readonly dir: string;
  readonly upstreamPort: number;
  readonly listenPort: number;
}

/**
 * The config with each `# site-specific` statement rewritten for a test run, and the folders
 * nginx needs to exist before it starts. A statement is the marked line and the unterminated
 * lines before it (`proxy_cache_path` spans three lines). A marked directive this function has no
 * rule for is an error, so a new site-specific setting cannot slip through untested.
 */
export function renderConfig(source: string, options: RenderOptions): { text: string; folders: string[] } {
  const lines = source.split('\n');
  const folders = new Set<string>();
  /** The path under `dir`; the folder holding it must exist (nginx creates the last folder of a
   * temp or cache path itself, and gives it to the worker user). */
  const relocate = (path: string) => {
    if (!path.startsWith('/')) throw new Error(`site-specific path ${path} is not absolute`);
    const moved = join(options.dir, 'root', path);
    folders.add(dirname(moved));
    return moved;
  };
  let rewritten = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string;
    if (!MARK.test(line)) continue;
    let start = i;
    while (start > 0) {
      const previous = codeOf(lines[start - 1] as string);
      if (previous === '' || /[;{}]$/.test(previous)) break;
      start--;
    }
    const code = lines
      .slice(start, i + 1)
      .map(codeOf)
      .join(' ');
    if (/["'\\$]/.test(code) || !code.endsWith(';')) {
      throw new Error(`${SHIPPED_CONFIG}:${i + 1}: cannot rewrite site-specific statement: ${code}`);
    }
    const [directive = '', ...args] = code.slice(0, -1).trim().split(/\s+/);
    const [first = '', ...rest] = args;
    let replaced: string[];
    switch (directive) {
      case 'pid':
        replaced = [relocate(first)];
        break;
      case 'error_log':
      case 'access_log':
        replaced = [relocate(first), ...rest];
        break;
      case 'client_body_temp_path':
      case 'proxy_temp_path':
      case 'fastcgi_temp_path':
      case 'uwsgi_temp_path':
      case 'scgi_temp_path':
      case 'proxy_cache_path':
        replaced = [relocate(first), ...rest];
        break;
      case 'server':
        replaced = [`127.0.0.1:${options.upstreamPort}`, ...rest];
        break;
      case 'listen':
        replaced = [`127.0.0.1:${options.listenPort}`, ...rest];
        break;
      default:
        throw new Error(
          `${SHIPPED_CONFIG}:${i + 1}: no rule for the site-specific directive "${directive}"; add one in test/support/nginx.ts`,
        );
    }
    const indent = /^\s*/.exec(lines[start] as string)?.[0] ?? '';
    lines[start] = `${indent}${directive} ${replaced.join(' ')};  # site-specific, rewritten for the test`;
    for (let j = start + 1; j <= i; j++) lines[j] = '';
    rewritten++;
  }
  if (rewritten === 0) throw new Error(`${SHIPPED_CONFIG} has no "# site-specific" lines to rewrite`);
  return { text: lines.join('\n'), folders: [...folders] };
}

function connects(port: number): Promise<boolean> {
  return new Promise((resolveConnect) => {
    const socket = connect(port, '127.0.0.1');
    const done = (ok: boolean) => {
      socket.destroy();
      resolveConnect(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => done(true));
  });
}

export interface Nginx {
  /** `http://127.0.0.1:<port>` */
  readonly base: string;
  readonly port: number;
  /** The rendered config, as nginx read it. */
  readonly config: string;
  /** The error log so far (for failure messages). */
  errorLog(): string;
  /** Stops nginx (SIGQUIT, then SIGTERM, then SIGKILL), waits for it to exit, removes its folder. */
  stop(): Promise<void>;
}

const START_ATTEMPTS = 3;
const CONNECT_ATTEMPTS = 100;
const CONNECT_EVERY_MS = 50;

/** Starts nginx from `configPath` (the shipped file by default) in front of 127.0.0.1:`upstreamPort`. */
export async function startNginx(upstreamPort: number, configPath = SHIPPED_CONFIG): Promise<Nginx> {
  if (!NGINX_BIN) throw new Error('nginx is not installed');
  const source = readFileSync(configPath, 'utf8');
  let lastError: Error | null = null;
  // The free port is found by binding and releasing it, so another process may take it before
  // nginx binds it: nginx then exits at once and is started again on another port.
  for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    try {
      return await startOnce(NGINX_BIN, source, upstreamPort, await freePort());
    } catch (err) {
      lastError = err as Error;
      if (!/Address already in use/.test(lastError.message)) throw lastError;
    }
  }
  throw lastError ?? new Error('nginx did not start');
}

async function startOnce(bin: string, source: string, upstreamPort: number, port: number): Promise<Nginx> {
  const dir = mkdtempSync(join(tmpdir(), 'databank-cdn-'));
  // Started as root, nginx runs its workers as an unprivileged user (nobody): they must be able to
  // reach the cache and temporary folders under this one.
  chmodSync(dir, 0o755);
  const { text, folders } = renderConfig(source, { dir, upstreamPort, listenPort: port });
  for (const folder of folders) mkdirSync(folder, { recursive: true, mode: 0o755 });
  const configFile = join(dir, 'nginx.conf');
  writeFileSync(configFile, text);
  const startupLog = join(dir, 'startup-error.log');
  const errorLogs = [startupLog, ...[...text.matchAll(/^\s*error_log\s+(\S+)/gm)].map((m) => m[1] as string)];
  const errorLog = () =>
    errorLogs
      .filter((f) => existsSync(f))
      .map((f) => readFileSync(f, 'utf8'))
      .join('');

  // nginx writes its pid file only once it holds its listening sockets: the pid file naming this
  // child, and then the port answering, tells that it is this nginx on the port and not a process
  // that took the port first (nginx then retries bind() for a few seconds before it gives up).
  const configuredPid = /^\s*pid\s+([^;\s]+)\s*;/m.exec(text)?.[1];
  const pidFile = configuredPid ?? join(dir, 'nginx.pid');
  const globals = configuredPid ? 'daemon off;' : `daemon off; pid ${pidFile};`;
  // Its own process group (master and workers), killed when the test or file that started it ends.
  const proc = spawnTracked(bin, ['-p', `${dir}/`, '-c', configFile, '-e', startupLog, '-g', globals], { what: 'nginx' });
  const { child } = proc;
  const ownsPidFile = () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() === String(child.pid);
  let exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  const exit = proc.exited.then((e) => {
    exited = e;
  });

  const stop = async () => {
    if (!exited && child.pid !== undefined) {
      // A graceful stop first (the cache manager flushes, workers finish), then the whole group.
      for (const [signal, waitMs] of [
        ['SIGQUIT', 5_000],
        ['SIGTERM', 5_000],
      ] as const) {
        if (exited) break;
        child.kill(signal);
        await Promise.race([exit, sleep(waitMs, undefined, { ref: false })]);
      }
      await proc.kill();
    }
    rmSync(dir, { recursive: true, force: true });
  };

  // The pid file and connection attempts are the events; a bounded number of tries.
  for (let i = 0; i < CONNECT_ATTEMPTS; i++) {
    if (exited) break;
    if (ownsPidFile() && (await connects(port))) {
      return { base: `http://127.0.0.1:${port}`, port, config: text, errorLog, stop };
    }
    await sleep(CONNECT_EVERY_MS);
  }
  const why = exited
    ? `nginx exited (${JSON.stringify(exited)})`
    : `nginx did not write ${pidFile} and answer on 127.0.0.1:${port} within ${CONNECT_ATTEMPTS} attempts`;
  const log = `${proc.output()}${errorLog()}`;
  await stop();
  throw new Error(`${why}:\n${log}`);
}
