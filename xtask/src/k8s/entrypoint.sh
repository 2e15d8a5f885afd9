# The container's entrypoint (bash 5.1+): LOCAL_WORLD_SIZE ranks of `"$@"` in this pod, with
# RANK = NODE_RANK * LOCAL_WORLD_SIZE + LOCAL_RANK. The first rank to fail ends the pod with its
# exit code after the others are stopped (SIGTERM, then SIGKILL after GRACE_S); the Job's
# podFailurePolicy and backoffLimit then decide between failing the job (2, 3) and a new pod.
set -u
pids=()
for ((l = 0; l < LOCAL_WORLD_SIZE; l++)); do
  RANK=$((NODE_RANK * LOCAL_WORLD_SIZE + l)) LOCAL_RANK=$l "$@" &
  pids+=($!)
done
stop_all() {
  kill -TERM "${pids[@]}" 2>/dev/null
  for ((t = 0; t < ${GRACE_S:-10} * 10; t++)); do
    [ -z "$(jobs -rp)" ] && break
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null
  wait
}
trap 'stop_all; exit 143' TERM INT
code=0
for ((left = ${#pids[@]}; left > 0; left--)); do
  wait -n "${pids[@]}"
  c=$?
  if [ "$c" -ne 0 ]; then
    code=$c
    echo "entrypoint: a rank on node $NODE_RANK exited with $c; stopping the others" >&2
    stop_all
    break
  fi
done
exit "$code"
