// Modal dialogs: a generic Modal and the confirmation dialog that every destructive action goes through.
//
// Confirmations are in-page (not window.confirm) so that they can say precisely what will happen, show
// the API's error if the action fails, and be driven by browser tests. The confirm button carries the
// action's name ("Stop kv", "Kill h1"), so its accessible name says what it does.
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Result } from './api';
import { Store, useStore } from './store';

interface ModalProps {
  title: string;
  onClose: () => void;
  children: ComponentChildren;
  wide?: boolean;
}

export function Modal({ title, onClose, children, wide }: ModalProps) {
  const ref = useRef<HTMLDivElement>(null);
  // The latest onClose, read by the key handler: the effect runs once, so focus is not moved again on
  // every render (a new onClose function each time would otherwise re-run it).
  const closeRef = useRef(onClose);
  closeRef.current = onClose;
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.key === 'Escape') closeRef.current();
    };
    window.addEventListener('keydown', onKey);
    // Focus the first field, or the dialog itself, so keyboard users start inside it.
    const root = ref.current;
    const first =
      root?.querySelector<HTMLElement>('[data-autofocus]') ??
      root?.querySelector<HTMLElement>('input, select, textarea') ??
      root?.querySelector<HTMLElement>('button');
    first?.focus();
    return () => window.removeEventListener('keydown', onKey);
  }, []);
  return (
    <div
      class="overlay"
      onMouseDown={(e) => {
        if (e.target === e.currentTarget) onClose();
      }}
    >
      <div class={wide ? 'modal wide' : 'modal'} role="dialog" aria-modal="true" aria-label={title} ref={ref}>
        <div class="modal-head">
          <h2>{title}</h2>
          <button type="button" class="icon-button" aria-label="Close" onClick={onClose}>
            ×
          </button>
        </div>
        {children}
      </div>
    </div>
  );
}

export interface ConfirmRequest {
  title: string;
  body: ComponentChildren;
  /** The confirm button's text and accessible name, e.g. "Stop kv". */
  confirmLabel: string;
  danger?: boolean;
  /** Extra content between the text and the buttons (a select, for migration). */
  extra?: ComponentChildren;
  /** Runs the action; a failure keeps the dialog open with the API's message. */
  run: () => Promise<Result<unknown>>;
  onDone?: () => void;
  /** Called when the dialog closes without the action having succeeded. */
  onCancel?: () => void;
}

const confirmStore = new Store<{ request: ConfirmRequest | null }>({ request: null });

export function askConfirm(request: ConfirmRequest): void {
  confirmStore.set({ request });
}

/** Renders the pending confirmation, if any; mounted once by the app. */
export function ConfirmHost() {
  const { request } = useStore(confirmStore);
  if (!request) return null;
  return (
    <ConfirmDialog
      request={request}
      onClose={(succeeded) => {
        confirmStore.set({ request: null });
        if (!succeeded) request.onCancel?.();
      }}
    />
  );
}

function ConfirmDialog({
  request,
  onClose,
}: {
  request: ConfirmRequest;
  onClose: (succeeded: boolean) => void;
}) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const confirm = async () => {
    setBusy(true);
    setError(null);
    const r = await request.run();
    setBusy(false);
    if (!r.ok) {
      setError(r.error.message);
      return;
    }
    onClose(true);
    request.onDone?.();
  };
  return (
    <Modal title={request.title} onClose={() => onClose(false)}>
      <div class="modal-body">
        <div class="confirm-text">{request.body}</div>
        {request.extra}
        {error && (
          <div class="banner error" role="alert">
            {error}
          </div>
        )}
      </div>
      <div class="modal-actions">
        <button type="button" class="button" onClick={() => onClose(false)} data-autofocus>
          Cancel
        </button>
        <button
          type="button"
          class={request.danger ? 'button danger' : 'button primary'}
          disabled={busy}
          onClick={confirm}
        >
          {busy ? 'Working…' : request.confirmLabel}
        </button>
      </div>
    </Modal>
  );
}
