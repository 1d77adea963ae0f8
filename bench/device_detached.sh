#!/usr/bin/env bash
# Long jobs on the lent GPU machine, whose calls last at most 10 minutes: start a command detached,
# then poll it from later calls (the machine keeps runs/ while it stays warm).
#   bash bench/device_detached.sh start NAME CMD...   # runs CMD in the background, log in runs/jobs/NAME.log
#   bash bench/device_detached.sh wait SECONDS NAME...  # waits until all NAMEs ended or SECONDS passed; tails logs
# A detached job does not keep the machine: it goes back after ~30 s without a call in flight, jobs
# and all. Follow a start with back-to-back wait calls until the jobs end, and copy results to $OUT
# in every call.
set -u
mkdir -p runs/jobs
case "$1" in
  start)
    name=$2; shift 2
    setsid nohup bash -c "$*; echo \$? > runs/jobs/$name.rc" > "runs/jobs/$name.log" 2>&1 < /dev/null &
    echo "started $name (pid $!)" ;;
  wait)
    limit=$2; shift 2
    end=$(( $(date +%s) + limit ))
    while [ "$(date +%s)" -lt "$end" ]; do
      left=0
      for n in "$@"; do [ -f "runs/jobs/$n.rc" ] || left=1; done
      [ "$left" = 0 ] && break
      sleep 10
    done
    for n in "$@"; do
      echo "== $n rc=$(cat runs/jobs/$n.rc 2>/dev/null || echo running)"
      tail -n 8 "runs/jobs/$n.log"
    done ;;
esac
