#!/usr/bin/env bash
# #15 probe: p99.9 by nbdkit thread count, interleaved (bench/README.md).
# for rep in 1..3: for -t 4, 16: nofilter, then crash-safe, 64T uniform.
cd "$(dirname "$0")/.."
for rep in 1 2 3; do
  for t in 4 16; do
    for cfg in nofilter crash-safe; do
      echo "rep $rep t $t $(NBDKIT_ARGS="-t $t" bash bench/fio-tail.sh $cfg 64T 10 30)"
    done
  done
done
