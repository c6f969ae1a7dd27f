import { EARLIEST_BIRTH_DATE } from './dates.ts';

/** A place in a document where it does not match what its reader expects. */
export interface Problem {
  /** A JSON Pointer into the body (RFC 6901): `/date_of_birth`, `/address/city`, `` for the whole. */
  readonly path: string;
  readonly message: string;
}

export type JsonObject = Record<string, unknown>;

/** Collection names: free-form, but a name a URL, a facet and a log line all carry unchanged. */
export const COLLECTION_NAME = '^[a-z][a-z0-9_-]{0,62}$';

/**
 * A typed reader of one collection: schema-on-read. It checks a document as it is read and says
 * what does not match, instead of failing on it: documents written before a rule existed, or by a
 * writer with another idea of the shape (the chapter's `birth_date` for `date_of_birth`), stay
 * readable, and their problems are reported with them.
 */
export type DocumentReader = (body: JsonObject) => Problem[];

/**
 * The chapter's customer profile `{name, date_of_birth, balance}`. Written with `birth_date`
 * instead, a schemaless store accepts it and a reader expecting `date_of_birth` breaks later: this
 * reader reports it, and names the field that looks like the one it missed.
 */
export function readProfile(body: JsonObject): Problem[] {
  const problems: Problem[] = [];
  if (!('name' in body)) problems.push(missing('name', body));
  else if (typeof body.name !== 'string' || body.name.trim() === '') problems.push({ path: '/name', message: 'must be a non-empty string' });
  if (!('date_of_birth' in body)) problems.push(missing('date_of_birth', body));
  else if (typeof body.date_of_birth !== 'string' || !isRealDate(body.date_of_birth)) {
    problems.push({ path: '/date_of_birth', message: 'must be a date YYYY-MM-DD' });
  } else if (body.date_of_birth < EARLIEST_BIRTH_DATE) {
    problems.push({ path: '/date_of_birth', message: `must be on or after ${EARLIEST_BIRTH_DATE}` });
  }
  if ('balance' in body && !Number.isSafeInteger(body.balance)) {
    problems.push({ path: '/balance', message: 'must be an integer (minor units)' });
  }
  return problems;
}

/** Support tickets: a subject, and a status that moves through a fixed set of states. */
export function readTicket(body: JsonObject): Problem[] {
  const problems: Problem[] = [];
  if (!('subject' in body)) problems.push(missing('subject', body));
  else if (typeof body.subject !== 'string' || body.subject.trim() === '') problems.push({ path: '/subject', message: 'must be a non-empty string' });
  if (!('status' in body)) problems.push(missing('status', body));
  else if (!TICKET_STATUSES.includes(body.status as string)) {
    problems.push({ path: '/status', message: `must be one of ${TICKET_STATUSES.join(', ')}` });
  }
  return problems;
}

const TICKET_STATUSES = ['open', 'pending', 'closed'];

/** The built-in typed readers, by collection. Other collections are read as they are. */
export const READERS: Readonly<Record<string, DocumentReader>> = {
  profiles: readProfile,
  tickets: readTicket,
};

/** "missing", naming a key of the body that looks like the one expected (`birth_date` for `date_of_birth`). */
function missing(field: string, body: JsonObject): Problem {
  const similar = Object.keys(body).filter((key) => !(key in EXPECTED_KEYS) && looksLike(key, field));
  const hint = similar.length > 0 ? `; the document has ${similar.map((k) => `"${k}"`).join(', ')}: a different name for it?` : '';
  return { path: `/${field}`, message: `is missing${hint}` };
}

const EXPECTED_KEYS: Readonly<Record<string, true>> = { name: true, date_of_birth: true, balance: true, subject: true, status: true };

/** Two field names look alike when they share a word (`birth_date` / `date_of_birth`) or differ by case or separators. */
function looksLike(a: string, b: string): boolean {
  const words = (s: string) => s.toLowerCase().split(/[^a-z0-9]+/).filter((w) => w.length > 2 && w !== 'of');
  const norm = (s: string) => s.toLowerCase().replace(/[^a-z0-9]/g, '');
  if (norm(a) === norm(b)) return true;
  const bw = new Set(words(b));
  return words(a).some((w) => bw.has(w));
}

function isRealDate(value: string): boolean {
  if (!/^[0-9]{4}-[0-9]{2}-[0-9]{2}$/.test(value)) return false;
  const d = new Date(`${value}T00:00:00Z`);
  return !Number.isNaN(d.getTime()) && d.toISOString().slice(0, 10) === value;
}

/**
 * JSON Merge Patch (RFC 7396): members of `patch` replace those of `target`, `null` removes one,
 * objects merge recursively, anything else (arrays included) replaces the whole value.
 */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const result: JsonObject = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}

export function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
