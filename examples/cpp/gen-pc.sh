#!/bin/sh
# Writes masked-rnn.pc (from masked-rnn.pc.in) into OUT_DIR, pointing at this checkout's include/ and at
# LIB_DIR, the directory holding libmasked_rnn.so / .a (default: target/release of this checkout, which
# `cargo build --release` fills). Then: PKG_CONFIG_PATH=OUT_DIR pkg-config --cflags --libs masked-rnn
#
#   examples/cpp/gen-pc.sh OUT_DIR [LIB_DIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:?usage: gen-pc.sh OUT_DIR [LIB_DIR]}
libdir=$(cd "${2:-$root/target/release}" && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
mkdir -p "$out"
sed -e "s|@INCLUDEDIR@|$root/include|" -e "s|@LIBDIR@|$libdir|" -e "s|@VERSION@|$version|" \
    "$here/masked-rnn.pc.in" >"$out/masked-rnn.pc"
echo "$out/masked-rnn.pc"
