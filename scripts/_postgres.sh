# Sourced by scripts/run and scripts/test (after ensure_venv): without DATABASE_URL, start
# the private PostgreSQL under the var dir (scripts/pg.py) and point DATABASE_URL at it. A
# server this script started is stopped when the script exits, also on Ctrl-C or SIGTERM;
# one that was already running (another scripts/run) is left to the script that started it.
ensure_postgres() {
    if [ -n "${DATABASE_URL:-}" ]; then return; fi
    local state
    state=$(.venv/bin/python scripts/pg.py start)  # "<url> started" or "<url> running"
    export DATABASE_URL=${state% *}
    if [ "${state##* }" = started ]; then
        trap '.venv/bin/python scripts/pg.py stop' EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
    fi
}
