"""Protocol cost: JSON and pickle round trips of a large TestReport, the biggest message of a run.

Every message goes through the recorder as JSON and through Ray as a pickle, so their cost is paid
once per step and candidate. Run: .venv/bin/python -m bench.bench_protocol
"""

from __future__ import annotations

import pickle

import messages as m
from bench._timing import median_seconds


def big_report(diagnostics: int, tests: int) -> m.TestReport:
    warnings = [
        m.Diagnostic(
            level="warning",
            code="clippy::needless_return",
            message="unneeded `return` statement",
            file="src/printer.rs",
            line=line,
            column=5,
            rendered=f"warning: unneeded `return` statement\n   --> src/printer.rs:{line}:5\n",
        )
        for line in range(1, diagnostics + 1)
    ]
    cases = [
        m.TestCaseResult(name=f"tests::case_{index}", status="passed", duration_s=0.002)
        for index in range(tests)
    ]
    return m.TestReport(
        run_id="bench",
        candidate_id="c1",
        attempt=3,
        sandboxed=True,
        stages=[
            m.StageResult(stage="build", status="passed", duration_s=20.0),
            m.StageResult(stage="test", status="passed", duration_s=4.0, tests=cases),
            m.StageResult(stage="clippy", status="passed", duration_s=6.0, diagnostics=warnings),
        ],
    )


def main() -> None:
    report = big_report(diagnostics=200, tests=300)
    text = m.dump_message(report)
    blob = pickle.dumps(report)
    dump = median_seconds(lambda: m.dump_message(report), repeats=200)
    parse = median_seconds(lambda: m.parse_message(text), repeats=200)
    pickled = median_seconds(lambda: pickle.loads(pickle.dumps(report)), repeats=200)
    print("TestReport with 200 diagnostics and 300 test results")
    print(f"  JSON size            {len(text) / 1024:8.1f} KiB")
    print(f"  JSON dump (median)   {dump * 1e3:8.3f} ms")
    print(f"  JSON parse (median)  {parse * 1e3:8.3f} ms")
    print(f"  pickle size          {len(blob) / 1024:8.1f} KiB")
    print(f"  pickle round trip    {pickled * 1e3:8.3f} ms")
    print(f"  parse / pickle       {parse / pickled:8.2f}x")


if __name__ == "__main__":
    main()
