# shellcheck shell=bash
# Shared by the launcher scripts that run from the repository (local_single.sh,
# local_multiprocess.sh, tpu_pod.sh); sourced, not executed. The sbatch scripts keep their own
# copy because sbatch runs a spooled copy of the script, away from this file.

quote_cmd() {  # print argv as one line that bash (and Python's shlex.split) reads back exactly
  local a out=() flag=""
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$a")
    elif [[ $a != *"'"* ]]; then
      [[ $a =~ ^--[A-Za-z0-9_.-]+= ]] && flag=${BASH_REMATCH[0]} || flag=""
      out+=("${flag}'${a#"$flag"}'")
    else
      out+=("$(printf '%q' "$a")")
    fi
  done
  printf '%s\n' "${out[*]}"
}
