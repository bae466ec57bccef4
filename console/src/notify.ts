// Toasts: short-lived messages about actions (what was asked, what failed). Errors stay until
// dismissed, because an API message that vanished before it was read is as bad as a blank panel.
import { Store } from './store';

export interface Toast {
  id: number;
  tone: 'error' | 'info' | 'success';
  text: string;
}

export const toastStore = new Store<{ toasts: Toast[] }>({ toasts: [] });

const INFO_TOAST_MS = 5000;
let nextId = 1;

export function notify(tone: Toast['tone'], text: string): void {
  const toast = { id: nextId++, tone, text };
  toastStore.set({ toasts: [...toastStore.get().toasts, toast].slice(-5) });
  if (tone !== 'error') setTimeout(() => dismiss(toast.id), INFO_TOAST_MS);
}

export function dismiss(id: number): void {
  toastStore.set({ toasts: toastStore.get().toasts.filter((t) => t.id !== id) });
}
