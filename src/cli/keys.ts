import { InvalidArgumentError, Option, type Command } from 'commander';
import { withStore } from './context.ts';
import { printResult, type JsonOption } from './output.ts';

/** `databank keys create`: API keys, printed once and stored only as a hash. */

interface CreateOptions extends JsonOption {
  readonly role: 'admin' | 'customer';
  readonly customer?: number;
}

/** Registers `keys` and its subcommands. */
export function register(program: Command): void {
  const keys = program.command('keys').description('API keys');
  keys
    .command('create')
    .description('create an API key; it is printed once and stored only as a hash')
    .addOption(new Option('--role <role>', 'what the key may do').choices(['admin', 'customer']).makeOptionMandatory())
    .option('--customer <id>', 'the customer a customer key is bound to', positiveInt)
    .option('--json', 'print {"key","role","customer_id","id"}')
    .action((opts: CreateOptions) =>
      withStore(async (store) => {
        if ((opts.role === 'customer') !== (opts.customer !== undefined)) {
          throw new InvalidArgumentError('--customer is required with --role customer and not allowed with --role admin');
        }
        const { ApiKeysService } = await import('../services/api-keys.ts');
        const { primaryOnly } = await import('../stores/sql/port.ts');
        const created = await new ApiKeysService(primaryOnly(store.db)).create(opts.role, opts.customer ?? null);
        printResult(opts, created, created.key);
      }),
    );
}

function positiveInt(value: string): number {
  if (!/^[1-9][0-9]{0,14}$/.test(value)) throw new InvalidArgumentError('expected a positive integer');
  return Number(value);
}
