"""A batch of 20 requests on a local cluster: time, peak memory, and what `flakebot clean --all`
leaves behind.

The requests are twenty tools on two small crates of a local registry: ten on `quickhex`, which
passes as published, and ten on `todohex`, which prints `todo` until the scripted model's edit
makes it print hex. Every request is its own spec (its own name), so each one forks, builds,
tests, deploys its own flake and writes its own manifest. The batch runs as a user runs it,
`flakebot batch REQUESTS --parallel 4 --candidates 1`, on a local Ray cluster that it starts.

Memory is sampled every half second. "Processes" means the batch's driver and every process
under it: Ray's daemons and workers, cargo in its sandboxes, nix. The figure is the sum of their
proportional set sizes (PSS), so pages that Ray's workers share are counted once. The machine's
used memory (MemTotal - MemAvailable) above what it was before the batch is reported too.
Afterwards `flakebot clean --all` runs. The benchmark then checks that no process of the batch is
left, that no workspace, GC root or deployment is left in FLAKEBOT_HOME, and that no store path
of the batch is left.

    .venv/bin/python -m bench.bench_batch [--requests 20] [--parallel 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
QUICKHEX = """use std::io::Read;
fn main() {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).unwrap();
    let hex: Vec<String> = input.iter().map(|b| format!("{:02x}", b)).collect();
    println!("{}", hex.join(" "));
}
"""


def crate(registry: Path, name: str, main: str) -> None:
    directory = registry / f"{name}-0.1.0"
    (directory / "src").mkdir(parents=True)
    (directory / "Cargo.toml").write_text(
        f'[package]\nname = "{name}"\nversion = "0.1.0"\n'
        'description = "hex dump tool"\nlicense = "MIT"\n'
    )
    (directory / ".cargo-checksum.json").write_text('{"files": {}, "package": null}')
    (directory / "src" / "main.rs").write_text(main)


def requests(directory: Path, count: int) -> Path:
    lines = []
    for index in range(count):
        crate_name = "quickhex" if index % 2 == 0 else "todohex"
        spec = {
            "name": f"hex{index:02d}",
            "summary": f"Tool {index}: prints the bytes of stdin as hex.",
            "tool_kind": "cli",
            "search_queries": ["hex dump tool"],
            "preferred_crates": [crate_name],
            "acceptance": [
                {"name": "dumps", "stdin": "AB", "stdout": {"match": "contains", "value": "41 42"}}
            ],
        }
        lines.append(json.dumps({"id": f"hex{index:02d}", "spec": spec}))
    path = directory / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def script(directory: Path) -> Path:
    fix = {"summary": "print hex", "edits": [{"op": "write", "path": "src/main.rs",
                                             "content": QUICKHEX}]}  # fmt: skip
    path = directory / "script.json"
    path.write_text(json.dumps({"replies": [{"role": "coder", "candidate": "todohex",
                                            "json": fix, "repeat": True}]}))  # fmt: skip
    return path


def tree(root: int, marker: str, temp_dir: Path) -> list[int]:
    """`root` and its descendants, and any process marked as the batch's (reparented ones)."""
    parents: dict[int, int] = {}
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if marker.encode() in (entry / "environ").read_bytes() or any(
                os.readlink(fd).startswith(str(temp_dir)) for fd in (entry / "fd").iterdir()
            ):
                found.add(pid)
        except (OSError, ValueError, IndexError):
            continue
    found.add(root)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                grew = True
    return sorted(pid for pid in found if pid in parents)


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def used_kib() -> int:
    fields = dict(
        (line.split(":")[0], int(line.split()[1]))
        for line in Path("/proc/meminfo").read_text().splitlines()
    )
    return fields["MemTotal"] - fields["MemAvailable"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=4)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fbbatch-", dir="/tmp"))
    home, registry = work / "home", work / "registry"
    crate(registry, "quickhex", QUICKHEX)
    crate(registry, "todohex", 'fn main() { println!("todo"); }\n')
    marker = f"FLAKEBOT_BENCH_BATCH={work.name}"
    env = os.environ | {
        "FLAKEBOT_HOME": str(home),
        "RAY_TMPDIR": str(work / "ray"),
        "FLAKEBOT_BENCH_BATCH": work.name,
        "FLAKEBOT_LOG_LEVEL": "warning",
    }
    (work / "ray").mkdir()
    results = work / "results.jsonl"
    argv = [str(BIN / "flakebot"), "batch", str(requests(work, options.requests)),
            f"--out={results}", f"--parallel={options.parallel}", "--candidates=1",
            f"--registry=local:{registry}", f"--model=scripted:{script(work)}"]  # fmt: skip
    baseline = used_kib()
    peak = {"pss": 0, "used": 0, "processes": 0}
    started = time.monotonic()
    batch = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = tree(batch.pid, marker, work / "ray")
            peak["pss"] = max(peak["pss"], sum(pss_kib(pid) for pid in pids))
            peak["used"] = max(peak["used"], used_kib() - baseline)
            peak["processes"] = max(peak["processes"], len(pids))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    summary, _ = batch.communicate(timeout=3600)
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    written = [json.loads(line) for line in results.read_text().splitlines()]
    deployed = [result for result in written if result["status"] == "deployed"]
    store_paths = [result["manifest"]["store_path"] for result in deployed]
    cleaned = subprocess.run([str(BIN / "flakebot"), "clean", "--all"], env=env,
                             capture_output=True, text=True, check=False)  # fmt: skip
    time.sleep(2)
    left = {
        "processes": [pid for pid in tree(os.getpid(), marker, work / "ray") if pid != os.getpid()],
        "store_paths": [path for path in store_paths if Path(path).exists()],
        **{
            name: sorted(str(p) for p in (home / name).iterdir()) if (home / name).exists() else []
            for name in ("workspaces", "gcroots", "deployments")
        },
    }
    figures = {
        "requests": options.requests,
        "parallel": options.parallel,
        "deployed": len(deployed),
        "batch_exit": batch.returncode,
        "wall_s": round(seconds, 1),
        "median_request_s": sorted(r["seconds"] for r in written)[len(written) // 2],
        "peak_pss_mib": round(peak["pss"] / 1024),
        "peak_used_above_baseline_mib": round(peak["used"] / 1024),
        "peak_processes": peak["processes"],
        "clean_exit": cleaned.returncode,
        "left_after_clean": left,
        "summary": [line for line in summary.splitlines() if " requests: " in line],
    }
    print(json.dumps(figures, indent=1))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "batch.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
