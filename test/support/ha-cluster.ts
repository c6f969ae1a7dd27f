import { randomBytes } from 'node:crypto';
import { chownSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { freePort } from './cli.ts';
import { AS_ROOT, missingClusterTools, PG_BIN, PG_IDS } from './pg-cluster.ts';
import { adoptGroup, killGroup, registerCleanup, runProcess, spawnTracked, waitFor, type Spawned } from './processes.ts';

/**
 * A Patroni cluster of two PostgreSQL 15 nodes (a primary and a synchronous standby) with etcd as
 * its store and HAProxy in front, run from the shipped files in `deploy/ha/` with only their
 * `# site-specific` lines rewritten: every port to a free one of 127.0.0.1, every path into a
 * temporary folder, every password to a fresh one. Everything else (timeouts, synchronous mode,
 * health checks) is the shipped configuration, so the failover suite tests what is deployed.
 *
 * Patroni runs as the `postgres` OS user when the tests run as root, as pg-cluster.ts runs the
 * server tools. Patroni starts its postmaster in a session of its own, whose children each make
 * their own again, so a node's processes are not one group: `killNode` and the teardown kill the
 * postmaster and its children by pid, after Patroni's group. Everything is gone when the file
 * ends, even if afterAll never runs; the machine's own cluster and ports are never touched.
 */

/** The shipped configuration. */
export const HA_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '../../deploy/ha');

const ETCD = '/usr/bin/etcd';
const PATRONI = '/usr/bin/patroni';
const PATRONICTL = '/usr/bin/patronictl';
const HAPROXY = '/usr/sbin/haproxy';
const RUNUSER = '/usr/sbin/runuser';

/**
 * What this machine lacks to run `suite` on a Patroni cluster (empty when nothing): as
 * {@link missingClusterTools}, which fails the run with REQUIRE_SERVICES=1 and warns otherwise.
 */
export function missingHaTools(suite: string): string[] {
  return missingClusterTools(suite, [
    { path: join(PG_BIN, 'pg_basebackup') },
    { path: join(PG_BIN, 'pg_rewind') },
    { path: ETCD, hint: 'apt-get install etcd-server' },
    { path: PATRONI, hint: 'apt-get install patroni' },
    { path: PATRONICTL, hint: 'apt-get install patroni' },
    { path: HAPROXY, hint: 'apt-get install haproxy' },
  ]);
}

/** The ports the shipped files use, each replaced by a free port in a test run. */
const SHIPPED_PORTS = { etcdClient: 2379, etcdPeer: 2380, api1: 8008, api2: 8009, pg1: 5432, pg2: 5433, primary: 5000, replicas: 5001, stats: 7000 } as const;
type PortName = keyof typeof SHIPPED_PORTS;
export type Ports = Readonly<Record<PortName, number>>;

const MARK = '# site-specific';
const SHIPPED_PORT = new RegExp(`\\b(${Object.values(SHIPPED_PORTS).join('|')})\\b`, 'g');
/** Absolute paths of a deployment (data, sockets); the binaries' folders stay as shipped. */
const SITE_PATH = /(?<![\w:/.])\/(?:var|run|etc|srv)\/[^\s'",]*/g;
const SECRET = /change-me-[a-z]+/g;

/**
 * A shipped file with each `# site-specific` line rewritten: ports through `ports`, absolute
 * paths moved under `dir` (`/var/lib/x` → `<dir>/var/lib/x`), and each `change-me-*` password
 * replaced by its value in `secrets` (added there when new). Throws if a shipped port, path or
 * placeholder password is left on any line, so a site-specific value without the mark fails the
 * suite instead of pointing a test at a real port.
 */
export function renderShipped(source: string, dir: string, ports: Ports, secrets: Map<string, string>): string {
  const byShipped = new Map(Object.entries(SHIPPED_PORTS).map(([name, port]) => [String(port), ports[name as PortName]]));
  const lines = source.split('\n').map((line) => {
    const at = line.indexOf(MARK);
    if (at < 0) return line;
    const code = line
      .slice(0, at)
      .replace(SHIPPED_PORT, (p) => String(byShipped.get(p)))
      .replace(SITE_PATH, (path) => join(dir, path))
      .replace(SECRET, (placeholder) => {
        // Letters first: YAML would read a password of digits only as a number.
        if (!secrets.has(placeholder)) secrets.set(placeholder, `test${randomBytes(12).toString('hex')}`);
        return secrets.get(placeholder) as string;
      });
    return `${code}${line.slice(at)}`;
  });
  for (const line of lines) {
    const code = line.replace(/#.*$/, '');
    if (new RegExp(SHIPPED_PORT.source).test(code) || new RegExp(SITE_PATH.source).test(code) || /change-me-/.test(code)) {
      throw new Error(`deploy/ha: this line has a site-specific value but no "${MARK}" mark: ${line.trim()}`);
    }
  }
  return lines.join('\n');
}

/** The value of `key:` in a rendered Patroni file (the first one, comment removed). */
function setting(yaml: string, key: string): string {
  const value = new RegExp(`^\\s*${key}:\\s*([^#\\s]+)`, 'm').exec(yaml)?.[1];
  if (!value) throw new Error(`deploy/ha: no ${key} in the Patroni configuration`);
  return value;
}

/** Makes `folder` (inside `root`) and each folder between them, owned by the postgres OS user when we are root. */
function ownedFolder(root: string, folder: string): void {
  mkdirSync(folder, { recursive: true });
  for (let path = folder; path.startsWith(root); path = dirname(path)) {
    if (PG_IDS) chownSync(path, PG_IDS.uid, PG_IDS.gid);
  }
}

/** A node's parent pid and process group, from /proc; null when it is gone. */
function procStat(pid: number): { readonly ppid: number; readonly pgrp: number } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(fields[1]), pgrp: Number(fields[2]) };
  } catch {
    return null;
  }
}

function childrenOf(pid: number): number[] {
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .map(Number)
    .filter((child) => procStat(child)?.ppid === pid);
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

/** The postmaster's pid from the pid file of `dataDir`; null without one. */
function postmasterOf(dataDir: string): number | null {
  try {
    const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 && procStat(pid) !== null ? pid : null;
  } catch {
    return null;
  }
}

export interface HaNode {
  /** Patroni's member name: `node1`, `node2`. */
  readonly name: string;
  readonly pgPort: number;
  readonly apiPort: number;
  readonly dataDir: string;
  /** The rendered Patroni configuration (also `patronictl -c`). */
  readonly config: string;
}

/** A member as Patroni's `GET /cluster` lists it. */
export interface Member {
  readonly name: string;
  /** `leader`, `sync_standby`, `replica`, … */
  readonly role: string;
  /** `running`, `streaming` (3.0.4 and later), `starting`, `stopped`, … */
  readonly state: string;
  readonly timeline?: number;
  readonly lag?: number | string;
}

/** How long the cluster's steps may take on a loaded machine; each wait fails naming what it waited for. */
const START_MS = 120_000;
const WAIT_MS = 120_000;

export class HaCluster {
  private readonly patroni = new Map<string, Spawned>();
  private readonly adopted = new Set<number>();
  private haproxy: Spawned | null = null;
  private etcd: Spawned | null = null;
  private databaseRole: { readonly name: string; readonly password: string } | null = null;

  private constructor(
    readonly dir: string,
    readonly ports: Ports,
    readonly nodes: readonly HaNode[],
    private readonly secrets: ReadonlyMap<string, string>,
  ) {}

  /**
   * Renders deploy/ha into a new temporary folder, starts etcd, node1 (which creates the cluster
   * and becomes its leader), node2 (cloned from it) and HAProxy, and waits until node2 is node1's
   * streaming synchronous standby and HAProxy routes to both as their roles say. Everything is
   * killed when the file ends (call from a beforeAll).
   */
  static async start(): Promise<HaCluster> {
    const dir = mkdtempSync(join(tmpdir(), 'databank-ha-'));
    const taken = new Set<number>();
    while (taken.size < Object.keys(SHIPPED_PORTS).length) taken.add(await freePort());
    const ports = Object.fromEntries(Object.keys(SHIPPED_PORTS).map((name, i) => [name, [...taken][i]])) as Ports;
    const secrets = new Map<string, string>();
    const render = (file: string) => {
      const target = join(dir, file);
      writeFileSync(target, renderShipped(readFileSync(join(HA_DIR, file), 'utf8'), dir, ports, secrets), { mode: 0o600 });
      return target;
    };
    const nodes: HaNode[] = [1, 2].map((n) => {
      const config = render(`patroni-node${n}.yml`);
      const text = readFileSync(config, 'utf8');
      // Patroni (as postgres) makes the data directory; its parent and the sockets' folder must
      // exist and be the postgres OS user's, as on a Debian host.
      const dataDir = setting(text, 'data_dir');
      ownedFolder(dir, dirname(dataDir));
      ownedFolder(dir, setting(text, 'unix_socket_directories'));
      if (PG_IDS) chownSync(config, PG_IDS.uid, PG_IDS.gid);
      return { name: `node${n}`, pgPort: ports[`pg${n}` as PortName], apiPort: ports[`api${n}` as PortName], dataDir, config };
    });
    const cluster = new HaCluster(dir, ports, nodes, secrets);
    registerCleanup(() => cluster.stop(), 'file');

    cluster.etcd = spawnTracked(ETCD, ['--config-file', render('etcd.conf.yml')], { what: 'etcd', lifetime: 'file', cwd: dir });
    await waitFor(
      'etcd answers',
      async () => {
        cluster.mustRun(cluster.etcd, 'etcd');
        const health = await getJson<{ health?: string }>(`http://127.0.0.1:${ports.etcdClient}/health`);
        return health?.health === 'true';
      },
      { timeoutMs: START_MS, everyMs: 100 },
    );

    const [first, second] = nodes as [HaNode, HaNode];
    cluster.startNode(first.name);
    await cluster.waitForLeader(first.name);
    cluster.startNode(second.name);
    cluster.haproxy = spawnTracked(HAPROXY, ['-db', '-f', render('haproxy.cfg')], { what: 'haproxy', lifetime: 'file', cwd: dir });
    await cluster.waitHealthy(first.name);
    return cluster;
  }

  /** The password of the shipped placeholder `change-me-<what>` in this run. */
  secret(what: 'superuser' | 'replication' | 'rewind' | 'restapi'): string {
    const value = this.secrets.get(`change-me-${what}`);
    if (value === undefined) throw new Error(`deploy/ha has no change-me-${what} password`);
    return value;
  }

  node(name: string): HaNode {
    const node = this.nodes.find((n) => n.name === name);
    if (!node) throw new Error(`no node ${name}`);
    return node;
  }

  /** The other node of the two. */
  other(name: string): HaNode {
    return this.nodes.find((n) => n.name !== name) as HaNode;
  }

  /** A superuser connection string to `database` on `port` (HAProxy's or a node's own). */
  superuserUrl(port: number, database = 'postgres'): string {
    return `postgres://postgres:${this.secret('superuser')}@127.0.0.1:${port}/${database}`;
  }

  /** Starts (or restarts, after `killNode`) a node's Patroni; it rejoins as its configuration says. */
  startNode(name: string): void {
    const node = this.node(name);
    if (this.patroni.get(name)?.running()) throw new Error(`patroni ${name} is already running`);
    const [file, args] = AS_ROOT ? [RUNUSER, ['-u', 'postgres', '--', PATRONI, node.config]] : [PATRONI, [node.config]];
    this.patroni.set(name, spawnTracked(file, args, { what: `patroni ${name}`, lifetime: 'file', cwd: this.dir }));
  }

  /** Starts the Patroni of every node that is not running (a node killed earlier rejoins). */
  ensureRunning(): void {
    for (const node of this.nodes) if (!this.patroni.get(node.name)?.running()) this.startNode(node.name);
  }

  /** The node holding the leader lock, as Patroni lists it; null when none does. */
  async leader(): Promise<string | null> {
    return (await this.members()).find((m) => m.role === 'leader')?.name ?? null;
  }

  /**
   * The whole node fails at once, as its host would: Patroni's group, the postmaster and every
   * child of it get SIGKILL together (the postmaster is stopped first so that it starts no new
   * child meanwhile). Resolves, once they are all gone, with the time the kill began.
   */
  async killNode(name: string): Promise<number> {
    const node = this.node(name);
    const patroni = this.mustRun(this.patroni.get(name) ?? null, `patroni ${name}`);
    const killedAt = Date.now();
    const postmaster = postmasterOf(node.dataDir);
    if (postmaster !== null) signal(postmaster, 'SIGSTOP');
    const children = postmaster === null ? [] : childrenOf(postmaster);
    killGroup(patroni.pid);
    const victims = postmaster === null ? [] : [postmaster, ...children];
    for (const pid of victims) signal(pid, 'SIGKILL');
    await patroni.exited;
    await waitFor(`the processes of ${name} (${victims.join(', ')}) are gone`, () => victims.every((pid) => procStat(pid) === null), {
      timeoutMs: 30_000,
    });
    return killedAt;
  }

  /** `patronictl switchover` to `candidate`, as the runbook does it; resolves when it returns. */
  async switchover(candidate: string): Promise<string> {
    const leader = this.other(candidate);
    const { stdout } = await runProcess(
      PATRONICTL,
      ['-c', leader.config, 'switchover', '--leader', leader.name, '--candidate', candidate, '--force'],
      { timeoutMs: WAIT_MS, check: true, what: `patronictl switchover to ${candidate}`, cwd: this.dir },
    );
    return stdout;
  }

  /** The members as the first node that answers lists them; [] when none does. */
  async members(): Promise<Member[]> {
    for (const node of this.nodes) {
      const cluster = await getJson<{ members?: Member[] }>(`http://127.0.0.1:${node.apiPort}/cluster`);
      if (cluster?.members) return cluster.members;
    }
    return [];
  }

  /** Waits until `name` holds the leader lock and its Patroni says it runs as the primary. */
  async waitForLeader(name: string, timeoutMs = WAIT_MS): Promise<void> {
    const node = this.node(name);
    await waitFor(
      `${name} is the primary`,
      async () => {
        this.mustRun(this.patroni.get(name) ?? null, `patroni ${name}`);
        this.adoptPostmasters();
        return (await status(`http://127.0.0.1:${node.apiPort}/primary`)) === 200;
      },
      { timeoutMs, everyMs: 100 },
    );
  }

  /**
   * Waits until `leader` is the primary, the other node its streaming synchronous standby
   * (both in Patroni's view and in pg_stat_replication) and HAProxy sends primary connections to
   * the leader only and replica connections to the standby only.
   */
  async waitHealthy(leader: string, timeoutMs = WAIT_MS): Promise<void> {
    const standby = this.other(leader).name;
    let last = '';
    try {
      await waitFor(
        `${leader} is the primary with ${standby} as its synchronous standby, and HAProxy routes to them`,
        async () => {
          for (const name of [leader, standby]) this.mustRun(this.patroni.get(name) ?? null, `patroni ${name}`);
          this.mustRun(this.haproxy, 'haproxy');
          this.adoptPostmasters();
          const members = await this.members();
          const routes = await this.haproxyRoutes();
          const replication = await this.replication(leader);
          last = JSON.stringify({ members, routes, replication });
          const role = (name: string) => members.find((m) => m.name === name);
          return (
            role(leader)?.role === 'leader' &&
            role(leader)?.state === 'running' &&
            role(standby)?.role === 'sync_standby' &&
            ['running', 'streaming'].includes(role(standby)?.state ?? '') &&
            replication.some((r) => r.application_name === standby && r.state === 'streaming' && r.sync_state === 'sync') &&
            routes.get(`primary/${leader}`) === 'UP' &&
            routes.get(`primary/${standby}`) === 'DOWN' &&
            routes.get(`replicas/${standby}`) === 'UP' &&
            routes.get(`replicas/${leader}`) === 'DOWN'
          );
        },
        { timeoutMs, everyMs: 200 },
      );
    } catch (err) {
      throw new Error(`${(err as Error).message}; last seen: ${last}\n${this.logs()}`, { cause: err });
    }
  }

  /** HAProxy's view: `primary/node1` → `UP`, `DOWN`, `DOWN 1/2`, … from its stats page. */
  async haproxyRoutes(): Promise<Map<string, string>> {
    const routes = new Map<string, string>();
    try {
      const res = await fetch(`http://127.0.0.1:${this.ports.stats}/;csv`, { signal: AbortSignal.timeout(2_000) });
      const [header, ...rows] = (await res.text()).trim().split('\n');
      const columns = (header ?? '').replace(/^# /, '').split(',');
      const [px, sv, st] = ['pxname', 'svname', 'status'].map((c) => columns.indexOf(c));
      for (const row of rows) {
        const cells = row.split(',');
        routes.set(`${cells[px as number]}/${cells[sv as number]}`, cells[st as number] ?? '');
      }
    } catch {
      // Not answering yet: no routes.
    }
    return routes;
  }

  /** `pg_stat_replication` on a node, straight to its port; [] when it does not answer. */
  async replication(name: string): Promise<Array<{ application_name: string; state: string; sync_state: string }>> {
    try {
      return await this.query(this.node(name).pgPort, 'postgres', 'select application_name, state, sync_state from pg_stat_replication');
    } catch {
      return [];
    }
  }

  /** Runs one statement as the superuser on `port` (a node's own, or HAProxy's). */
  async query<T>(port: number, database: string, text: string, values: unknown[] = []): Promise<T[]> {
    const client = new pg.Client({ connectionString: this.superuserUrl(port, database), connectionTimeoutMillis: 3_000 });
    try {
      await client.connect();
      return (await client.query(text, values)).rows as T[];
    } finally {
      await client.end().catch(() => undefined);
    }
  }

  /**
   * A new database owned by the application's own role (made on first use, with a password, as
   * deploy/ha/README.md does), created through HAProxy's primary port. Resolves with the
   * connection string through HAProxy, the one databank gets as DATABASE_URL.
   */
  async createDatabase(name: string): Promise<string> {
    if (!this.databaseRole) {
      const role = { name: 'databank', password: randomBytes(12).toString('hex') };
      await this.query(this.ports.primary, 'postgres', `create role ${role.name} login password '${role.password}'`);
      this.databaseRole = role;
    }
    await this.query(this.ports.primary, 'postgres', `create database ${name} owner ${this.databaseRole.name}`);
    return this.appUrl(this.ports.primary, name);
  }

  /** The application role's connection string to `database` on `port`. */
  appUrl(port: number, database: string): string {
    if (!this.databaseRole) throw new Error('no database made yet');
    return `postgres://${this.databaseRole.name}:${this.databaseRole.password}@127.0.0.1:${port}/${database}`;
  }

  /** The last lines each process printed, for failure messages. */
  logs(lines = 40): string {
    const tail = (what: string, proc: Spawned | null | undefined) =>
      `--- ${what}${proc?.running() === false ? ' (exited)' : ''}\n${(proc?.output() ?? '(not started)').split('\n').slice(-lines).join('\n')}`;
    return [
      tail('etcd', this.etcd),
      ...this.nodes.map((n) => tail(`patroni ${n.name}`, this.patroni.get(n.name))),
      tail('haproxy', this.haproxy),
    ].join('\n');
  }

  /** Kills everything: HAProxy, each Patroni, then each postmaster and its children, then etcd; removes the folder. */
  async stop(): Promise<void> {
    await this.haproxy?.kill();
    for (const proc of this.patroni.values()) await proc.kill();
    for (const node of this.nodes) {
      const postmaster = postmasterOf(node.dataDir);
      if (postmaster === null) continue;
      signal(postmaster, 'SIGSTOP');
      const victims = [postmaster, ...childrenOf(postmaster)];
      for (const pid of victims) signal(pid, 'SIGKILL');
      await waitFor(`the processes of ${node.name} are gone`, () => victims.every((pid) => procStat(pid) === null), { timeoutMs: 30_000 });
    }
    await this.etcd?.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /**
   * Patroni's postmasters are no children of ours: each one's group is adopted as soon as it is
   * seen, so that it is killed even if the test process exits without running the teardown
   * (the children then exit on their own when they find their postmaster gone).
   */
  private adoptPostmasters(): void {
    for (const node of this.nodes) {
      const pid = postmasterOf(node.dataDir);
      const group = pid === null ? null : (procStat(pid)?.pgrp ?? null);
      if (group !== null && group > 1 && !this.adopted.has(group)) {
        this.adopted.add(group);
        adoptGroup(group, 'file');
      }
    }
  }

  private mustRun(proc: Spawned | null, what: string): Spawned {
    if (!proc?.running()) throw new Error(`${what} is not running:\n${proc?.output() ?? '(never started)'}\n${this.logs()}`);
    return proc;
  }
}

/** The HTTP status of `OPTIONS url` (how HAProxy checks a node), 0 when nothing answers. */
async function status(url: string): Promise<number> {
  try {
    const res = await fetch(url, { method: 'OPTIONS', signal: AbortSignal.timeout(2_000) });
    await res.arrayBuffer();
    return res.status;
  } catch {
    return 0;
  }
}

async function getJson<T>(url: string): Promise<T | null> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
    return res.ok ? ((await res.json()) as T) : null;
  } catch {
    return null;
  }
}
