#!/usr/bin/env python3
# Run: .venv/bin/python bench/grammar_peers.py  (needs the test extra: llama-cpp-python[server])
"""Constrained vs unconstrained tok/s: ember and llama-cpp-python's server, one at a time, same model
file, 2 threads, the same schema; loopback only; bounded runs."""
import json, os, subprocess, sys, time, socket
import httpx

PY = sys.executable
HOME = str(__import__("pathlib").Path(__file__).resolve().parent / ".cache" / "grammar-home")
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "mood": {"enum": ["happy", "sad", "calm"]}, "tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
    "minItems": 1, "maxItems": 4}, "city": {"type": "string", "maxLength": 20}},
    "required": ["name", "age", "mood", "tags", "city"], "additionalProperties": False}
PROMPTS = ["Describe a person called Ada.", "Invent a character for a story.", "Who lives in Oslo?",
           "Write about a sailor.", "Describe a teacher."]

def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait(url, proc):
    for _ in range(600):
        if proc.poll() is not None: raise SystemExit(f"server exited {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200: return
        except httpx.HTTPError: pass
        time.sleep(0.2)
    raise SystemExit("no answer")

def run(base, model, fmt, rounds=2):
    client = httpx.Client(timeout=300)
    body = lambda p, seed: {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": 160,
                            "temperature": 0.8, "seed": seed, "repeat_penalty": 1.1, **({"response_format": fmt} if fmt else {})}
    client.post(base + "/chat/completions", json=body("hi", 0)).raise_for_status()
    tokens = 0; seconds = 0.0
    for r in range(rounds):
        for i, p in enumerate(PROMPTS):
            t = time.perf_counter()
            resp = client.post(base + "/chat/completions", json=body(p, 10 * r + i)); resp.raise_for_status()
            seconds += time.perf_counter() - t
            tokens += resp.json()["usage"]["completion_tokens"]
            if fmt:
                try: json.loads(resp.json()["choices"][0]["message"]["content"])
                except ValueError: print("  invalid JSON from", base, model, file=sys.stderr)
    return tokens / seconds

def main():
    env = {**os.environ, "EMBER_HOME": HOME, "EMBER_CACHE": "off", "EMBER_NUM_THREAD": "2", "EMBER_NUM_PARALLEL": "1"}
    subprocess.run([PY, "-m", "ember", "pull", "smollm2:135m"], env=env, check=True, capture_output=True)
    from ember.runtime.store import ModelStore
    path = ModelStore(__import__("pathlib").Path(HOME)).get("smollm2:135m").path
    results = {}
    p = port(); env["EMBER_HOST"] = f"127.0.0.1:{p}"
    proc = subprocess.Popen([PY, "-m", "ember", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(f"http://127.0.0.1:{p}/health", proc)
        base = f"http://127.0.0.1:{p}/v1"
        results["ember free"] = run(base, "smollm2:135m", None)
        results["ember json_schema"] = run(base, "smollm2:135m", {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}})
    finally:
        proc.terminate(); proc.wait(30)
    p = port()
    proc = subprocess.Popen([PY, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1", "--port", str(p),
                             "--n_ctx", "4096", "--n_threads", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(f"http://127.0.0.1:{p}/v1/models", proc)
        base = f"http://127.0.0.1:{p}/v1"
        results["llama-cpp-python free"] = run(base, "m", None)
        results["llama-cpp-python json_schema"] = run(base, "m", {"type": "json_object", "schema": SCHEMA})
    finally:
        proc.terminate(); proc.wait(30)
    for k, v in results.items(): print(f"{k}: {v:.1f} tok/s")

main()
