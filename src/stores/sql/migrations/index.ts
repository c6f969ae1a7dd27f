import type { Migration } from 'kysely';
import * as m0001 from './0001_initial.ts';
import * as m0002 from './0002_transfer_function.ts';
import * as m0003 from './0003_files.ts';
import * as m0004 from './0004_amount_checks.ts';
import * as m0005 from './0005_currency_ledgers.ts';
import * as m0006 from './0006_api_key_lifecycle.ts';
import * as m0007 from './0007_outbox_events.ts';
import * as m0008 from './0008_event_log.ts';
import * as m0009 from './0009_job_queue.ts';
import * as m0010 from './0010_backup_holds.ts';
import * as m0011 from './0011_partitioned_ledger.ts';
import * as m0012 from './0012_documents_search.ts';
import * as m0013 from './0013_money_batch.ts';

/**
 * Every migration, by name; names sort in the order they run. `databank migrate make NAME` adds
 * the file and its line here. Listing them statically (rather than reading the folder at run time)
 * keeps them working under any loader and bundler.
 */
export const MIGRATIONS: Readonly<Record<string, Migration>> = {
  '0001_initial': m0001,
  '0002_transfer_function': m0002,
  '0003_files': m0003,
  '0004_amount_checks': m0004,
  '0005_currency_ledgers': m0005,
  '0006_api_key_lifecycle': m0006,
  '0007_outbox_events': m0007,
  '0008_event_log': m0008,
  '0009_job_queue': m0009,
  '0010_backup_holds': m0010,
  '0011_partitioned_ledger': m0011,
  '0012_documents_search': m0012,
  '0013_money_batch': m0013,
  // databank:migrations (new migrations are added above this line)
};
