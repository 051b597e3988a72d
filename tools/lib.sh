# tools/lib.sh: the helpers every tools/*.sh script shares. Source it after setting PROG
# (the name messages start with); usage() prints the script's own header comment.
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "$PROG: $*" >&2; exit 2; }
log() { echo "$PROG: $*" >&2; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value; see --help"; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
