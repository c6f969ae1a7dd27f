import { sql, type Kysely } from 'kysely';
import type { Database } from '../../stores/sql/schema.ts';

/** How long a hold lasts if its backup dies without releasing it. */
export const HOLD_MS = 6 * 60 * 60 * 1000;

/**
 * Whether a backup is copying objects now. Asked on the primary after the commit that removed a
 * row: if a backup's snapshot came before that commit, its hold was committed before the
 * snapshot and is seen here; if not, the snapshot does not have the row. Either way the
 * backup finds every object its rows name.
 */
export async function backupHeld(db: Kysely<Database>): Promise<boolean> {
  const row = await db.selectFrom('backup_holds').select('backup_id').where('expires_at', '>', sql<Date>`now()`).limit(1).executeTakeFirst();
  return row !== undefined;
}

/** Holds object deletions for one backup; the returned function releases the hold. */
export async function holdDeletions(db: Kysely<Database>, backupId: string): Promise<() => Promise<void>> {
  await db
    .insertInto('backup_holds')
    .values({ backup_id: backupId, expires_at: sql<Date>`now() + ${`${HOLD_MS} milliseconds`}::interval` })
    .execute();
  return async () => {
    await db.deleteFrom('backup_holds').where('backup_id', '=', backupId).execute();
  };
}
