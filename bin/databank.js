#!/usr/bin/env node
// The `databank` command. TypeScript sources run through tsx's loader, so there is no build step
// between a checkout and a running bank.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/main.ts');
await main(process.argv);
