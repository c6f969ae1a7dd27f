import { pino, type Logger } from 'pino';
import type { LogLevel } from './config.ts';

/** JSON logs; credentials are redacted wherever they might appear. */
export function createLogger(level: LogLevel, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      redact: {
        paths: ['req.headers.authorization', 'headers.authorization', 'authorization', 'key', 'adminKey', '*.password'],
        censor: '[redacted]',
      },
    },
    destination,
  );
}
