# The raw (bash) cell driver of airlock-agent (crates/airlock-agent/src/repl).
# Started as `bash -c DRIVER`; sources each cell at the top level, so that
# variables, functions, options and the cwd survive from cell to cell, and
# talks to the agent only on fds 3 (commands) and 4 (reports), which the
# cell and its children do not see.
#
# SIGINT (timeout, cancel): the agent kills the cell's other processes
# first, then signals bash. The trap sets a flag and a DEBUG trap that,
# with `extdebug`, makes every next command return (status 2 simulates
# `return`), unwinding nested functions up to the sourced cell.
__airlock_base=${#BASH_SOURCE[@]}
__airlock_stop=
__airlock_unwind='if [[ -n $__airlock_stop && ${#BASH_SOURCE[@]} -gt $__airlock_base ]]; then return 2; fi'
trap '__airlock_stop=1; shopt -s extdebug; trap "$__airlock_unwind" DEBUG' INT
printf 'ready\n' >&4
while IFS=' ' read -r __airlock_verb __airlock_id __airlock_path __airlock_count <&3; do
  case $__airlock_verb in
  cell)
    __airlock_names=() __airlock_olds=() __airlock_had=()
    while (( __airlock_count-- > 0 )); do
      IFS= read -r __airlock_pair <&3
      __airlock_name=${__airlock_pair%%=*}
      __airlock_names+=("$__airlock_name")
      if [[ -v $__airlock_name ]]; then
        __airlock_had+=(1) __airlock_olds+=("${!__airlock_name}")
      else
        __airlock_had+=(0) __airlock_olds+=("")
      fi
      export "$__airlock_pair"
    done
    __airlock_stop=
    source "$__airlock_path" 3<&- 4>&-
    __airlock_status=$?
    trap - DEBUG
    shopt -u extdebug
    [[ -n $__airlock_stop ]] && __airlock_status=130
    __airlock_stop=
    for __airlock_i in "${!__airlock_names[@]}"; do
      if (( __airlock_had[__airlock_i] )); then
        export "${__airlock_names[__airlock_i]}=${__airlock_olds[__airlock_i]}"
      else
        unset "${__airlock_names[__airlock_i]}"
      fi
    done
    printf 'done %s %d\n' "$__airlock_id" "$__airlock_status" >&4
    ;;
  reseed)
    # After a restore from a memory template: $RANDOM restarts from the
    # agent's fresh seed (every clone would otherwise share the sequence).
    RANDOM=$__airlock_id
    printf 'reseeded\n' >&4
    ;;
  *) printf 'error unknown command\n' >&4 ;;
  esac
done
