import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, startChild, waitForHttp, type Child } from './child.ts';
import { onCleanup } from './cleanup.ts';
import { DATABANK_DIR } from './databank.ts';
import { BenchError } from './log.ts';

/** The nginx binary; NGINX points at another. */
export const NGINX = process.env.NGINX || '/usr/sbin/nginx';

/** The CDN configuration databank ships, in the benchmarked checkout. */
export const CDN_CONFIG_FILE = join(DATABANK_DIR, 'deploy/cdn/nginx.conf');

/** Marks the lines of deploy/cdn/nginx.conf that a deployment rewrites. */
const SITE_SPECIFIC = '# site-specific';

/** `nginx version: nginx/1.22.1` → `1.22.1`; fails with a message when the binary is missing. */
export function nginxVersion(): string {
  // `nginx -v` prints to stderr.
  const r = spawnSync(NGINX, ['-v'], { encoding: 'utf8' });
  const version = /nginx\/(\S+)/.exec(`${r.stderr ?? ''}${r.stdout ?? ''}`)?.[1];
  if (r.status === 0 && version) return version;
  const why = r.error ? ((r.error as NodeJS.ErrnoException).code ?? r.error.message) : (r.stderr ?? '').trim();
  throw new BenchError(`nginx is not usable at ${NGINX} (${why}): install nginx, or point NGINX at the binary`);
}

/** Direct children of `pid`, from the parent pid field of /proc/<pid>/stat. */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  return out;
}

/**
 * Masters still running. The 'exit' handler of child.ts kills a master with SIGKILL, which leaves
 * its workers running and listening; this handler runs before it and kills the workers first.
 */
const masters = new Set<number>();
process.prependListener('exit', () => {
  for (const master of masters) {
    for (const worker of childrenOf(master)) {
      try {
        process.kill(worker, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }
});

export interface NginxPaths {
  /** A folder of this nginx only (mode 0755, so workers running as `nobody` can enter it). */
  readonly dir: string;
  /** The port it must listen on, on 127.0.0.1. */
  readonly port: number;
}

export interface Nginx {
  readonly child: Child;
  readonly port: number;
  /** Its temporary folder (pid, temp paths, cache). */
  readonly dir: string;
  /** The configuration it runs, as written to `<dir>/nginx.conf`. */
  readonly config: string;
  /** The master and its workers (and cache manager/loader), for CPU accounting. */
  pids(): number[];
  stop(): Promise<void>;
}

/**
 * nginx as a child process in the foreground (`-g 'daemon off;'`), with a configuration built by
 * `makeConfig` for a fresh folder and port; started errors go to its stderr (`-e stderr`), which
 * the child keeps for error messages. Ready once GET `readyPath` answers 200. `stop()` (or the
 * run's cleanup) sends SIGTERM, a fast shutdown of master and workers, then removes the folder.
 */
export async function startNginx(label: string, makeConfig: (paths: NginxPaths) => string, readyPath: string): Promise<Nginx> {
  const dir = mkdtempSync(join(tmpdir(), 'databank-bench-nginx-'));
  chmodSync(dir, 0o755);
  const removeDir = onCleanup(async () => rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const config = makeConfig({ dir, port });
  const file = join(dir, 'nginx.conf');
  writeFileSync(file, config);
  const child = startChild(label, NGINX, ['-p', `${dir}/`, '-c', file, '-e', 'stderr', '-g', 'daemon off;'], {
    cwd: dir,
    env: process.env,
  });
  masters.add(child.pid);
  void child.exited.then(() => masters.delete(child.pid));
  const stop = async () => {
    await child.stop();
    await removeDir();
  };
  try {
    await waitForHttp(child, port, readyPath, 20_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { child, port, dir, config, pids: () => [child.pid, ...childrenOf(child.pid)], stop };
}

/** One rewritten site-specific directive: where, what it said, what it says now. */
export interface Rewrite {
  readonly line: number;
  readonly directive: string;
  readonly from: string;
  readonly to: string;
}

/** The directives deploy/cdn/nginx.conf marks site-specific, and what the benchmark needs there. */
export interface CdnSettings {
  readonly dir: string;
  readonly listenPort: number;
  readonly upstreamPort: number;
}

/** Each must be rewritten, or the shipped file has changed in a way this benchmark must follow. */
const REQUIRED = ['pid', 'error_log', 'client_body_temp_path', 'proxy_temp_path', 'proxy_cache_path', 'server', 'listen'];

/**
 * The shipped CDN configuration with only its site-specific directives changed: the first argument
 * of each marked statement (a statement may span lines; the marker sits on its last line) is
 * replaced, everything else is kept byte for byte. A marked directive it does not know, or a known
 * one missing, stops the run.
 */
export function rewriteCdnConfig(text: string, s: CdnSettings): { config: string; rewrites: Rewrite[] } {
  const targets: Record<string, string> = {
    pid: join(s.dir, 'nginx.pid'),
    error_log: 'stderr',
    proxy_cache_path: join(s.dir, 'cache'),
    server: `127.0.0.1:${s.upstreamPort}`,
    listen: `127.0.0.1:${s.listenPort}`,
  };
  const lines = text.split('\n');
  const code = (line: string) => line.replace(/#.*$/, '').trim();
  const rewrites: Rewrite[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (!(lines[i] as string).includes(SITE_SPECIFIC)) continue;
    let start = i;
    while (start > 0) {
      const before = code(lines[start - 1] as string);
      if (before === '' || /[;{}]$/.test(before)) break;
      start--;
    }
    const first = lines[start] as string;
    const m = /^(\s*)([a-z_]+)(\s+)([^\s;]+)/.exec(first);
    const directive = m?.[2] ?? '';
    // Any temp path (client_body_, proxy_, fastcgi_, uwsgi_, scgi_) goes under the folder.
    const target =
      targets[directive] ?? (directive.endsWith('_temp_path') ? join(s.dir, directive.replace(/_path$/, '').replace(/_/g, '-')) : undefined);
    if (!m || target === undefined) {
      throw new BenchError(`${CDN_CONFIG_FILE}:${i + 1}: a site-specific line the static benchmark does not know how to rewrite:\n${first}`);
    }
    const [whole, indent = '', , gap = '', from = ''] = m;
    lines[start] = `${indent}${directive}${gap}${target}${first.slice(whole.length)}`;
    rewrites.push({ line: start + 1, directive, from, to: target });
  }
  const missing = REQUIRED.filter((d) => !rewrites.some((r) => r.directive === d));
  if (missing.length > 0) {
    throw new BenchError(`${CDN_CONFIG_FILE}: no site-specific ${missing.join(', ')} line; the static benchmark needs to rewrite it`);
  }
  return { config: lines.join('\n'), rewrites };
}

export function readCdnConfig(): string {
  try {
    return readFileSync(CDN_CONFIG_FILE, 'utf8');
  } catch (err) {
    throw new BenchError(`cannot read ${CDN_CONFIG_FILE}: ${err instanceof Error ? err.message : String(err)}`);
  }
}
