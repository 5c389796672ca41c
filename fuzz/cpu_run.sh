#!/usr/bin/env bash
# Runs fuzz targets for a budget of CPU seconds each, not wall seconds: libFuzzer's
# -max_total_time counts wall time, which on a shared machine at nice 19 (or in a container
# that is suspended) overstates the fuzzing done. Two workers pull target:seconds pairs from
# one queue; each target runs from its grown corpus plus the committed seeds and is stopped
# with SIGINT (libFuzzer prints its final stats) once its user + system time reaches the budget.
#
# usage: CAMPAIGN=/path/to/campaign fuzz/cpu_run.sh spec:1200 roster:1200 ...
#   $CAMPAIGN/bin/<target>  the fuzz binaries (copied out of fuzz/target, so a rebuild cannot
#                           change them mid-run)
#   $CAMPAIGN/corpus, art, logs, cpu_done.txt  written by the runs
set -u
fuzz_dir=$(cd "$(dirname "$0")" && pwd)
cd "${CAMPAIGN:?set CAMPAIGN to the campaign folder}"
tick=$(getconf CLK_TCK)
run_one() {
  t=${1%%:*}; budget=${1##*:}
  mkdir -p corpus/$t art/$t logs
  start=$(date -u +%FT%TZ)
  log=logs/$t-cpu-$start.log
  nice -n 19 ./bin/$t corpus/$t "$fuzz_dir/corpus/$t" -max_total_time=1000000 -timeout=30 \
    -print_final_stats=1 -artifact_prefix=art/$t/ > $log 2>&1 &
  pid=$!
  cpu=0
  while kill -0 $pid 2>/dev/null; do
    sleep 5
    if [ -r /proc/$pid/stat ]; then
      cpu=$(awk -v tk=$tick '{print int(($14+$15)/tk)}' /proc/$pid/stat 2>/dev/null || echo $cpu)
    fi
    if [ "$cpu" -ge "$budget" ]; then kill -INT $pid; break; fi
  done
  wait $pid; rc=$?
  echo "$t $start $(date -u +%FT%TZ) cpu=${cpu}s rc=$rc" >> cpu_done.txt
}
printf '%s\n' "$@" > cpu_queue.txt
worker() {
  while true; do
    t=$(flock cpu_queue.txt sh -c 'head -1 cpu_queue.txt; sed -i 1d cpu_queue.txt')
    [ -z "$t" ] && break
    run_one $t
  done
}
worker & worker & wait
