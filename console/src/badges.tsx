// Status badges shared by the screens: one place decides the words and colours of each state, so the
// cluster view and a VM's page never describe the same state differently.
import type { HostStatus, VmStatus } from './api';

export function HostStateBadge({ host }: { host: HostStatus }) {
  const tone = { up: 'good', suspect: 'warn', down: 'bad', left: 'neutral' }[host.state] ?? 'neutral';
  return (
    <span class="badges">
      <span class={`badge badge-${tone}`}>{host.state}</span>
      {host.fenced && (
        <span
          class="badge badge-fenced"
          title="A host that took over from it fenced it since it last registered"
        >
          fenced
        </span>
      )}
    </span>
  );
}

export function VmStateBadge({ vm }: { vm: VmStatus }) {
  const tone =
    { running: 'good', starting: 'info', stopped: 'neutral', failed: 'bad' }[vm.state] ?? 'neutral';
  return (
    <span class={`badge badge-${tone}`} title={vm.state === 'failed' && vm.reason ? vm.reason : undefined}>
      {vm.state}
    </span>
  );
}

/** The protection words used everywhere, matching the FT progress indicator of a VM's page. */
export function protectionWords(vm: VmStatus): { text: string; tone: string } {
  switch (vm.protection) {
    case 'protected':
      return { text: 'protected', tone: 'good' };
    case 'syncing':
      return { text: 'catching up', tone: 'warn' };
    case 'reprotecting':
      return { text: 'cloning', tone: 'info' };
    case 'unprotected':
      return { text: 'unprotected', tone: 'bad' };
    default:
      return { text: vm.ft ? 'FT on' : 'FT off', tone: vm.ft ? 'info' : 'neutral' };
  }
}

export function ProtectionBadge({ vm }: { vm: VmStatus }) {
  const { text, tone } = protectionWords(vm);
  return (
    <span class={`badge badge-${tone}`} title={vm.reason ?? undefined}>
      {vm.ft && vm.protection !== 'off' && (
        <span class="badge-icon" aria-hidden="true">
          ◆
        </span>
      )}
      {text}
    </span>
  );
}
