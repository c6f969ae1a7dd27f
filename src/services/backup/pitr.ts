import { spawn } from 'node:child_process';
import { accessSync, chownSync, constants, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';

/**
 * Point-in-time recovery of a PostgreSQL server with pgBackRest (the Debian package `pgbackrest`):
 * the server archives every WAL segment into an encrypted repository, pgBackRest takes base
 * backups into it, and a restore replays a backup plus WAL up to a chosen moment into a new data
 * directory. Every tool runs as the OS user that owns the cluster (`asUser`), because PostgreSQL
 * and pgBackRest refuse to work on files that belong to someone else.
 */

/** Where Debian installs the tools; an absolute path also keeps `archive_command` independent of PATH. */
export const PGBACKREST = '/usr/bin/pgbackrest';
const RUNUSER = '/usr/sbin/runuser';
const ID = '/usr/bin/id';

/** What every pgBackRest command needs: which configuration and stanza, and as whom. */
export interface PitrRunOptions {
  readonly stanza: string;
  /** The pgbackrest.conf that `pitrSetup` wrote. */
  readonly configPath: string;
  /** The OS user that owns the cluster; tools run as this user through runuser (which needs root). */
  readonly asUser?: string;
  /** The pgbackrest executable; default {@link PGBACKREST}. */
  readonly binary?: string;
  /** Kill a command that runs longer than this; default none, a full backup of a large cluster takes hours. */
  readonly timeoutMs?: number;
  /** Receives pgBackRest's console lines (at level info) as they come. */
  readonly onProgress?: (line: string) => void;
}

/** An S3 repository; `prefix` is the folder inside the bucket (default the bucket's root). */
export interface PitrS3Repo {
  readonly bucket: string;
  readonly endpoint: string;
  readonly region: string;
  readonly key: string;
  readonly secret: string;
  readonly verifyTls: boolean;
  readonly caFile?: string;
  /** `https://endpoint/bucket/...` instead of `https://bucket.endpoint/...` (MinIO, s3rver). */
  readonly pathStyle?: boolean;
  readonly prefix?: string;
}

export interface PitrSetupOptions extends PitrRunOptions {
  readonly pgDataDir: string;
  readonly pgPort: number;
  readonly pgSocketDir?: string;
  readonly pgUser?: string;
  /** A directory repository; give this or `s3`, not both. */
  readonly repoPath?: string;
  readonly s3?: PitrS3Repo;
  /** Encrypts the repository (aes-256-cbc); without it a backup cannot be read. */
  readonly cipherPass: string;
  /** Default pgBackRest's own, /var/log/pgbackrest. */
  readonly logPath?: string;
  /** Default pgBackRest's own, /tmp/pgbackrest. */
  readonly lockPath?: string;
  /** How many full backups (with the WAL they need) the repository keeps; default 2. */
  readonly retentionFull?: number;
  /**
   * Default `zst`: Debian's pgBackRest 2.45 is built with libzstd. A build without it rejects
   * `zst` at the first backup; use `gz` there.
   */
  readonly compressType?: 'zst' | 'gz';
}

export interface PitrRestoreOptions extends PitrRunOptions {
  /** The moment to recover to, with a zone: `2026-12-01T09:30:00Z`, `2026-12-01 09:30:00.123456+01`. */
  readonly time: string;
  /** A new data directory; created when missing, and refused when it holds anything unless `force`. */
  readonly toDir: string;
  /**
   * Restore into a non-empty `toDir`: a delta restore over an old data dir (pgBackRest refuses
   * one that a running server uses), else whatever `toDir` holds is deleted first.
   */
  readonly force?: boolean;
}

/** How a command ended; the runner never rejects for a non-zero exit, only for a failed spawn. */
export interface CommandResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

/** Runs `file args` without a shell; tests pass one that records calls. */
export type CommandRunner = (
  file: string,
  args: readonly string[],
  options: { readonly timeoutMs?: number; readonly onLine?: (line: string) => void },
) => Promise<CommandResult>;

/** A pgBackRest (or helper) command that failed; `output` holds what it printed. */
export class PitrCommandError extends Error {
  readonly command: string;
  readonly exitCode: number | null;
  readonly output: string;

  constructor(command: string, result: CommandResult, timeoutMs: number | undefined) {
    const output = `${result.stderr}${result.stdout}`.trim();
    const how = result.timedOut
      ? `did not finish within ${timeoutMs} ms and was killed`
      : `failed (${result.code === null ? `signal ${result.signal}` : `exit code ${result.code}`})`;
    // An encrypted repository read with the wrong pass decrypts to garbage, which pgBackRest
    // reports only as an info file it cannot parse.
    const hint = /unable to load info file/.test(output)
      ? ' (the repository could not be read: check repo1-cipher-pass, and that stanza-create ran)'
      : /unable to find backup set with stop time less than/.test(output)
        ? ' (no backup ended before the target time; pgBackRest compares whole seconds)'
        : '';
    super(`${command} ${how}${hint}${output ? `:\n${output}` : ''}`);
    this.name = 'PitrCommandError';
    this.command = command;
    this.exitCode = result.code;
    this.output = output;
  }
}

/**
 * The default runner: `spawn` with an argument array, in a process group of its own so that a
 * deadline kills runuser and pgBackRest together (SIGKILL to one of them would orphan the other).
 */
export const spawnCommand: CommandRunner = (file, args, { timeoutMs, onLine } = {}) =>
  new Promise((resolvePromise, reject) => {
    const child = spawn(file, [...args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true, cwd: '/' });
    const text = { stdout: '', stderr: '' };
    const pending = { stdout: '', stderr: '' };
    let timedOut = false;
    for (const stream of ['stdout', 'stderr'] as const) {
      child[stream].setEncoding('utf8');
      child[stream].on('data', (chunk: string) => {
        text[stream] += chunk;
        if (!onLine) return;
        const parts = (pending[stream] + chunk).split('\n');
        pending[stream] = parts.pop() ?? '';
        for (const line of parts) if (line.trim() !== '') onLine(line);
      });
    }
    const timer =
      timeoutMs === undefined
        ? null
        : setTimeout(() => {
            timedOut = true;
            try {
              if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
            } catch {
              // Already gone.
            }
          }, timeoutMs);
    child.once('error', (err) => {
      if (timer) clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      for (const rest of [pending.stdout, pending.stderr]) if (onLine && rest.trim() !== '') onLine(rest);
      resolvePromise({ code, signal, stdout: text.stdout, stderr: text.stderr, timedOut });
    });
  });

const STANZA = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

/** A value for pgbackrest.conf: one line, nothing the INI parser would trim or split on. */
function confValue(name: string, value: string): string {
  if (value === '' || /[\r\n\0]/.test(value) || value.trim() !== value) {
    throw new Error(`pitr setup: ${name} must be one line of text without leading or trailing spaces`);
  }
  return value;
}

function absolutePath(name: string, value: string): string {
  if (!isAbsolute(value)) throw new Error(`pitr setup: ${name} must be an absolute path, not "${value}"`);
  return confValue(name, value);
}

function checkStanza(stanza: string): void {
  if (!STANZA.test(stanza)) {
    throw new Error(`pitr: stanza "${stanza}" must be letters, digits, '_', '.' or '-', starting with a letter or digit`);
  }
}

/** Quotes one word for /bin/sh, which runs `archive_command`. */
function shellWord(word: string): string {
  return /^[A-Za-z0-9_./,:@+=-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** A string setting for postgresql.conf, in the form ALTER SYSTEM writes. */
function pgString(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/**
 * The two texts PITR needs: pgbackrest.conf, and the settings that make PostgreSQL archive WAL
 * through pgBackRest. Pure: it reads nothing and throws on options pgBackRest would refuse.
 *
 * @example
 * const { pgbackrestConf } = pitrConfig({ stanza: 'bank', pgDataDir: '/var/lib/postgresql/15/main',
 *   pgPort: 5432, repoPath: '/var/lib/pgbackrest', cipherPass, configPath: '/etc/pgbackrest/bank.conf' });
 */
export function pitrConfig(o: PitrSetupOptions): { pgbackrestConf: string; postgresqlConf: string } {
  checkStanza(o.stanza);
  if ((o.repoPath === undefined) === (o.s3 === undefined)) {
    throw new Error('pitr setup: give exactly one repository, repoPath (a directory) or s3');
  }
  if (!Number.isInteger(o.pgPort) || o.pgPort < 1 || o.pgPort > 65535) {
    throw new Error(`pitr setup: pgPort must be a TCP port, not ${o.pgPort}`);
  }
  const retention = o.retentionFull ?? 2;
  if (!Number.isInteger(retention) || retention < 1) {
    throw new Error(`pitr setup: retentionFull must be a whole number of at least 1, not ${retention}`);
  }
  const configPath = absolutePath('configPath', o.configPath);
  const binary = absolutePath('binary', o.binary ?? PGBACKREST);

  const global: string[] = [];
  if (o.repoPath !== undefined) {
    global.push(`repo1-path=${absolutePath('repoPath', o.repoPath)}`);
  } else if (o.s3) {
    const s3 = o.s3;
    const prefix = s3.prefix === undefined ? '/' : `/${s3.prefix.replace(/^\/+|\/+$/g, '')}`;
    global.push(
      'repo1-type=s3',
      `repo1-path=${confValue('s3.prefix', prefix)}`,
      `repo1-s3-bucket=${confValue('s3.bucket', s3.bucket)}`,
      `repo1-s3-endpoint=${confValue('s3.endpoint', s3.endpoint)}`,
      `repo1-s3-region=${confValue('s3.region', s3.region)}`,
      `repo1-s3-key=${confValue('s3.key', s3.key)}`,
      `repo1-s3-key-secret=${confValue('s3.secret', s3.secret)}`,
      `repo1-s3-uri-style=${s3.pathStyle ? 'path' : 'host'}`,
      `repo1-storage-verify-tls=${s3.verifyTls ? 'y' : 'n'}`,
    );
    if (s3.caFile !== undefined) global.push(`repo1-storage-ca-file=${absolutePath('s3.caFile', s3.caFile)}`);
  }
  global.push(
    'repo1-cipher-type=aes-256-cbc',
    `repo1-cipher-pass=${confValue('cipherPass', o.cipherPass)}`,
    `repo1-retention-full=${retention}`,
    `compress-type=${o.compressType ?? 'zst'}`,
    'start-fast=y',
    'log-level-console=warn',
    'log-level-file=info',
  );
  if (o.logPath !== undefined) global.push(`log-path=${absolutePath('logPath', o.logPath)}`);
  if (o.lockPath !== undefined) global.push(`lock-path=${absolutePath('lockPath', o.lockPath)}`);

  const stanza = [`pg1-path=${absolutePath('pgDataDir', o.pgDataDir)}`, `pg1-port=${o.pgPort}`];
  if (o.pgSocketDir !== undefined) stanza.push(`pg1-socket-path=${absolutePath('pgSocketDir', o.pgSocketDir)}`);
  if (o.pgUser !== undefined) stanza.push(`pg1-user=${confValue('pgUser', o.pgUser)}`);

  // PostgreSQL expands %p, %f and %% in archive_command before the shell sees it.
  const archiveCommand = [shellWord(binary), shellWord(`--config=${configPath}`)]
    .map((word) => word.replace(/%/g, '%%'))
    .concat(`--stanza=${o.stanza}`, 'archive-push', '%p')
    .join(' ');
  return {
    pgbackrestConf: `[global]\n${global.join('\n')}\n\n[${o.stanza}]\n${stanza.join('\n')}\n`,
    postgresqlConf: [
      `archive_mode = ${pgString('on')}`,
      `archive_command = ${pgString(archiveCommand)}`,
      `wal_level = ${pgString('replica')}`,
      '',
    ].join('\n'),
  };
}

/** The uid and gid files must get so that `asUser` can use them; null when no switch is needed. */
interface Owner {
  readonly user: string;
  readonly uid: number;
  readonly gid: number;
}

async function ownerFor(asUser: string | undefined, run: CommandRunner): Promise<Owner | null> {
  if (asUser === undefined || asUser === userInfo().username) return null;
  if (process.getuid?.() !== 0) {
    throw new Error(`pitr: running tools as "${asUser}" needs root (runuser); run as "${asUser}" instead`);
  }
  const id = async (flag: string) => {
    const result = await run(ID, [flag, asUser], { timeoutMs: 10_000 });
    if (result.code !== 0) throw new PitrCommandError(`id ${flag} ${asUser}`, result, 10_000);
    return Number(result.stdout.trim());
  };
  return { user: asUser, uid: await id('-u'), gid: await id('-g') };
}

function requireExecutable(path: string, debianPackage: string): void {
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new Error(`${path} is missing or not executable: install the Debian package ${debianPackage}`);
  }
}

/** Writes `text` to `path` atomically with `mode`, owned by `owner` when given. */
function writeOwned(path: string, text: string, mode: number, owner: { uid: number; gid: number } | null): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text, { mode });
  if (owner) chownSync(tmp, owner.uid, owner.gid);
  renameSync(tmp, path);
}

/** Runs one pgBackRest command as the cluster's owner; rejects with its output on failure. */
async function pgbackrest(o: PitrRunOptions, owner: Owner | null, args: readonly string[], run: CommandRunner): Promise<string> {
  const binary = o.binary ?? PGBACKREST;
  requireExecutable(binary, 'pgbackrest');
  const command = args[args.length - 1] ?? '';
  const full = [
    `--config=${resolve(o.configPath)}`,
    `--stanza=${o.stanza}`,
    ...(o.onProgress ? ['--log-level-console=info'] : []),
    ...args,
  ];
  const [file, argv] = owner ? [RUNUSER, ['-u', owner.user, '--', binary, ...full]] : [binary, full];
  if (owner) requireExecutable(RUNUSER, 'util-linux');
  let result: CommandResult;
  try {
    result = await run(file, argv, { timeoutMs: o.timeoutMs, onLine: o.onProgress });
  } catch (err) {
    throw new Error(`pgbackrest ${command} could not start: ${(err as Error).message}`, { cause: err });
  }
  if (result.code !== 0 || result.timedOut) throw new PitrCommandError(`pgbackrest ${command}`, result, o.timeoutMs);
  return result.stdout;
}

/** Marks the block in postgresql.auto.conf; ALTER SYSTEM drops comments but keeps the settings. */
const BLOCK_MARK = '# point-in-time recovery: WAL archiving through pgBackRest';
const BLOCK_SETTING = /^\s*(archive_mode|archive_command|wal_level)\s*=/;

/**
 * Writes pgbackrest.conf (mode 0600: it holds the cipher pass) and sets WAL archiving in
 * `<pgDataDir>/postgresql.auto.conf`, which PostgreSQL reads last and which lives in the data
 * dir on Debian clusters and plain initdb ones alike. Earlier archiving settings there are
 * replaced, so running it again is harmless. `archive_mode` only changes at a restart:
 * `restartNeeded` says whether the file changed, and the server must then be restarted before
 * {@link pitrInit}.
 */
export async function pitrSetup(
  o: PitrSetupOptions,
  run: CommandRunner = spawnCommand,
): Promise<{ configPath: string; restartNeeded: boolean }> {
  const { postgresqlConf } = pitrConfig(o);
  const owner = await ownerFor(o.asUser, run);
  const configPath = writeConfigFile(o, owner);

  const autoConf = join(o.pgDataDir, 'postgresql.auto.conf');
  const before = existsSync(autoConf)
    ? readFileSync(autoConf, 'utf8')
    : '# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n';
  const kept = before.split('\n').filter((line) => line !== BLOCK_MARK && !BLOCK_SETTING.test(line));
  while (kept.length > 0 && kept[kept.length - 1] === '') kept.pop();
  const after = `${kept.join('\n')}\n${BLOCK_MARK}\n${postgresqlConf}`;
  const settings = (text: string) => text.split('\n').filter((line) => BLOCK_SETTING.test(line)).join('\n');
  const restartNeeded = settings(before) !== settings(after);
  if (after !== before) {
    const stat = statSync(existsSync(autoConf) ? autoConf : o.pgDataDir);
    writeOwned(autoConf, after, 0o600, owner ? { uid: stat.uid, gid: stat.gid } : null);
  }
  return { configPath, restartNeeded };
}

/**
 * Writes only pgbackrest.conf (mode 0600), for a host that restores but never archives; returns
 * its absolute path. The file is given to `asUser` so that pgBackRest, running as that user, can
 * read it.
 */
export async function writePitrConfig(o: PitrSetupOptions, run: CommandRunner = spawnCommand): Promise<string> {
  return writeConfigFile(o, await ownerFor(o.asUser, run));
}

function writeConfigFile(o: PitrSetupOptions, owner: Owner | null): string {
  const { pgbackrestConf } = pitrConfig(o);
  const configPath = resolve(o.configPath);
  mkdirOwned(dirname(configPath), owner);
  // pgBackRest creates its repository and lock folders, but not its log folder.
  if (o.logPath !== undefined) mkdirOwned(o.logPath, owner);
  writeOwned(configPath, pgbackrestConf, 0o600, owner);
  return configPath;
}

/** Creates `dir` and its missing parents (0750), each one given to `owner`. */
function mkdirOwned(dir: string, owner: Owner | null): void {
  if (existsSync(dir)) return;
  mkdirOwned(dirname(dir), owner);
  mkdirSync(dir, { mode: 0o750 });
  if (owner) chownSync(dir, owner.uid, owner.gid);
}

/** A backup that pgBackRest finished. */
export interface PitrBackupResult {
  /** pgBackRest's name for it: `20261201-093000F`, `..._20261202-093000I`. */
  readonly label: string;
  /**
   * When it ended, in whole seconds as pgBackRest records it: pgBackRest restores from this
   * backup only to targets in a later second.
   */
  readonly stoppedAt: Date;
}

/**
 * Creates the stanza in the repository, checks that the running server archives into it, and
 * takes the first full backup. The server must already run with the settings {@link pitrSetup} wrote.
 */
export async function pitrInit(o: PitrRunOptions, run: CommandRunner = spawnCommand): Promise<PitrBackupResult> {
  checkStanza(o.stanza);
  const owner = await ownerFor(o.asUser, run);
  await pgbackrest(o, owner, ['stanza-create'], run);
  await pgbackrest(o, owner, ['check'], run);
  return backup(o, owner, 'full', run);
}

/** Takes a backup; `diff` and `incr` build on the latest full (and, for `incr`, any later) backup. */
export async function pitrBackup(
  o: PitrRunOptions,
  type: 'full' | 'diff' | 'incr',
  run: CommandRunner = spawnCommand,
): Promise<PitrBackupResult> {
  checkStanza(o.stanza);
  return backup(o, await ownerFor(o.asUser, run), type, run);
}

async function backup(o: PitrRunOptions, owner: Owner | null, type: string, run: CommandRunner): Promise<PitrBackupResult> {
  await pgbackrest(o, owner, [`--type=${type}`, 'backup'], run);
  const info = await pgbackrest({ ...o, onProgress: undefined }, owner, ['--output=json', 'info'], run);
  const stanzas = JSON.parse(info) as { name: string; backup?: { label: string; timestamp: { stop: number } }[] }[];
  const latest = stanzas.find((s) => s.name === o.stanza)?.backup?.at(-1);
  if (latest === undefined) throw new Error(`pgbackrest info lists no backup for stanza "${o.stanza}" after a backup`);
  return { label: latest.label, stoppedAt: new Date(latest.timestamp.stop * 1000) };
}

const TIME = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?(Z|[+-]\d{2}(?::?\d{2})?)$/;

/**
 * Checks a recovery time and writes it the way PostgreSQL and pgBackRest both read it
 * (`YYYY-MM-DD HH:MM:SS[.ffffff]+HH:MM`). A zone is required: without one the server's own
 * time zone would decide which transactions come back.
 */
export function parsePitrTime(time: string): string {
  const m = TIME.exec(time);
  const fail = () =>
    new Error(
      `invalid recovery time "${time}": expected an ISO 8601 or PostgreSQL timestamp with a zone, ` +
        'such as 2026-12-01T09:30:00Z or 2026-12-01 09:30:00.123456+01:00',
    );
  if (!m) throw fail();
  const [, y, mo, d, h, mi, s, frac = '', zone = 'Z'] = m;
  const [year, month, day, hour, minute, second] = [y, mo, d, h, mi, s].map(Number) as [number, number, number, number, number, number];
  const date = new Date(Date.UTC(year, month - 1, day));
  if (date.getUTCFullYear() !== year || date.getUTCMonth() !== month - 1 || date.getUTCDate() !== day) throw fail();
  if (hour > 23 || minute > 59 || second > 59) throw fail();
  let offset = '+00:00';
  if (zone !== 'Z') {
    const digits = zone.slice(1).replace(':', '');
    const zh = Number(digits.slice(0, 2));
    const zm = digits.length > 2 ? Number(digits.slice(2)) : 0;
    if (zh > 15 || zm > 59) throw fail();
    offset = `${zone[0]}${digits.slice(0, 2)}:${String(zm).padStart(2, '0')}`;
  }
  return `${y}-${mo}-${d} ${h}:${mi}:${s}${frac}${offset}`;
}

/**
 * Restores the latest backup taken before `time` into `toDir` and replays WAL up to `time`; the
 * copy promotes itself when it reaches it. The copy does not archive (`--archive-mode=off`), so
 * starting it cannot push WAL into the stanza it came from. Its postgresql.conf is the source's,
 * port included: start it on another port (`pg_ctl -o "-p 5433"`) beside a running source.
 *
 * pgBackRest picks the backup by whole seconds: a target in the second a backup ended (see
 * {@link PitrBackupResult.stoppedAt}) is served by an earlier backup, or refused when there is none.
 */
export async function pitrRestore(
  o: PitrRestoreOptions,
  run: CommandRunner = spawnCommand,
): Promise<{ toDir: string; target: string }> {
  const target = parsePitrTime(o.time);
  checkStanza(o.stanza);
  const toDir = resolve(o.toDir);
  const existing = existsSync(toDir) ? readdirSync(toDir) : null;
  if (existing !== null && existing.length > 0 && !o.force) {
    throw new Error(`pitr restore: ${toDir} is not empty; restore into a new directory, or pass force to overwrite it`);
  }
  const owner = await ownerFor(o.asUser, run);
  requireExecutable(o.binary ?? PGBACKREST, 'pgbackrest');
  if (existing === null) {
    mkdirSync(toDir, { recursive: true, mode: 0o700 });
    if (owner) chownSync(toDir, owner.uid, owner.gid);
  }
  // Over an old data dir a delta restore rewrites only what differs. pgBackRest refuses to write
  // into any other non-empty dir, even with --force, so a forced restore empties it first.
  const dataDir = existing !== null && (existing.includes('PG_VERSION') || existing.includes('backup.manifest'));
  if (existing !== null && existing.length > 0 && !dataDir) {
    for (const name of existing) rmSync(join(toDir, name), { recursive: true, force: true });
  }
  const overwrite = dataDir ? ['--delta'] : [];
  await pgbackrest(
    o,
    owner,
    [
      `--pg1-path=${toDir}`,
      '--type=time',
      `--target=${target}`,
      '--target-action=promote',
      '--archive-mode=off',
      ...overwrite,
      'restore',
    ],
    run,
  );
  return { toDir, target };
}
