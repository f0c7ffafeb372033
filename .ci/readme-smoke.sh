#!/usr/bin/env bash
# The README's "First backup" steps, run as written by a new user: a bare `backy` from the PATH
# (put there by `npm link`), an empty HOME, no config file. The commands are taken from the
# README itself, so the README cannot drift from what works. `<uid>` is replaced by the uid the
# backup printed.
set -euo pipefail
readme="$(cd "$(dirname "$0")/.." && pwd)/README.md"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export HOME="$work/home" XDG_DATA_HOME='' BACKY_CONFIG=''
mkdir -p "$HOME"
command -v backy >/dev/null || { echo "readme-smoke: no backy on PATH (npm link failed?)" >&2; exit 1; }
backy --version >/dev/null

# A small image with data, a zero region and a partial last block.
head -c 5000000 /dev/urandom > disk.img
head -c 4194304 /dev/zero >> disk.img
head -c 12345 /dev/urandom >> disk.img

# The indented lines of the "## First backup" section, up to the next heading.
mapfile -t cmds < <(awk '/^## First backup/{on=1;next} /^## /{on=0} on && /^    [^ ]/{sub(/^    /,""); print}' "$readme")
[ ${#cmds[@]} -ge 4 ] || { echo "readme-smoke: found no commands in README's First backup section" >&2; exit 1; }
uid=''
for c in "${cmds[@]}"; do
  c="${c%%#*}"                     # drop the comment
  c="${c//<uid>/$uid}"
  echo "readme-smoke: \$ $c" >&2
  out=$(bash -c "$c")
  if [[ "$c" == "backy backup "* ]]; then uid=$(printf '%s\n' "$out" | tail -n1); fi
done
[ -n "$uid" ] || { echo "readme-smoke: the backup printed no uid" >&2; exit 1; }
echo "readme-smoke: the README's first backup works as written (uid $uid)" >&2
