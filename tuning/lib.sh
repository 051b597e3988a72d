# shellcheck shell=bash
# Shared by check.sh and apply.sh (sourced, not run): parses sysctl.conf and limits.conf
# and compares values, so both scripts apply the same rules to the same numbers.
#
# Environment (both scripts):
#   TUNING_PROC_ROOT  where to read (and, for apply.sh --apply, write) sysctls; default
#                     /proc. Tests point it at a fake tree: $TUNING_PROC_ROOT/sys/net/core/somaxconn.

TUNING_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROC_ROOT=${TUNING_PROC_ROOT:-/proc}

# Filled by load_sysctl_conf, one entry per setting, in file order.
SYSCTL_KEYS=()
SYSCTL_RECS=()
SYSCTL_RULES=()
SYSCTL_OPTIONAL=()

die() {
  printf '%s: %s\n' "${0##*/}" "$*" >&2
  exit 2
}

# Collapses runs of blanks and tabs to one space and trims both ends, so that
# "4096\t131072\t6291456" from /proc and "4096 131072 6291456" from the file compare equal.
normalize() {
  local -a words
  read -r -a words <<<"$1"
  printf '%s' "${words[*]}"
}

# Reads tuning/sysctl.conf. Each setting must be preceded by a "# check: RULE..." line;
# a setting without one is an error, so nobody adds a key whose direction is a guess.
load_sysctl_conf() {
  local file=$TUNING_DIR/sysctl.conf line rule="" key value optional lineno=0
  [[ -r $file ]] || die "cannot read $file"
  while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    if [[ $line =~ ^#[[:space:]]*check:[[:space:]]*(.*)$ ]]; then
      rule=$(normalize "${BASH_REMATCH[1]}")
      continue
    fi
    [[ $line =~ ^[[:space:]]*([#\;]|$) ]] && continue
    [[ $line == *=* ]] || die "$file:$lineno: expected 'key = value', got: $line"
    key=$(normalize "${line%%=*}")
    value=$(normalize "${line#*=}")
    optional=0
    if [[ $key == -* ]]; then
      optional=1
      key=${key#-}
    fi
    [[ -n $rule ]] || die "$file:$lineno: $key has no '# check: RULE' line above it"
    check_rule_shape "$file:$lineno" "$key" "$rule" "$value"
    SYSCTL_KEYS+=("$key")
    SYSCTL_RECS+=("$value")
    SYSCTL_RULES+=("$rule")
    SYSCTL_OPTIONAL+=("$optional")
    rule=""
  done <"$file"
  ((${#SYSCTL_KEYS[@]} > 0)) || die "$file has no settings"
}

# A rule is one word for every field, or one word per field; port-count needs "low high".
check_rule_shape() {
  local where=$1 key=$2 rule=$3 value=$4 r
  local -a rules fields
  read -r -a rules <<<"$rule"
  read -r -a fields <<<"$value"
  for r in "${rules[@]}"; do
    case $r in
      at-least | at-most | equal | port-count) ;;
      *) die "$where: $key: unknown rule '$r' (use at-least, at-most, equal or port-count)" ;;
    esac
  done
  for r in "${fields[@]}"; do
    [[ $r =~ ^[0-9]+$ ]] || die "$where: $key: '$value' is not a list of whole numbers"
  done
  if [[ $rule == *port-count* ]]; then
    [[ $rule == port-count && ${#fields[@]} -eq 2 ]] ||
      die "$where: $key: port-count is the only rule of a 'low high' value"
  elif ((${#rules[@]} != 1 && ${#rules[@]} != ${#fields[@]})); then
    die "$where: $key: ${#rules[@]} rules for ${#fields[@]} fields"
  fi
}

# /proc/sys path of a dotted key: net.core.somaxconn -> $PROC_ROOT/sys/net/core/somaxconn.
sysctl_path() {
  printf '%s/sys/%s' "$PROC_ROOT" "${1//.//}"
}

# Prints the current value, normalized; returns 1 when the key does not exist.
read_sysctl() {
  local path value
  path=$(sysctl_path "$1")
  [[ -r $path ]] || return 1
  value=$(<"$path") || return 1
  normalize "$value"
}

# Compares two whole numbers of any length (fs.file-max may be 2^63-1, and other knobs
# print 2^64-1, past bash's signed 64-bit arithmetic): prints -1, 0 or 1.
num_cmp() {
  local a=$1 b=$2
  a=${a#"${a%%[!0]*}"}
  b=${b#"${b%%[!0]*}"}
  if ((${#a} != ${#b})); then
    ((${#a} < ${#b})) && echo -1 || echo 1
  elif [[ $a == "$b" ]]; then
    echo 0
  elif [[ $a < $b ]]; then
    echo -1
  else
    echo 1
  fi
}

# Prints the value that satisfies RULE and is the better of CURRENT and RECOMMENDED, field
# by field: the larger for at-least, the smaller for at-most, the recommended for equal,
# and for port-count the current range when it holds enough ports, else the recommended
# one. A missing or malformed current value gives the recommended value.
# Usage: better_value RULE CURRENT RECOMMENDED
better_value() {
  local rule=$1 current=$2 recommended=$3 i r
  local -a rules cur rec out
  read -r -a rules <<<"$rule"
  read -r -a cur <<<"$current"
  read -r -a rec <<<"$recommended"
  if ((${#cur[@]} != ${#rec[@]})); then
    printf '%s' "$recommended"
    return
  fi
  for i in "${!cur[@]}"; do
    if ! [[ ${cur[i]} =~ ^[0-9]+$ ]]; then
      printf '%s' "$recommended"
      return
    fi
  done
  if [[ $rule == port-count ]]; then
    if ((cur[1] - cur[0] + 1 >= rec[1] - rec[0] + 1)); then
      printf '%s' "$current"
    else
      printf '%s' "$recommended"
    fi
    return
  fi
  for i in "${!rec[@]}"; do
    r=${rules[i]:-${rules[0]}}
    case $r:$(num_cmp "${cur[i]}" "${rec[i]}") in
      at-least:1 | at-most:-1) out+=("${cur[i]}") ;;
      *) out+=("${rec[i]}") ;;
    esac
  done
  printf '%s' "${out[*]}"
}

# True when CURRENT already satisfies RULE against RECOMMENDED.
# Usage: value_ok RULE CURRENT RECOMMENDED
value_ok() {
  [[ -n $2 && $(better_value "$1" "$2" "$3") == "$2" ]]
}

# Sets NOFILE_SOFT_REC and NOFILE_HARD_REC from the volley lines of limits.conf.
# (Globals, not output: a `die` inside a command substitution would not stop the caller.)
load_limits_nofile() {
  local file=$TUNING_DIR/limits.conf who type item value _
  [[ -r $file ]] || die "cannot read $file"
  NOFILE_SOFT_REC="" NOFILE_HARD_REC=""
  while read -r who type item value _; do
    [[ $who == volley && $item == nofile ]] || continue
    case $type in
      soft) NOFILE_SOFT_REC=$value ;;
      hard) NOFILE_HARD_REC=$value ;;
      -) NOFILE_SOFT_REC=$value NOFILE_HARD_REC=$value ;;
    esac
  done <"$file"
  [[ $NOFILE_SOFT_REC =~ ^[0-9]+$ && $NOFILE_HARD_REC =~ ^[0-9]+$ ]] ||
    die "$file: needs 'volley soft nofile N' and 'volley hard nofile N' lines"
}
