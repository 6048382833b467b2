#!/usr/bin/env bash
# ember side by side with its peers: llama.cpp's own llama-server (and llama-bench), and
# llama-cpp-python's server. Same model file, same thread count, same client (`ember bench`),
# one server at a time, all on loopback. llama.cpp is built from the very source that the
# installed llama-cpp-python vendors, so the engines underneath are the same version.
#
#   bench/peers.sh                                # all peers; the first run builds llama.cpp (~20 min on 2 cores)
#   PEERS="llama-server ember" bench/peers.sh     # a subset (llama-bench bare-loop llama-server llama-cpp-python ember)
#   REPEAT_PENALTY=1.0 bench/peers.sh             # the repeat penalty sent to every server (default 1.1)
#   NO_DOC=1 bench/peers.sh                       # leave docs/benchmarks.md alone
#
# Results: bench/results/<UTC time>/*.json (git-ignored), and the table between the
# `<!-- bench:start -->` and `<!-- bench:end -->` markers of docs/benchmarks.md.
# Cache (source, build, a model home, a venv for llama-cpp-python's server): bench/.cache/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
CACHE=$ROOT/bench/.cache
MODEL_NAME=${MODEL_NAME:-smollm2:135m}
THREADS=${THREADS:-2}
PARALLEL=${PARALLEL:-8}
CTX_PER_SEQUENCE=4096
PREFIX_TOKENS=${PREFIX_TOKENS:-1500}
MAX_TOKENS=${MAX_TOKENS:-128}
REQUEST_TIMEOUT=${REQUEST_TIMEOUT:-120}
# A backstop per `ember bench` call, on top of its per-request timeout.
CALL_TIMEOUT=${CALL_TIMEOUT:-900}
# Every server gets the same sampling, sent in each request: greedy, and this repeat penalty
# (ember's OpenAI default is 1.1, llama-server's 1.0; 1 turns it off).
REPEAT_PENALTY=${REPEAT_PENALTY:-1.1}
PEERS=${PEERS:-"llama-bench bare-loop llama-server llama-cpp-python ember"}
STAMP=${STAMP:-$(date -u +%Y%m%dT%H%M%SZ)}  # also the prompts' seed: a rerun of one peer can reuse a run's
RESULTS=${RESULTS:-$ROOT/bench/results/$STAMP}
EMBER_BENCH_HOME=${EMBER_BENCH_HOME:-$CACHE/home}

VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
SOURCE=$CACHE/src/llama_cpp_python-$VERSION
BUILD=$CACHE/build-$VERSION
LCP_VENV=$CACHE/lcp-venv

log() { printf '[peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
wants() { [[ " $PEERS " == *" $1 "* ]]; }

# -- processes: every server is started here, in its own process group, and stopped at exit --

STARTED=()
LAST_PID=

start_server() { # log-file command...: start in the background, its pid in LAST_PID
    local logfile=$1
    shift
    # setsid: the server and whatever it spawns (ember's worker processes) form one group
    # that stop_server can end without touching anything else.
    setsid "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
}

stop_server() { # pid
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop in 15 s; killing it"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do
        stop_server "$pid"
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_ready() { # url pid logfile: until GET url/models answers, the process dies, or 180 s pass
    local url=$1 pid=$2 logfile=$3
    for _ in $(seq 1 720); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logfile" >&2; die "server (pid $pid) exited; log: $logfile"; }
        curl -sf --noproxy '*' -o /dev/null "$url/models" && return 0
        sleep 0.25
    done
    die "server at $url not ready after 180 s; log: $logfile"
}

bench() { # label url pid output [ember bench flags...]
    local label=$1 url=$2 pid=$3 out=$4
    shift 4
    log "$label: ember bench $*"
    timeout --signal=INT "$CALL_TIMEOUT" "$PY" -m ember bench --url "$url" --model "$MODEL_NAME" --label "$label" \
        --max-tokens "$MAX_TOKENS" --temperature 0 --repeat-penalty "$REPEAT_PENALTY" --timeout "$REQUEST_TIMEOUT" --memory-pid "$pid" --json "$@" \
        >"$out.tmp" || log "$label: ember bench exited with $? (failed requests are in the JSON)"
    if [[ -s $out.tmp ]]; then mv "$out.tmp" "$out"; else rm -f "$out.tmp"; log "$label: no result"; fi
}

# -- llama.cpp, from the source llama-cpp-python vendors --------------------------------------

build_llama_cpp() {
    if [[ -x $BUILD/bin/llama-server && -x $BUILD/bin/llama-bench ]]; then
        log "reusing $BUILD"
        return
    fi
    mkdir -p "$CACHE/src"
    if [[ ! -d $SOURCE ]]; then
        local sdist
        sdist=$(ls "$CACHE"/src/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)
        if [[ -z $sdist ]]; then
            log "downloading the llama-cpp-python $VERSION source distribution"
            "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE/src"
            sdist=$(ls "$CACHE"/src/llama_cpp_python-"$VERSION".tar.gz)
        fi
        tar -xzf "$sdist" -C "$CACHE/src"
    fi
    log "building llama-server and llama-bench (llama.cpp vendored by llama-cpp-python $VERSION)"
    # No network at build time: no curl/OpenSSL (loopback HTTP only), no web UI download.
    cmake -S "$SOURCE/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$CACHE/configure.log"
    cmake --build "$BUILD" -j"$(nproc)" --target llama-server llama-bench >"$CACHE/build.log"
}

model_path() {
    EMBER_BENCH_HOME=$EMBER_BENCH_HOME MODEL_NAME=$MODEL_NAME "$PY" - <<'EOF'
import os
from pathlib import Path

from ember.errors import EmberError
from ember.runtime.store import ModelStore

store = ModelStore(Path(os.environ["EMBER_BENCH_HOME"]))
try:
    record = store.get(os.environ["MODEL_NAME"])
except EmberError:
    record = store.pull(os.environ["MODEL_NAME"])
print(record.path)
EOF
}

# -- the peers ---------------------------------------------------------------------------------

run_llama_bench() {
    log "llama-bench -t $THREADS -p 128 -n 128"
    "$BUILD/bin/llama-bench" -m "$MODEL" -t "$THREADS" -p 128 -n 128 -o json >"$RESULTS/llama-bench.json" \
        2>"$RESULTS/llama-bench.log"
}

run_bare_loop() {
    # The ceiling row: what llama.cpp and a Python loop decode with no server around them.
    log "bare loop over the batch API at 1, 4, 8 and 16 sequences"
    "$PY" bench/bare_loop.py "$MODEL" --threads "$THREADS" --sequences 1,4,8,16 --json "$RESULTS/bare-loop.json"
}

run_llama_server() {
    local port logfile url
    port=$(free_port)
    logfile=$RESULTS/llama-server.log
    url=http://127.0.0.1:$port/v1
    log "llama-server -np $PARALLEL on port $port"
    start_server "$logfile" "$BUILD/bin/llama-server" -m "$MODEL" -t "$THREADS" -c $((PARALLEL * CTX_PER_SEQUENCE)) \
        -np "$PARALLEL" --host 127.0.0.1 --port "$port"
    local pid=$LAST_PID
    wait_ready "$url" "$pid" "$logfile"
    bench llama-server "$url" "$pid" "$RESULTS/llama-server.json" --concurrency 1,8,16 --seed "$STAMP"
    bench llama-server "$url" "$pid" "$RESULTS/llama-server-prefix.json" --concurrency 1,8 \
        --shared-prefix "$PREFIX_TOKENS" --max-tokens 32 --seed "$STAMP-prefix"
    stop_server "$pid"
}

run_llama_cpp_python() {
    # Its [server] extras live in a venv of their own: ember's venv stays as ember needs it.
    # pip has the llama-cpp-python wheel cached from ember's install, so nothing is rebuilt.
    if ! "$LCP_VENV/bin/python" -c 'import llama_cpp.server.app, uvicorn' 2>/dev/null; then
        log "creating $LCP_VENV with llama-cpp-python[server]==$VERSION"
        "$PY" -m venv "$LCP_VENV"
        "$LCP_VENV/bin/pip" install --quiet "llama-cpp-python[server]==$VERSION"
    fi
    local port logfile url
    port=$(free_port)
    logfile=$RESULTS/llama-cpp-python.log
    url=http://127.0.0.1:$port/v1
    log "python -m llama_cpp.server on port $port"
    start_server "$logfile" "$LCP_VENV/bin/python" -m llama_cpp.server --model "$MODEL" --model_alias "$MODEL_NAME" \
        --n_threads "$THREADS" --n_ctx "$CTX_PER_SEQUENCE" --host 127.0.0.1 --port "$port"
    local pid=$LAST_PID
    wait_ready "$url" "$pid" "$logfile"
    bench llama-cpp-python "$url" "$pid" "$RESULTS/llama-cpp-python.json" --concurrency 1,8 --seed "$STAMP"
    stop_server "$pid"
}

ember_load_seconds() { # base-url: seconds one load of the model takes, unloaded first
    BASE=$1 MODEL_NAME=$MODEL_NAME "$PY" - <<'EOF_LOAD'
import os
import time

import httpx

base, model = os.environ["BASE"], os.environ["MODEL_NAME"]
with httpx.Client(base_url=base, timeout=300, trust_env=False) as client:
    # keep_alive 0 unloads; then an empty prompt loads (Ollama's API for both).
    client.post("/api/generate", json={"model": model, "keep_alive": 0}).raise_for_status()
    started = time.perf_counter()
    response = client.post("/api/generate", json={"model": model, "prompt": ""})
    wall = time.perf_counter() - started
    response.raise_for_status()
# Ollama reports load_duration (ns) on a load; where the server does not, the request's
# wall time is the load plus a loopback round trip.
reported = response.json().get("load_duration")
print(f"{reported / 1e9:.3f} load_duration" if reported else f"{wall:.3f} wall")
EOF_LOAD
}

run_ember() {
    local port logfile base
    port=$(free_port)
    logfile=$RESULTS/ember.log
    base=http://127.0.0.1:$port
    log "ember serve (EMBER_NUM_PARALLEL=$PARALLEL) on port $port"
    start_server "$logfile" env EMBER_HOME="$EMBER_BENCH_HOME" EMBER_HOST="127.0.0.1:$port" \
        EMBER_NUM_PARALLEL="$PARALLEL" EMBER_NUM_THREAD="$THREADS" EMBER_CONFIG= "$PY" -m ember serve
    local pid=$LAST_PID
    wait_ready "$base/v1" "$pid" "$logfile"
    local first second
    read -r first source < <(ember_load_seconds "$base")
    read -r second source < <(ember_load_seconds "$base")
    log "ember model load: ${first} s, then ${second} s ($source)"
    printf '{"load_duration_s": [%s, %s], "measured_by": "%s"}\n' "$first" "$second" "$source" \
        >"$RESULTS/ember-load.json"
    bench ember "$base/v1" "$pid" "$RESULTS/ember.json" --concurrency 1,8,16 --seed "$STAMP"
    bench ember "$base/v1" "$pid" "$RESULTS/ember-prefix.json" --concurrency 1,8 \
        --shared-prefix "$PREFIX_TOKENS" --max-tokens 32 --seed "$STAMP-prefix"
    curl -sf --noproxy '*' "$base/api/ps" >"$RESULTS/ember-ps.json" || true
    stop_server "$pid"
}

write_meta() {
    local build_info=unknown engine
    if [[ -x $BUILD/bin/llama-server ]]; then
        build_info=$("$BUILD/bin/llama-server" --version 2>&1 | sed -n 's/^version: //p' | head -n 1)
    fi
    # Which engine ember served with, as its settings choose it (EMBER_ENGINE; older trees had one).
    engine=$(EMBER_CONFIG= "$PY" -c 'from ember.config import Settings; print(getattr(Settings(), "engine", "inprocess"))')
    RESULTS_DIR=$RESULTS EMBER_BENCH_HOME=$EMBER_BENCH_HOME MODEL_NAME=$MODEL_NAME VERSION=$VERSION \
        BUILD_INFO=$build_info ENGINE=${engine:-unknown} PARALLEL=$PARALLEL THREADS=$THREADS \
        MAX_TOKENS=$MAX_TOKENS CTX=$CTX_PER_SEQUENCE REPEAT_PENALTY=$REPEAT_PENALTY "$PY" - <<'EOF_META'
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import ember
from ember.runtime.store import ModelStore

env = os.environ
cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")), "unknown CPU")
mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
record = ModelStore(Path(env["EMBER_BENCH_HOME"])).get(env["MODEL_NAME"])
parallel, threads, ctx = env["PARALLEL"], env["THREADS"], int(env["CTX"])
meta = {
    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "nproc": os.cpu_count(),
    "threads": int(threads),
    "cpu": cpu,
    "mem": f"{mem_kib / 1024 / 1024:.0f} GiB",
    "llama_cpp_python": env["VERSION"],
    "llama_cpp_build": env["BUILD_INFO"],
    "ember": ember.__version__,
    "ember_engine": env["ENGINE"],
    "model": env["MODEL_NAME"],
    "model_file": f"{record.metadata.name or record.path.name}, {record.metadata.quantization}, "
                  f"{record.size / 1e6:.0f} MB",
    # Only the servers whose results are in this directory (a run may cover a subset of PEERS).
    "servers": "; ".join(
        command
        for name, command in (
            ("llama-server", f"`llama-server -t {threads} -c {int(parallel) * ctx} -np {parallel}`"),
            ("llama-cpp-python", f"`python -m llama_cpp.server --n_threads {threads} --n_ctx {ctx}`"),
            ("ember", f"`ember serve` with EMBER_NUM_PARALLEL={parallel} EMBER_NUM_THREAD={threads}"),
        )
        if (Path(env["RESULTS_DIR"]) / f"{name}.json").exists()
    ),
    "load": f"~64-token prompts, distinct per request and the same for every server, "
            f"max_tokens {env['MAX_TOKENS']}, temperature 0 and repeat_penalty {env['REPEAT_PENALTY']} sent to "
            "every server, 2 x concurrency requests per level "
            "(closed loop), after one untimed warm-up request",
    "titles": {"llama-server": f"llama-server -np {parallel}", "llama-cpp-python": "llama_cpp.server",
               "ember": f"ember (num_parallel {parallel})"},
}
(Path(env["RESULTS_DIR"]) / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
EOF_META
}

mkdir -p "$RESULTS" "$CACHE"
log "results in $RESULTS"
if wants llama-bench || wants llama-server; then build_llama_cpp; fi
MODEL=$(model_path)
log "model $MODEL_NAME: $MODEL"
if wants llama-bench; then run_llama_bench; fi
if wants bare-loop; then run_bare_loop; fi
if wants llama-server; then run_llama_server; fi
if wants llama-cpp-python; then run_llama_cpp_python; fi
if wants ember; then run_ember; fi
write_meta
if [[ -z ${NO_DOC:-} ]]; then
    "$PY" -m ember.bench.peers "$RESULTS" --doc docs/benchmarks.md
fi
"$PY" -m ember.bench.peers "$RESULTS"
