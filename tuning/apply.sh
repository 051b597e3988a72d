#!/usr/bin/env bash
usage() {
  cat <<'EOF'
Usage: tuning/apply.sh [--apply] [--help]

Brings this box up to what volley needs (see tuning/README.md). Without --apply it is a
dry run: it changes nothing and prints the exact commands it would run. With --apply it
runs them (as root). Safe to run twice: it only changes what differs, and it never lowers
a value that is already better than tuning/sysctl.conf recommends (a larger fs.file-max,
a larger tcp_mem sized by the kernel from RAM).

Steps, in order:
  1. sysctl -w for every key that tuning/check.sh would call SHORT or MISSING
  2. /etc/sysctl.d/60-volley.conf: the values step 1 leaves live, so a reboot restores
     them (generated, not copied: copying sysctl.conf would lower fs.file-max and
     fs.nr_open, which systemd raises at boot, on every reboot)
  3. /etc/security/limits.d/60-volley.conf from tuning/limits.conf (nofile for logins)
  4. /etc/systemd/system/volley.service from tuning/volley.service, then
     systemctl daemon-reload. It does not enable or start the service. And
     /etc/volley/volley.toml from tuning/volley.toml when there is none yet (never
     overwritten: it is the operator's settings once installed).
  5. prints the CPU plan: which cores run shards (volley serve --cpus) and which take
     network interrupts. IRQ affinity is printed, never applied: it depends on the NIC
     and on irqbalance.

Environment (for tests; the defaults are the real system):
  TUNING_PROC_ROOT  default /proc. When set to anything else, --apply writes the values
                    into $TUNING_PROC_ROOT/sys/... instead of calling sysctl.
  TUNING_ETC_ROOT   default /etc. Where steps 2-4 install files; when not /etc,
                    systemctl daemon-reload is printed but not run. --apply refuses a
                    fake TUNING_PROC_ROOT with the real /etc, and the reverse.
  TUNING_CPUS       number of online CPUs for the CPU plan (default: this box's).
EOF
}
set -euo pipefail

apply=0
for arg in "$@"; do
  case $arg in
    --apply) apply=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      printf 'apply.sh: unknown argument %s\n\n' "$arg" >&2
      usage >&2
      exit 2
      ;;
  esac
done

# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ETC_ROOT=${TUNING_ETC_ROOT:-/etc}

load_sysctl_conf
# A fake sysctl tree with the real /etc (or the reverse) is never what a test or an
# operator wants: refuse, so a test cannot install into the real /etc by forgetting one.
proc_is_real=0 etc_is_real=0
[[ $PROC_ROOT == /proc ]] && proc_is_real=1
[[ $ETC_ROOT == /etc ]] && etc_is_real=1
if ((apply && proc_is_real != etc_is_real)); then
  die "TUNING_PROC_ROOT=$PROC_ROOT with TUNING_ETC_ROOT=$ETC_ROOT: set both to fake trees, or neither"
fi
if ((apply)) && [[ $PROC_ROOT == /proc || $ETC_ROOT == /etc ]] && ((EUID != 0)); then
  die "--apply changes $PROC_ROOT/sys and $ETC_ROOT: run it as root (or without --apply to see the commands)"
fi

failures=0
changes=0

# Quotes a value for the printed command only when it has spaces ("4096 131072 6291456");
# values are digits and spaces, checked by load_sysctl_conf and by the kernel.
shell_word() {
  if [[ $1 == *" "* ]]; then printf "'%s'" "$1"; else printf '%s' "$1"; fi
}

# Installs CONTENT (a string) as FILE with mode 0644 unless FILE already holds exactly it.
# Dry run: prints a heredoc command that would do the same.
install_content() {
  local file=$1 content=$2 tmp
  if [[ -f $file && $(<"$file") == "$content" ]]; then
    echo "# $file: already up to date"
    return 1
  fi
  changes=$((changes + 1))
  if ((apply)); then
    mkdir -p "$(dirname "$file")"
    tmp=$(mktemp "$file.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$file"
    echo "wrote $file"
  else
    printf "cat > %s <<'EOF'\n%s\nEOF\n" "$file" "$content"
  fi
}

# Installs SOURCE as FILE (mode 0644) unless FILE is already identical.
install_file() {
  local source=$1 file=$2
  if [[ -f $file ]] && cmp -s "$source" "$file"; then
    echo "# $file: already up to date"
    return 1
  fi
  changes=$((changes + 1))
  echo "install -D -m 0644 $source $file"
  if ((apply)); then
    install -D -m 0644 "$source" "$file"
  fi
}

if ((apply)); then
  echo "volley host tuning: applying (sysctls in $PROC_ROOT/sys, files in $ETC_ROOT)"
else
  echo "volley host tuning: DRY RUN, nothing is changed; these are the commands --apply runs"
fi

echo
echo "## 1. sysctls (live)"
persist=(
  "# volley: written by tuning/apply.sh from tuning/sysctl.conf (the reasons are there)."
  "# Each value is the better of the box's value and the recommendation, so a reboot"
  "# restores what apply.sh left live and never lowers what the kernel or systemd set."
)
for i in "${!SYSCTL_KEYS[@]}"; do
  key=${SYSCTL_KEYS[i]} recommended=${SYSCTL_RECS[i]} rule=${SYSCTL_RULES[i]}
  optional=${SYSCTL_OPTIONAL[i]}
  prefix=""
  ((optional)) && prefix="-"
  if ! current=$(read_sysctl "$key"); then
    if ((optional)); then
      echo "# $key: not present here (optional); set at boot if it appears"
      persist+=("-$key = $recommended")
      continue
    fi
    current=""
  fi
  target=$(better_value "$rule" "$current" "$recommended")
  persist+=("$prefix$key = $target")
  if [[ $target == "$current" ]]; then
    echo "# $key: $current meets $recommended ($rule)"
    continue
  fi
  changes=$((changes + 1))
  echo "sysctl -w $key=$(shell_word "$target")"
  ((apply)) || continue
  if [[ $PROC_ROOT != /proc ]]; then
    path=$(sysctl_path "$key")
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$target" >"$path"
  elif ! sysctl -q -w "$key=$target"; then
    if ((optional)); then
      echo "# $key: could not be set (optional), ignored"
    else
      echo "apply.sh: could not set $key (in a container, some keys belong to the host)" >&2
      failures=$((failures + 1))
    fi
  fi
done

echo
echo "## 2. sysctls (at boot)"
install_content "$ETC_ROOT/sysctl.d/60-volley.conf" "$(printf '%s\n' "${persist[@]}")" || true

echo
echo "## 3. nofile for logins of the volley user (pam_limits)"
install_file "$TUNING_DIR/limits.conf" "$ETC_ROOT/security/limits.d/60-volley.conf" || true

echo
echo "## 4. systemd unit"
if install_file "$TUNING_DIR/volley.service" "$ETC_ROOT/systemd/system/volley.service"; then
  echo "systemctl daemon-reload"
  if ((apply)); then
    if [[ $ETC_ROOT == /etc ]] && command -v systemctl >/dev/null; then
      systemctl daemon-reload
    else
      echo "# daemon-reload skipped: not the real /etc, or no systemctl here"
    fi
  fi
fi

# The config file is the operator's once installed: put it in place only when missing.
volley_toml="$ETC_ROOT/volley/volley.toml"
if [[ -f $volley_toml ]]; then
  echo "# $volley_toml: present, kept as it is (compare with tuning/volley.toml)"
else
  install_file "$TUNING_DIR/volley.toml" "$volley_toml" || true
fi

echo
echo "## 5. CPU plan (printed only)"
cpus=${TUNING_CPUS:-$(getconf _NPROCESSORS_ONLN)}
[[ $cpus =~ ^[1-9][0-9]*$ ]] || die "TUNING_CPUS=$cpus: must be a whole number >= 1"
if ((cpus > 2)); then
  last=$((cpus - 1))
  if ((cpus <= 62)); then
    shard_mask=$(printf '0x%x' $(((1 << cpus) - 2)))
  else
    shard_mask="(list form only past 62 CPUs)"
  fi
  # The NIC that carries the default route, as a starting pattern for its IRQ names.
  nic=$(ip route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}') || true
  nic=${nic:-eth0}
  cat <<EOF
$cpus CPUs: core 0 takes network interrupts, cores 1-$last run shards. One core for
interrupts keeps softirq work (ACKs of a 128k broadcast, SYN storms) off the shards.
  shard cores: 1-$last, mask $shard_mask
    add to /etc/volley/volley.toml: cpus = "1-$last" (the flag: --cpus 1-$last)
  IRQ core:    0, mask 0x1
    systemctl disable --now irqbalance    # it would move the IRQs back
    for irq in \$(awk '/$nic/ {sub(":", "", \$1); print \$1}' /proc/interrupts); do
      echo 0 > /proc/irq/\$irq/smp_affinity_list
    done
    (IRQ names vary by driver, e.g. virtio0-input.0 or mlx5_comp0: check the pattern
    against /proc/interrupts first.)
EOF
else
  cat <<EOF
$cpus CPU(s): no core to spare. Every core runs a shard and also takes network
interrupts (both: mask $(printf '0x%x' $(((1 << cpus) - 1)))); reserving one for interrupts would halve the shards.
Run volley serve without --cpus and leave irqbalance as it is.
EOF
fi

echo
if ((apply)); then
  if ((failures)); then
    echo "done with $failures failure(s); see the messages above, then run tuning/check.sh"
    exit 1
  fi
  echo "done ($changes change(s)). Next: install -m 0755 target/release/volley /usr/local/bin/volley;"
  echo "systemctl enable --now volley; tuning/check.sh"
elif ((changes)); then
  echo "dry run: $changes change(s) listed above; run with --apply (as root) to make them"
else
  echo "dry run: nothing to change"
fi
