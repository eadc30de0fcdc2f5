#!/bin/sh
# `make run`: the demo upstream (seeds p1..p3 at version 1 and publishes them
# once pollgate is up), then pollgate on its embedded default config, until
# Ctrl-C (exit 0) or SIGTERM/SIGHUP. The Makefile passes RELEASE, DEMO_UPSTREAM,
# DEMO_PUBLIC, DEMO_INTERNAL and DEMO_TOKEN.
#
# Ctrl-C in a terminal is sent to the whole foreground process group, make
# included, and make answers SIGINT by dying of it (exit 130, whatever its
# recipe does). So in a terminal, and only when in its foreground, this
# script runs itself again as a job of a job-control shell (`sh -m`): the job
# gets a process group of its own and the terminal's foreground, Ctrl-C
# reaches the job alone (this script and everything it started), the script
# stops the demo and exits 0, and make with it; then the terminal goes back
# to make. In the background (or without a terminal) job control would stop
# the shell (SIGTTIN), so it is not used there.
in_foreground() {
  # Fields 5 and 8 of /proc/PID/stat: the process group and the terminal's
  # foreground process group.
  set -- $(cut -d' ' -f5,8 "/proc/$$/stat" 2>/dev/null)
  [ "${1:-x}" = "${2:-y}" ]
}
if [ -t 0 ] && [ -z "${PG_DEMO_JOBCTL:-}" ] && in_foreground; then
  PG_DEMO_JOBCTL=1 exec /bin/sh -m -c '"$0" "$@"' "$0" "$@"
fi

set -u
command -v curl >/dev/null || { echo "make run needs curl (apt-get install curl)" >&2; exit 1; }
pids=""
trap 'kill $pids 2>/dev/null; wait 2>/dev/null; echo; echo stopped.' EXIT
trap 'exit 0' INT TERM HUP
"$RELEASE/examples/demo_upstream" --listen "$DEMO_UPSTREAM" \
  --publish-url "http://$DEMO_INTERNAL" --publish-token "$DEMO_TOKEN" --seed 3 &
pids="$!"
POLLGATE_PUBLISH_TOKEN="$DEMO_TOKEN" "$RELEASE/pollgate" &
pg=$!
pids="$pids $pg"
deadline=$(($(date +%s) + 20))
until curl -sf "http://$DEMO_INTERNAL/healthz" >/dev/null; do
  kill -0 $pg 2>/dev/null || { echo "pollgate exited (is $DEMO_PUBLIC or $DEMO_INTERNAL in use?)" >&2; exit 1; }
  [ "$(date +%s)" -lt $deadline ] || { echo "pollgate not healthy after 20 s" >&2; exit 1; }
  sleep 0.2
done
until curl -sf "http://$DEMO_INTERNAL/v1/versions/p1" >/dev/null; do
  [ "$(date +%s)" -lt $deadline ] || { echo "warning: p1 not published yet; the first poll will be forwarded" >&2; break; }
  sleep 0.2
done
cat <<MSG

pollgate: polls on http://$DEMO_PUBLIC, publish/admin on http://$DEMO_INTERNAL
demo upstream: http://$DEMO_UPSTREAM (projects p1, p2, p3 at version 1)

# 0. the demo board, live in every tab: open http://$DEMO_PUBLIC/ in a browser (several tabs)
# 1. a hit, answered from memory: 304 with X-Pollgate: hit
curl -i 'http://$DEMO_PUBLIC/projects/p1/changes?since=1'
# 2. a stale poll, forwarded: 200 with the events from the demo upstream
curl -i 'http://$DEMO_PUBLIC/projects/p1/changes?since=0'
# 3. a new event (the upstream publishes version 2), then the same poll as 1 gets a 200
curl -X POST -d 'hello' http://$DEMO_UPSTREAM/projects/p1/events
curl -i 'http://$DEMO_PUBLIC/projects/p1/changes?since=1'

Ctrl-C stops both (in the background: kill the make process).
MSG
# make does not pass a SIGTERM on to its recipe: killed in the background,
# it dies alone and this script would run on. So stop when the parent is
# gone too. A signal's trap runs at once: the wait is interruptible.
parent=$PPID
while kill -0 "$pg" 2>/dev/null; do
  kill -0 "$parent" 2>/dev/null || exit 0
  sleep 1 &
  wait $! 2>/dev/null
done
wait $pg
