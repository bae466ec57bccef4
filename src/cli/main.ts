/**
 * The lockstep command line: parses arguments and dispatches to commands.
 *
 * Conventions (DESIGN.md §5): usage errors exit 2; informational messages go
 * to stderr; stdout carries only the guest's output and the JSON lines the
 * contract names.
 */
import { Command, CommanderError, Option } from 'commander';
import { addRunCommand } from './run.js';
import { addRecordCommand } from './record.js';
import { addReplayCommand } from './replay.js';
import { addHostCommands } from './host.js';
import { addClusterCommands } from './cluster.js';
import { addVmCommands } from './vm.js';

export const EXIT_USAGE = 2;

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('lockstep')
    .description(
      'Fault tolerance for WebAssembly VMs: run WASI guests, record and replay them, protect them.',
    )
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({ writeOut: (s) => process.stdout.write(s), writeErr: (s) => process.stderr.write(s) });
  addRunCommand(program);
  addRecordCommand(program);
  addReplayCommand(program);
  addHostCommands(program);
  addClusterCommands(program);
  addVmCommands(program);
  program.addOption(new Option('--no-color', 'accepted for compatibility').hideHelp());
  return program;
}

export async function cliMain(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version are successes; everything else commander rejects is a usage error.
      // A bare `lockstep` prints help too (commander.help), but that is a usage error.
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') {
        process.exit(0);
      }
      process.exit(EXIT_USAGE);
    }
    throw e;
  }
  // Commands set process.exitCode; exit now so that a paused stdin or a lingering
  // socket cannot keep a finished command alive.
  process.exit(process.exitCode ?? 0);
}
