// The "Create VM" dialog: a module (uploaded, or a path the hosts can read), a service address, and
// the optional settings of POST /v1/vms.
//
// An upload goes first to POST /v1/modules, which stores the bytes on the answering host and answers
// the path to create the VM with. The checks here only catch typing mistakes early; the API's 400
// messages (which name the field and the rule) are shown as they come, because the server is the
// authority on what it accepts.
import { useState } from 'preact/hooks';
import { api, type CreateVmRequest } from './api';
// The API's upload limit (POST /v1/modules): the one constant the console takes from the server's wire module.
import { MODULE_BYTES_MAX } from '../../src/api/wire.js';
import { Modal } from './dialogs';
import { notify } from './notify';
import { clusterStore, putVm, refreshCluster, Store, useStore } from './store';

const NAME_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const LISTEN_RE = /^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}:\d{1,5}$/;

const dialogStore = new Store<{ open: boolean }>({ open: false });

export function openCreateVm(): void {
  dialogStore.set({ open: true });
}

export function CreateVmHost() {
  const { open } = useStore(dialogStore);
  return open ? <CreateVmDialog onClose={() => dialogStore.set({ open: false })} /> : null;
}

const lines = (text: string) =>
  text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');

function CreateVmDialog({ onClose }: { onClose: () => void }) {
  const { hosts } = useStore(clusterStore);
  const upHosts = (hosts ?? []).filter((h) => h.state === 'up' && !h.fenced);
  const [name, setName] = useState('');
  const [source, setSource] = useState<'upload' | 'path'>('upload');
  const [file, setFile] = useState<File | null>(null);
  const [wasmPath, setWasmPath] = useState('');
  const [listen, setListen] = useState('');
  const [disk, setDisk] = useState('');
  const [host, setHost] = useState('');
  const [ft, setFt] = useState(upHosts.length >= 2);
  const [env, setEnv] = useState('');
  const [args, setArgs] = useState('');
  const [memoryMaxMib, setMemoryMaxMib] = useState('');
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);

  const check = (): string | null => {
    if (!NAME_RE.test(name))
      return 'The name must be 1 to 63 characters from a-z, 0-9, "_" and "-", starting with a letter or digit.';
    if (source === 'upload' && !file) return 'Choose a .wasm file to upload, or give a path instead.';
    if (source === 'upload' && file && file.size > MODULE_BYTES_MAX)
      return 'The module is larger than 64 MiB, the upload limit.';
    if (source === 'path' && !wasmPath.startsWith('/'))
      return 'The module path must be absolute (start with /).';
    if (!LISTEN_RE.test(listen.trim()))
      return 'The listen address must be IP:PORT with an IPv4 address, e.g. 127.0.0.5:7000.';
    if (disk.trim() !== '' && !disk.trim().startsWith('/'))
      return 'The disk folder must be an absolute path.';
    if (memoryMaxMib.trim() !== '' && !/^\d+$/.test(memoryMaxMib.trim()))
      return 'The memory limit must be a whole number of MiB.';
    return null;
  };

  const submit = async (e: Event) => {
    e.preventDefault();
    const problem = check();
    setError(problem);
    if (problem) return;
    let wasm = wasmPath.trim();
    if (source === 'upload' && file) {
      setBusy('Uploading module…');
      const up = await api.uploadModule(file);
      if (!up.ok) {
        setBusy(null);
        setError(`Upload failed: ${up.error.message}`);
        return;
      }
      wasm = up.value.path;
    }
    const req: CreateVmRequest = { name, wasm, listen: listen.trim(), ft };
    if (disk.trim() !== '') req.disk = disk.trim();
    if (host !== '') req.host = host;
    if (lines(env).length > 0) req.env = lines(env);
    if (lines(args).length > 0) req.args = lines(args);
    if (memoryMaxMib.trim() !== '') req.memoryMaxMib = Number(memoryMaxMib.trim());
    setBusy('Creating…');
    const r = await api.createVm(req);
    setBusy(null);
    if (!r.ok) {
      setError(r.error.message);
      return;
    }
    putVm(r.value);
    refreshCluster();
    notify('success', `VM ${name} created.`);
    onClose();
    window.location.hash = `#/vm/${encodeURIComponent(name)}`;
  };

  return (
    <Modal title="Create VM" onClose={onClose} wide>
      <form class="form" onSubmit={submit} noValidate>
        <div class="modal-body">
          <label class="field">
            <span>Name</span>
            <input
              value={name}
              onInput={(e) => setName(e.currentTarget.value)}
              placeholder="kv"
              autoComplete="off"
              spellcheck={false}
            />
          </label>
          <fieldset class="field">
            <legend>Module</legend>
            <div class="segmented">
              <label>
                <input
                  type="radio"
                  name="source"
                  checked={source === 'upload'}
                  onChange={() => setSource('upload')}
                />
                Upload a .wasm file
              </label>
              <label>
                <input
                  type="radio"
                  name="source"
                  checked={source === 'path'}
                  onChange={() => setSource('path')}
                />
                Path on the hosts
              </label>
            </div>
            {source === 'upload' ? (
              <input
                type="file"
                accept=".wasm,application/wasm"
                aria-label="Module file"
                onChange={(e) => setFile(e.currentTarget.files?.[0] ?? null)}
              />
            ) : (
              <input
                value={wasmPath}
                aria-label="Module path"
                onInput={(e) => setWasmPath(e.currentTarget.value)}
                placeholder="/srv/modules/kv.wasm"
                spellcheck={false}
              />
            )}
          </fieldset>
          <div class="field-row">
            <label class="field">
              <span>Listen address</span>
              <input
                value={listen}
                onInput={(e) => setListen(e.currentTarget.value)}
                placeholder="127.0.0.5:7000"
                spellcheck={false}
              />
              <small>The VM's stable service address (IP:PORT); it moves with the VM.</small>
            </label>
            <label class="field">
              <span>Host</span>
              <select value={host} onChange={(e) => setHost(e.currentTarget.value)}>
                <option value="">Any (the cluster chooses)</option>
                {upHosts.map((h) => (
                  <option key={h.name} value={h.name}>
                    {h.name}
                  </option>
                ))}
              </select>
            </label>
          </div>
          <label class="field">
            <span>Disk folder (optional)</span>
            <input
              value={disk}
              onInput={(e) => setDisk(e.currentTarget.value)}
              placeholder="/var/lib/kv"
              spellcheck={false}
            />
            <small>
              The VM's initial disk image, an absolute folder path; copied to the host that runs it.
            </small>
          </label>
          <label class="check">
            <input type="checkbox" checked={ft} onChange={(e) => setFt(e.currentTarget.checked)} />
            <span>
              Fault tolerance at creation
              <small>
                {' '}
                — a backup in lockstep on a second host
                {upHosts.length < 2
                  ? ' (only one host is up now; the VM stays unprotected until another is)'
                  : ''}
              </small>
            </span>
          </label>
          <details class="advanced">
            <summary>Advanced</summary>
            <label class="field">
              <span>Environment (K=V, one per line)</span>
              <textarea
                rows={2}
                value={env}
                onInput={(e) => setEnv(e.currentTarget.value)}
                spellcheck={false}
              />
            </label>
            <label class="field">
              <span>Arguments (one per line)</span>
              <textarea
                rows={2}
                value={args}
                onInput={(e) => setArgs(e.currentTarget.value)}
                spellcheck={false}
              />
            </label>
            <label class="field">
              <span>Memory limit (MiB)</span>
              <input
                value={memoryMaxMib}
                inputMode="numeric"
                onInput={(e) => setMemoryMaxMib(e.currentTarget.value)}
                placeholder="e.g. 256"
              />
            </label>
          </details>
          {error && (
            <div class="banner error" role="alert">
              {error}
            </div>
          )}
        </div>
        <div class="modal-actions">
          <button type="button" class="button" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="button primary" disabled={busy !== null}>
            {busy ?? 'Create VM'}
          </button>
        </div>
      </form>
    </Modal>
  );
}
