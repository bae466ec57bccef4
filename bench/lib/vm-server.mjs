// Bench-only runner for the KV benchmarks: runs one guest as a VM in this process, like
// `lockstep run`, but with two switches the CLI does not have (and should not have):
//
//   node bench/lib/vm-server.mjs --wasm FILE --listen ADDR:PORT --disk DIR [--env K=V]...
//                                [--dist DIR] [--raw] [--cache-dir DIR]
//
//   --raw       run the module's bytes as they are, without instrument() (no asyncify, depth
//               counter, NaN canonicalisation, memory rewrite): the instrumentation's runtime cost
//               is the difference with the default. Only for trusted benchmark guests.
//   --dist DIR  load the VM from another build of dist/ (kv-profile.mjs points it at a patched
//               copy that counts cross-thread wake-ups); default: this repository's dist/.
//
// Prints "vm-server: listening on ADDR:PORT" on stderr when the listener is bound. On SIGUSR2 it
// prints one JSON line of counters on stdout (zeros unless --dist is a counting copy). SIGTERM
// and SIGINT stop the guest, as `lockstep run` does.
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const argv = process.argv.slice(2);
const opt = { env: [], raw: false, dist: new URL('../../dist/', import.meta.url).pathname };
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const next = () => {
    if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
    return argv[++i];
  };
  if (a === '--wasm') opt.wasm = next();
  else if (a === '--listen') opt.listen = next();
  else if (a === '--disk') opt.disk = next();
  else if (a === '--env') opt.env.push(next());
  else if (a === '--dist') opt.dist = next();
  else if (a === '--cache-dir') opt.cacheDir = next();
  else if (a === '--raw') opt.raw = true;
  else throw new Error(`unknown option ${a}`);
}
if (!opt.wasm || !opt.listen || !opt.disk) throw new Error('--wasm, --listen and --disk are required');

const dist = pathToFileURL(path.resolve(opt.dist) + '/');
const { Vm, MEMORY_MAX_MIB_DEFAULT } = await import(new URL('src/vm/vm.js', dist).href);
const { parseListen } = await import(new URL('src/io/net-device.js', dist).href);

const listen = parseListen(opt.listen);
if (typeof listen === 'string') throw new Error(listen);
const config = {
  wasmPath: opt.wasm,
  args: [path.basename(opt.wasm).replace(/\.wasm$/, '')],
  env: opt.env,
  listen: [listen],
  disk: opt.disk,
  dirs: [],
  memoryMaxMib: MEMORY_MAX_MIB_DEFAULT,
  cpuBudget: null,
  stdin: null,
  ...(opt.cacheDir ? { cacheDir: opt.cacheDir } : {}),
};

let vm;
if (opt.raw) {
  // Vm's constructor is private in TypeScript only; it needs the module bytes and the preopens
  // that Vm.load() would have computed (just the disk here).
  const bytes = new Uint8Array(readFileSync(opt.wasm));
  const module = {
    bytes,
    sha256: '',
    sourceSha256: '',
    memoryMaxPages: 0,
    memoryInitialPages: 0,
    globalExports: [],
  };
  vm = Reflect.construct(Vm, [config, module, [{ guestPath: '/data', hostPath: path.resolve(opt.disk) }]]);
} else {
  const r = await Vm.load(config);
  if (!r.ok) {
    process.stderr.write(`vm-server: ${r.error.message}\n`);
    process.exit(125);
  }
  vm = r.vm;
}
const [addr] = await vm.start();
process.stderr.write(
  `vm-server: listening on ${addr.host}:${addr.port}${opt.raw ? ' (uninstrumented)' : ''}\n`,
);

// Counters of a counting dist/ copy (kv-profile.mjs): Ctl slots 16.. and main-thread globals.
process.on('SIGUSR2', () => {
  const i32 = vm.ctl.i32;
  const slot = (k) => (k < i32.length ? Atomics.load(i32, k) : 0);
  const g = globalThis.__lockstepBench ?? {};
  const counters = {
    pokeIo: slot(16),
    ioNotify: slot(17),
    wakeVcpuCalls: slot(18),
    wakeVcpuNotify: slot(19),
    vcpuWaits: slot(20),
    pollOneoff: slot(21),
    sockRecv: slot(22),
    sockSend: slot(23),
    otherHostCalls: slot(24),
    pollSubs: slot(25),
    ioLoops: g.loops ?? 0,
    ioAsyncWaits: g.asyncWaits ?? 0,
    dataEvents: g.dataEvents ?? 0,
    socketWrites: g.socketWrites ?? 0,
  };
  process.stdout.write(JSON.stringify(counters) + '\n');
});
const stop = (reason) => () => vm.stop(reason);
process.on('SIGTERM', stop(2)); // StopReason.SIGTERM
process.on('SIGINT', stop(1)); // StopReason.SIGINT
const outcome = await vm.wait();
process.exitCode = outcome.stop === 'exit' ? outcome.exitCode : 0;
