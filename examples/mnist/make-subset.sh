#!/usr/bin/env bash
# Regenerates examples/mnist/data from the shared MNIST image folders.
#
# The rule: for every digit 0-9, take the first 400 training images and the first
# 100 test images in file-name order. The shared set was already shuffled with a
# fixed seed before it was numbered, so the first files of each class are a fair
# sample, and every class is present in the same proportion: 4,000 training and
# 1,000 test images. Running this twice gives the same tree.
#
# usage: examples/mnist/make-subset.sh [SOURCE]   (default: ../shared/data/mnist/png)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source_root=${1:-"$here/../../../shared/data/mnist/png"}
train_per_class=400
test_per_class=100

if [ ! -d "$source_root/train" ] || [ ! -d "$source_root/test" ]; then
  echo "make-subset: $source_root has no train/ and test/ folders" >&2
  exit 2
fi

rm -rf "$here/data"
for split in train test; do
  count=$train_per_class
  [ "$split" = test ] && count=$test_per_class
  for class in 0 1 2 3 4 5 6 7 8 9; do
    mkdir -p "$here/data/$split/$class"
    # Sort the whole list first: `head` closing the pipe early would trip pipefail.
    mapfile -t names < <(find "$source_root/$split/$class" -maxdepth 1 -name '*.png' -printf '%f\n' \
      | LC_ALL=C sort)
    if [ "${#names[@]}" -lt "$count" ]; then
      echo "make-subset: $source_root/$split/$class has ${#names[@]} images, need $count" >&2
      exit 2
    fi
    for name in "${names[@]:0:$count}"; do
      cp "$source_root/$split/$class/$name" "$here/data/$split/$class/"
    done
  done
done
echo "make-subset: $(find "$here/data/train" -name '*.png' | wc -l) training and" \
  "$(find "$here/data/test" -name '*.png' | wc -l) test images in $here/data"
