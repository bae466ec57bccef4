#!/usr/bin/env bash
# build.sh - builds every guest program: the examples under examples/ and
# the test guests under test/guests/, each .wasm next to its source, plus
# the native builds of the example servers (gitignored native/build/
# folders). Safe to run again: it rebuilds everything from source.
#
# It uses fixed toolchain paths on purpose: the `rustc` on PATH may be a
# rustup toolchain without the wasm32-wasi std, while Debian's rustc 1.63
# at /usr/bin/rustc has it. Missing tools stop the build with a message
# naming the Debian package to install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLANG=/usr/bin/clang
RUSTC=/usr/bin/rustc
GCC="${GCC:-gcc}"
SYSROOT=/usr/lib/wasm32-wasi

die() {
  echo "build.sh: $*" >&2
  exit 1
}

[ -x "$CLANG" ] || die "missing $CLANG (apt-get install clang-14 lld-14)"
[ -f "$SYSROOT/libc.a" ] || die "missing wasi-libc in $SYSROOT (apt-get install wasi-libc)"
ls /usr/lib/llvm-14/lib/clang/14*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1 ||
  die "missing wasm32 compiler builtins (apt-get install libclang-rt-14-dev-wasm32)"
[ -x "$RUSTC" ] || die "missing $RUSTC (apt-get install rustc)"
[ -d "$("$RUSTC" --print sysroot)/lib/rustlib/wasm32-wasi" ] ||
  die "$RUSTC has no wasm32-wasi std (apt-get install libstd-rust-dev-wasm32)"
command -v "$GCC" >/dev/null || die "missing gcc for the native builds (apt-get install gcc)"

CFLAGS=(-std=c11 -O2 -Wall -Wextra -Werror)
# Rust's std carries debug info; strip it so the modules stay small.
RFLAGS=(--target wasm32-wasi -O --edition 2021 -C strip=debuginfo)

wasm_c() { # source.c -> source.wasm
  echo "  wasm  ${1#"$ROOT"/}"
  "$CLANG" --target=wasm32-wasi "${CFLAGS[@]}" "$1" -o "${1%.c}.wasm"
}

wasm_rs() { # source.rs output.wasm
  echo "  wasm  ${1#"$ROOT"/}"
  "$RUSTC" "${RFLAGS[@]}" "$1" -o "$2"
}

native_c() { # output sources...
  local out="$1"
  shift
  mkdir -p "$(dirname "$out")"
  echo "  native ${out#"$ROOT"/}"
  "$GCC" "${CFLAGS[@]}" "$@" -o "$out"
}

echo "building examples"
wasm_c "$ROOT/examples/kv/kv.c"
native_c "$ROOT/examples/kv/native/build/kv" "$ROOT/examples/kv/kv.c"
native_c "$ROOT/examples/kv/native/build/kv-shim" "$ROOT/examples/kv/native/shim.c"
wasm_c "$ROOT/examples/sessions/sessions.c"
native_c "$ROOT/examples/sessions/native/build/sessions" "$ROOT/examples/sessions/sessions.c"
wasm_rs "$ROOT/examples/rust-kv/main.rs" "$ROOT/examples/rust-kv/rust-kv.wasm"
mkdir -p "$ROOT/examples/rust-kv/native/build"
echo "  native examples/rust-kv/native/build/rust-kv"
"$RUSTC" -O --edition 2021 "$ROOT/examples/rust-kv/main.rs" -o "$ROOT/examples/rust-kv/native/build/rust-kv"

echo "building test guests"
for src in "$ROOT"/test/guests/*.c; do
  wasm_c "$src"
done
wasm_rs "$ROOT/test/guests/rust_fs_net.rs" "$ROOT/test/guests/rust_fs_net.wasm"
echo "done"
