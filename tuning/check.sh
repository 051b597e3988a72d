#!/usr/bin/env bash
usage() {
  cat <<'EOF'
Usage: tuning/check.sh [--help]

Read-only. Compares this box with what volley needs to hold 128k+ connections and prints
one row per setting: current value, recommended value, status, rule.

  sysctls   read from $TUNING_PROC_ROOT/sys/... (default /proc/sys); the recommended values
            and rules come from tuning/sysctl.conf, the single source of truth.
  nofile    `ulimit -Hn` / `ulimit -Sn` of this shell against tuning/limits.conf. volley
            raises its soft limit to the hard limit at start, so only the hard limit counts;
            under systemd, volley gets LimitNOFILE from volley.service instead.

Status: OK       meets the recommendation
        SHORT    falls short of it, in the direction the rule gives:
                   at-least    current < recommended (limits, queues)
                   at-most     current > recommended (timeouts, per-socket minimums)
                   equal       current != recommended (modes)
                   port-count  the "low high" range holds fewer ports (high - low + 1);
                               where the range sits does not matter
                 A triple (tcp_rmem, tcp_wmem, tcp_mem) is SHORT when any field is, each
                 field with its own rule (tcp_rmem: min at-most, default at-most, max
                 at-least: small per-socket floors, a high ceiling).
        MISSING  the key does not exist here (counts as SHORT)
        absent   an optional key ("-" in sysctl.conf) does not exist; fine
        info     shown, not counted (the soft nofile limit)

Exit status: 0 everything meets the recommendation, 1 something is SHORT or MISSING,
2 usage or a malformed tuning file.

Environment:
  TUNING_PROC_ROOT  read sysctls from this tree instead of /proc (for tests)
  TUNING_NOFILE     use this number as both soft and hard nofile instead of ulimit (for tests)
EOF
}
set -euo pipefail

case ${1:-} in
  -h | --help)
    usage
    exit 0
    ;;
  "") ;;
  *)
    usage >&2
    exit 2
    ;;
esac

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

load_sysctl_conf
load_limits_nofile
if [[ -n ${TUNING_NOFILE:-} ]]; then
  [[ $TUNING_NOFILE =~ ^[0-9]+$ ]] || die "TUNING_NOFILE=$TUNING_NOFILE: must be a whole number"
  nofile_soft=$TUNING_NOFILE nofile_hard=$TUNING_NOFILE nofile_from="TUNING_NOFILE"
else
  nofile_soft=$(ulimit -Sn) nofile_hard=$(ulimit -Hn) nofile_from="ulimit, this shell"
fi

row() {
  printf '%-32s %-22s %-22s %-8s %s\n' "$@"
}

short=()
echo "volley host check: sysctls from $PROC_ROOT/sys, recommendations from $TUNING_DIR"
row KEY CURRENT RECOMMENDED STATUS RULE
for i in "${!SYSCTL_KEYS[@]}"; do
  key=${SYSCTL_KEYS[i]} recommended=${SYSCTL_RECS[i]} rule=${SYSCTL_RULES[i]}
  if ! current=$(read_sysctl "$key"); then
    if ((SYSCTL_OPTIONAL[i])); then
      row "$key" "-" "$recommended" absent "$rule (optional)"
    else
      row "$key" "-" "$recommended" MISSING "$rule"
      short+=("$key")
    fi
  elif value_ok "$rule" "$current" "$recommended"; then
    row "$key" "$current" "$recommended" OK "$rule"
  else
    row "$key" "$current" "$recommended" SHORT "$rule"
    short+=("$key")
  fi
done

if [[ $nofile_hard == unlimited ]] || value_ok at-least "$nofile_hard" "$NOFILE_HARD_REC"; then
  row "nofile hard ($nofile_from)" "$nofile_hard" "$NOFILE_HARD_REC" OK at-least
else
  row "nofile hard ($nofile_from)" "$nofile_hard" "$NOFILE_HARD_REC" SHORT at-least
  short+=("nofile")
fi
if [[ $nofile_soft == unlimited ]] || value_ok at-least "$nofile_soft" "$NOFILE_SOFT_REC"; then
  row "nofile soft ($nofile_from)" "$nofile_soft" "$NOFILE_SOFT_REC" OK "not counted: volley raises soft to hard"
else
  row "nofile soft ($nofile_from)" "$nofile_soft" "$NOFILE_SOFT_REC" info "not counted: volley raises soft to hard"
fi

echo
if ((${#short[@]} == 0)); then
  echo "OK: all ${#SYSCTL_KEYS[@]} sysctls and the nofile limit meet the recommendation."
  exit 0
fi
echo "SHORT: ${short[*]}"
echo "See what would change: tuning/apply.sh; change it: sudo tuning/apply.sh --apply."
if [[ " ${short[*]} " == *" nofile "* ]]; then
  echo "nofile: the new limit reaches volley through LimitNOFILE in volley.service, or a new"
  echo "login of the volley user after limits.conf is installed; this shell keeps its own."
fi
exit 1
