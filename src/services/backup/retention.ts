/**
 * Which backups a grandfather-father-son policy keeps: the newest backup of each of the last
 * `daily` days, `weekly` ISO weeks and `monthly` months that have one (UTC), and always the
 * newest of all. Everything else may go.
 */

export interface Keep {
  readonly daily: number;
  readonly weekly: number;
  readonly monthly: number;
}

export interface Dated {
  readonly backup_id: string;
  readonly created_at: string;
}

/** ISO 8601 week of a date, as `YYYY-Www` (the week's Thursday decides the year). */
export function isoWeek(date: Date): string {
  const d = new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()));
  const day = d.getUTCDay() || 7;
  d.setUTCDate(d.getUTCDate() + 4 - day);
  const yearStart = Date.UTC(d.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((d.getTime() - yearStart) / 86_400_000 + 1) / 7);
  return `${d.getUTCFullYear()}-W${String(week).padStart(2, '0')}`;
}

/** The backups to keep, each with why, and the ones to remove, newest first. */
export function retention<T extends Dated>(backups: readonly T[], keep: Keep): { keep: Array<T & { reasons: string[] }>; remove: T[] } {
  const newestFirst = [...backups].sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
  const reasons = new Map<string, string[]>();
  const mark = (b: T, reason: string) => reasons.set(b.backup_id, [...(reasons.get(b.backup_id) ?? []), reason]);
  const rule = (name: string, count: number, bucket: (d: Date) => string) => {
    const seen = new Set<string>();
    for (const b of newestFirst) {
      if (seen.size >= count) break;
      const key = bucket(new Date(b.created_at));
      if (seen.has(key)) continue;
      seen.add(key);
      mark(b, `${name} ${key}`);
    }
  };
  if (newestFirst[0]) mark(newestFirst[0], 'newest');
  rule('daily', keep.daily, (d) => d.toISOString().slice(0, 10));
  rule('weekly', keep.weekly, isoWeek);
  rule('monthly', keep.monthly, (d) => d.toISOString().slice(0, 7));
  return {
    keep: newestFirst.filter((b) => reasons.has(b.backup_id)).map((b) => ({ ...b, reasons: reasons.get(b.backup_id) as string[] })),
    remove: newestFirst.filter((b) => !reasons.has(b.backup_id)),
  };
}
