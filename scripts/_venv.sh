# Sourced by scripts/run and scripts/test: make .venv with the given requirements file.
# Re-installs only when the requirements change (a checksum stamp in .venv).
ensure_venv() {
    local requirements=$1
    local python=${PYTHON:-python3}
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "Demur needs Python 3.11 or newer; set PYTHON=/path/to/python3.11 if it is elsewhere." >&2
        exit 1
    fi
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    local stamp=.venv/.demur-$(basename "$requirements").sha256
    local sum
    sum=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
        .venv/bin/python -m pip install --disable-pip-version-check -q -r "$requirements"
        echo "$sum" > "$stamp"
    fi
}
