#!/bin/bash
# root: apply the nice value in /tmp/nice-kafka to every thread of the JVM $1 (on change, and every 5 s)
last=x; n=0
while kill -0 $1 2>/dev/null; do
  v=$(cat /tmp/nice-kafka 2>/dev/null || echo 0)
  if [[ $v != "$last" ]] || ((n % 16 == 0)); then
    renice -n $v -p $(ls /proc/$1/task) >/dev/null 2>&1; last=$v
  fi
  n=$((n+1)); sleep 0.3
done
