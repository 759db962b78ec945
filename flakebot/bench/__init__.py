"""Benchmark runs: a suite of tool tasks, run through the actor system N at once, per model.

`suite` reads a suite file; `timeline` turns a run's journal into stage spans; `floor` measures the
builds a run cannot avoid; `runner` runs the trials and appends one result line each (resumable);
`report` writes the Markdown report and its plots.
"""
