# Shared by the benchmark sections: wall-clock timing of commands.
now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
# timed CMD…: run it with output to $work/last.log, print its seconds; on
# failure show the log and stop.
timed() { local start; start=$(now); "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; exit 1; }; seconds "$start" "$(now)"; }
